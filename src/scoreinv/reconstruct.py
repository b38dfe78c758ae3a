"""The `scoreinv reconstruct` run: load, validate, batch, solve, write.

`plan(...)` reads the measurement file, the solver settings and the checkpoint and checks
everything that can be wrong (measurement format version, NaN, operator vs. checkpoint image
size, solver name, hyperparameter ranges, EMA weights, output format) before any sampling;
`run(plan)` reconstructs the selected slices in batches with `sampling.solvers.posterior`
(K posterior samples per slice: mean and pixel-wise standard deviation) and writes them with
`scoreinv.writers`; `reconstruct(...)` does both.

Solver settings: `solver_settings`, i.e. `sampling.settings.resolve`, the rule shared with eval
and tune (reference preset < tuned preset: --preset FILE, else the shipped model's < --steps <
--set); `final_projection` is off for data noisier than the reference acquisition
(`settings.noisy_record`). Outputs (the `_std` map and DICOM series folders included) and the
--report file are checked before any work: an existing one is refused unless `overwrite`, an
output equal to the measurement file always (`atomic.check_new_output`).

CT sinograms (ParallelBeamCT) are solved either on the sinogram (`ct_operator="radon"`,
projection by CG) or on its Fourier-slice conversion (`"fourier"`, exact A = P(Λ)T; the
conversion is `fourier_from_parallel`); the default is `tasks.DEFAULT_CT_OPERATOR`.

The solvers get the measurement noise level from the file's noise record (`sampling.inputs.
measurement_sigma`; ddrm and diffpir use it) and, when they warm-start, the image it begins from,
made from the file's own data (`sampling.inputs.warm_image`: `classical` is FBP of a CT sinogram,
NMAR for MAR, the zero-filled image of the completed k-space for MRI; `tv` the TV reconstruction). What the output is (one sample,
the mean of K, a Tweedie estimate at σ_end) is named by `settings.estimate_name` (docs/design.md §2.11).

Volumes (`coupling: ztv`, `--coupling ztv`; docs/design.md §9.2): the selected slices are solved
together as one volume, in the file's order, with the z-TV coupling in every data-consistency step;
the whole volume's data-consistency step runs at once (it is cheap) and only the network is
evaluated --batch-size images at a time, so the result does not depend on --batch-size and couples
across every chunk border. The slices must form a volume: their positions (the source record of a
DICOM series or NIfTI volume) evenly spaced along one line, none duplicated or missing; files without
positions are coupled in file order. With a ground truth of 2 or more such slices the volume metrics
of docs/design.md §9.3 are reported (coupled or not).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ood, writers
from .atomic import check_new_output
from .errors import ScoreinvError, check_choice, check_int
from .metrics import compute_metrics, volume_metrics
from .physics.ct import ParallelBeamCT
from .physics.fourier_slice import fourier_from_parallel
from .physics.measurements import PER_SLICE_ARRAYS, Measurements, load_measurements
from .physics.mri import PhasedMRI
from .runinfo import environment
from .sampling import solvers
from .sampling.inputs import measurement_sigma, warm_image
from .sampling.settings import (COUPLINGS, REFERENCE_KEYWORD, SOLVERS, Preset, Resolved, check_applies, check_coupling,
                                check_targets, estimate_name, noisy_record, open_preset, resolve, shipped_model)
from .score import check_model_size, load_score_model, resolve_checkpoint
from .source_record import meta_from_source
from .tasks import CT_OPERATORS, DEFAULT_CT_OPERATOR, repeat_operator, slice_operator
from .train import resolve_device


# --- solver settings and outputs ------------------------------------------------------------------
def solver_settings(task: str, solver: str | None = None, preset=None, steps: int | None = None,
                    sets: dict | None = None, noisy: bool = False, checkpoint: str | None = None,
                    coupling: str | None = None) -> Resolved:
    """The settings of a reconstruction (module docstring): preset a file, 'reference' or None;
    sets: parse_sets of --set (targets solver and the solver's name); coupling: --coupling, the same
    as --set solver.coupling=VALUE (refused for a solver without a data-consistency step)."""
    p = open_preset(preset, task=task)
    if isinstance(p, Preset):
        if solver is not None and solver != p.solver:
            raise ScoreinvError(f"--solver {solver} differs from the preset's solver {p.solver!r} ({preset})")
        solver = p.solver
    if solver is None:
        raise ScoreinvError(f"give --solver (one of {', '.join(SOLVERS)}) or --preset FILE")
    check_choice("--solver", solver, SOLVERS)
    sets = dict(sets or {})
    if coupling is not None:
        check_choice("--coupling", coupling, COUPLINGS)
        if check_coupling(solver, coupling):
            raise ScoreinvError(check_coupling(solver, coupling))
        given = {k: v for t in ("solver", solver) for k, v in sets.get(t, {}).items() if k == "coupling"}
        if given and given["coupling"] != coupling:
            raise ScoreinvError(f"--coupling {coupling} differs from --set ...coupling={given['coupling']}")
        sets["solver"] = {**sets.get("solver", {}), "coupling": coupling}
    for t in ("solver", solver):
        c = str(sets.get(t, {}).get("coupling", "none"))
        if check_coupling(solver, c, f"--set {t}.coupling"):
            raise ScoreinvError(check_coupling(solver, c, f"--set {t}.coupling"))
    check_targets(sets, ("solver", solver))
    check_applies(sets, [solver])
    r = resolve(task, solver, preset=p, model=shipped_model(checkpoint), steps=steps, sets=sets, noisy=noisy)
    if coupling is not None and "coupling" in r.origin:
        r.origin["coupling"] = "--coupling"
    return r


def check_outputs(out, measurements, n_slices: int, samples: int, overwrite: bool = False,
                  report=None, inputs=()) -> None:
    """Refuse, before any work, outputs that cannot be written (module docstring). A DICOM output
    of several slices is a folder NAME/ of IM_*.dcm; --overwrite replaces only such a folder.
    `inputs`: other files the run reads (checkpoint, preset), never replaced either."""
    ext = writers.output_format(out)
    inputs = [measurements, *inputs]
    targets = [str(out)] + ([writers.std_path(out)] if samples > 1 else [])
    for t in targets:
        folder = Path(t[: -len(".dcm")]) if ext == ".dcm" and n_slices > 1 else None
        if folder is None or not folder.exists():
            check_new_output(folder or t, overwrite=overwrite, flag="--out", inputs=inputs)
            continue
        if not overwrite:
            raise ScoreinvError(f"--out {out}: the DICOM series folder {folder} exists; pass --overwrite to "
                                "replace it")
        writers.check_output(t, n_slices)            # an earlier output (IM_*.dcm only), nothing else
        if not os.access(folder.absolute().parent, os.W_OK | os.X_OK):
            raise ScoreinvError(f"--out {out}: cannot write in {folder.absolute().parent} (permission denied)")
    if report is not None:
        check_new_output(report, overwrite=overwrite, flag="--report", inputs=[*inputs, *targets])


def _input_files(checkpoint, preset) -> list:
    """The checkpoint file and the preset file a run reads (outputs must not replace them)."""
    try:
        files = [resolve_checkpoint(checkpoint)]
    except ScoreinvError:          # reported by load_score_model, after the output checks
        files = []
    return files + ([preset] if isinstance(preset, (str, os.PathLike)) and preset != REFERENCE_KEYWORD else [])


# --- the plan -----------------------------------------------------------------------------------
def parse_slices(spec: str | None, n: int) -> list[int]:
    """'3', '0:8', '0,5,9' (python-style, negative allowed) -> indices into n slices; None = all."""
    if spec is None:
        return list(range(n))
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError(spec)
            idx = list(range(n))[slice(*parts)]
        else:
            idx = [int(p) for p in spec.split(",")]
            idx = [i + n if i < 0 else i for i in idx]
    except ValueError:
        raise ScoreinvError(f"--slices {spec!r}: expected an index, START:STOP[:STEP] or a comma list") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise ScoreinvError(f"--slices {spec!r}: the file holds {n} slice(s) (0 to {n - 1}); got {bad or 'none'}")
    return idx


def select(meas: Measurements, idx: list[int]) -> Measurements:
    """The file's slices `idx` (per-slice operator arrays, ground truth and extras too)."""
    n, ix = len(meas), torch.as_tensor(idx)
    arrays = {k: (v[idx] if k in PER_SLICE_ARRAYS and v.ndim == 3 else v) for k, v in meas.arrays.items()}
    extras = {k: (v[idx] if v.ndim >= 1 and v.shape[0] == n else v) for k, v in meas.extras.items()}
    gt = meas.ground_truth[ix] if meas.ground_truth is not None else None
    return dataclasses.replace(meas, y=meas.y[ix], arrays=arrays, ground_truth=gt, extras=extras)


@dataclass
class Plan:
    """Everything checked and built; `run` only samples and writes."""
    meas: Measurements           # the selected slices (all on the CPU)
    source: dict | None          # the file's source record
    slices: list[int]
    op: object                   # the file's operator for the selected slices (on device)
    solve_op: object             # the operator the solver sees (FourierSliceCT or op)
    y: torch.Tensor              # (S, *meas_shape) what the solver sees, on device
    cfg: solvers.SolverConfig
    settings: Resolved           # cfg and where each setting came from
    model: object
    model_cfg: object
    out: str
    samples: int = 1
    batch_size: int = 8
    seed: int = 0
    device: torch.device = torch.device("cpu")
    ct_operator: str | None = None
    spacing: float | None = None  # slice spacing (mm) of an evenly spaced selection of 2+ slices, else None
    volume: bool = False          # the selection forms a volume (evenly spaced, or no positions known)
    ood_reference: dict | None = None   # the model's out-of-distribution reference (ood.model_reference)


def volume_geometry(positions, slices: list[int], where: str) -> float | None:
    """The slice spacing (mm) of the selected slices, checked to form a volume: positions (S, 3) (LPS
    mm, or None when the file has none: file order is taken, spacing unknown) evenly spaced along one
    line, so none duplicated or missing. Raises ScoreinvError naming the slices otherwise."""
    if len(slices) < 2:
        raise ScoreinvError(f"{where}: coupling needs at least 2 slices (a volume); got {len(slices)} "
                            "(choose more with --slices, or --coupling none)")
    if positions is None:
        return None
    pos = np.asarray(positions, float)
    steps = np.diff(pos, axis=0)
    size = np.linalg.norm(steps, axis=1)
    dup = np.flatnonzero(size < 1e-6)
    if dup.size:
        k = int(dup[0])
        raise ScoreinvError(f"{where}: slices {slices[k]} and {slices[k + 1]} lie at the same position "
                            f"{pos[k].round(3).tolist()} mm (a duplicated slice); a volume needs one slice per "
                            "position")
    med = float(np.median(size))
    ref = steps[int(np.argmin(np.abs(size - med)))]            # a typical step: most neighbours are this far apart
    h = float(np.linalg.norm(ref))
    bad = np.flatnonzero(np.linalg.norm(steps - ref, axis=1) > 0.01 * h)
    if bad.size:
        k = int(bad[0])
        kind = "missing slice(s)" if size[k] > 1.5 * h else "non-uniform spacing"
        raise ScoreinvError(f"{where}: the slices are not evenly spaced along one line: {size[k]:.4g} mm from slice "
                            f"{slices[k]} to {slices[k + 1]}, {h:.4g} mm between most neighbours ({kind}, or a "
                            "--slices selection with gaps); coupling across slices needs a volume of evenly spaced "
                            "slices (select a contiguous run with --slices, or --coupling none)")
    return h


def plan(checkpoint: str, measurements: str, out: str, solver: str | None = None, steps: int | None = None,
         samples: int = 1, sets: dict | None = None, preset: str | None = None, batch_size: int = 8,
         seed: int = 0, device: str = "auto", ct_operator: str | None = None, slices: str | None = None,
         overwrite: bool = False, report: str | None = None, coupling: str | None = None,
         loaded: tuple | None = None, log=None) -> Plan:
    """Load and check everything; raises ScoreinvError before any sampling (module docstring).
    loaded: (model, model config) of `checkpoint` already loaded on `device` (a batch run loads it once);
    log: gets a line when the out-of-distribution reference must be computed (`ood.model_reference`)."""
    check_int("--samples", samples)
    check_int("--batch-size", batch_size)
    writers.output_format(out)
    full = load_measurements(measurements)
    idx = parse_slices(slices, len(full))
    check_outputs(out, measurements, len(idx), samples, overwrite, report, _input_files(checkpoint, preset))
    meas = select(full, idx)
    try:        # the source record is read when writing: a malformed one is refused before sampling
        meta = meta_from_source(full.source, meas.task, len(idx), idx)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ScoreinvError(f"{measurements}: malformed 'source' record ({e}); expected the record "
                            "`scoreinv simulate` writes") from None
    if writers.output_format(out) in (".nii", ".nii.gz"):
        writers.check_even_slices(meta, len(idx), out)
    op = meas.operator()
    if getattr(op, "complex_image", False):
        raise ScoreinvError(f"{measurements}: {op.name} reconstructs complex images; the score prior models real "
                            "images (simulate with a real-image operator)")
    noisy = noisy_record(meas.task, meas.noise, isinstance(op, PhasedMRI))
    settings = solver_settings(meas.task, solver, preset, steps, sets, noisy, checkpoint, coupling)
    spacing, volume = None, False
    if settings.cfg.coupling != "none":
        where = f"{measurements} (--coupling {settings.cfg.coupling})"
        spacing, volume = volume_geometry(meta.positions, idx, where), True
        check_volume_memory(len(idx) * int(samples), *meas.image_size, measurements)
        settings = scaled_ztv(settings, meta.pixel_spacing, spacing, log)
    elif len(idx) > 1:
        try:
            spacing, volume = volume_geometry(meta.positions, idx, str(measurements)), True
        except ScoreinvError:       # not an evenly spaced volume: slice metrics only
            spacing, volume = None, False
    dev = resolve_device(device)
    model, model_cfg = loaded or load_score_model(checkpoint, device=dev)
    check_model_size(model_cfg, *meas.image_size,
                     what=f"{measurements}: the images of the operator ({op.name}) for checkpoint {checkpoint!r}")
    if ct_operator is not None:
        check_choice("--ct-operator", ct_operator, CT_OPERATORS)
        if meas.task != "ct" or not isinstance(op, ParallelBeamCT):
            raise ScoreinvError(f"--ct-operator applies to parallel-beam CT sinograms (task ct); "
                                f"{measurements} holds {meas.task} data for {op.name}")
    elif meas.task == "ct" and isinstance(op, ParallelBeamCT):
        ct_operator = DEFAULT_CT_OPERATOR
    op = op.to(dev)
    y = meas.y.to(dev)
    solve_op = op
    if ct_operator == "fourier":
        solve_op, y = fourier_from_parallel(op, y)
    solvers.check_run(settings.cfg, solve_op, model.sde)
    reference = ood.model_reference(checkpoint, model, model_cfg, log=log)
    return Plan(meas, full.source, idx, op, solve_op, y, settings.cfg, settings, model, model_cfg, str(out),
                int(samples), int(batch_size), int(seed), dev, ct_operator, spacing, volume, reference)


def scaled_ztv(settings: Resolved, pixel_spacing, spacing: float | None, log=None) -> Resolved:
    """The settings with the default λ_z of z-TV scaled by the voxel aspect β = in-plane pixel / slice
    spacing (λ_z = 0.01 β), as tv3d scales its z term ((D31), docs/design.md §9.5): the default was
    set on isotropic voxels, and on lung1's validation slab (5 mm slices, β 0.23) the choice
    c · β with c = 0.01 won at 10 views. A λ_z from a preset or --set is kept as given, and so is the
    default where the file does not give both the pixel size and the slice positions."""
    c = settings.cfg
    if c.coupling != "ztv" or "ztv_lambda" in settings.above_reference:
        return settings
    log = log or (lambda *_: None)
    if not pixel_spacing or spacing is None:
        log(f"z-TV: λ_z {c.ztv_lambda:g} as set: the file gives no pixel size or slice positions, so the voxel "
            "aspect is unknown")
        return settings
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    beta = math.sqrt(dr * dc) / float(spacing)          # non-square pixels: their geometric mean
    lam = c.ztv_lambda * beta
    px = f"{dr:.4g} mm" if math.isclose(dr, dc, rel_tol=1e-6) else f"{dr:.4g} x {dc:.4g} mm (geometric mean)"
    log(f"z-TV: λ_z {lam:.4g} = {c.ztv_lambda:g} x pixel / spacing ({beta:.4g}: {px} in plane, {spacing:.4g} mm "
        "between slices; --set solver.ztv_lambda fixes it)")
    return dataclasses.replace(settings, cfg=dataclasses.replace(c, ztv_lambda=lam),
                               origin={**settings.origin, "ztv_lambda": "voxel aspect"})


def check_volume_memory(images: int, h: int, w: int, where) -> None:
    """Refuse a coupled volume whose data-consistency state (about 16 float32 copies of the K·S images:
    iterate, ADMM variables, CG vectors) would not fit in the memory available now (Linux; elsewhere
    nothing is checked). The network's memory is bounded by --batch-size, not checked here."""
    need = 16 * 4 * images * h * w
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > avail:
        raise ScoreinvError(f"{where}: the coupled volume ({images} images of {h}x{w}, --samples included) needs "
                            f"about {need / 2 ** 30:.1f} GiB for its data-consistency step, more than the "
                            f"{avail / 2 ** 30:.1f} GiB available; select fewer slices (--slices) or samples")


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Result:
    mean: torch.Tensor                 # (S, 1, H, W) on the CPU, image scale
    std: torch.Tensor | None           # (S, 1, H, W) with samples > 1
    nfe: int                           # network evaluations per slice (all samples)
    estimate: str                      # what the output is (settings.estimate_name)
    seconds: float
    ood: list = field(default_factory=list)       # (S,) ood.OODRecord of the mean (docs/design.md §4.4)
    metrics: dict = field(default_factory=dict)   # name -> (S,) against the file's ground truth
    files: list = field(default_factory=list)
    volume: dict = field(default_factory=dict)    # volume metrics (docs/design.md §9.3) when the slices form a volume

    @property
    def residual(self) -> torch.Tensor:
        """(S,) float64 ‖A x − y‖ / ‖y‖ of the mean on the file's operator and y (from the guard's records)."""
        return torch.tensor([c.residual for c in self.ood], dtype=torch.float64)


def run(p: Plan, progress: bool = True) -> Result:
    """Sample every selected slice in batches of about `batch_size` images (a coupled volume: all slices in
    one call, the network `batch_size` images at a time), then write the outputs."""
    n = len(p.meas)
    coupled = p.cfg.coupling != "none"
    per = n if coupled else max(1, p.batch_size // p.samples)       # slices per call: network batch ≈ batch_size
    g = torch.Generator().manual_seed(p.seed)
    means, stds, checks, nfe = [], [], [], 0
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="reconstruct", unit="slice", disable=not progress)
    for i0 in range(0, n, per):
        i1 = min(n, i0 + per)
        sl = slice(i0, i1)
        inputs = solver_inputs(p, sl)
        sop = repeat_operator(slice_operator(p.solve_op, sl), p.samples)
        out = solvers.posterior(p.model, sop, p.y[i0:i1], p.cfg, samples=p.samples, generator=g, progress=progress,
                                **inputs, **({"network_batch": p.batch_size} if coupled else {}))
        means.append(out["mean"].float().cpu())
        stds.append(out["std"].float().cpu())
        checks += guard(p, sl, out["mean"])
        nfe = int(out["nfe"])
        bar.update(i1 - i0)
    bar.close()
    seconds = time.perf_counter() - t0
    mean = torch.cat(means)
    std = torch.cat(stds) if p.samples > 1 else None
    for name, t in (("reconstruction", mean), ("standard deviation", std)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ScoreinvError(f"the {name} holds NaN or Inf (solver {p.cfg.name}); nothing written. Try fewer "
                                "corrector steps, a smaller snr, or another checkpoint")
    result = Result(mean, std, nfe, estimate_name(p.cfg, p.samples), seconds, checks, metrics(p, mean),
                    volume=volume_scores(p, mean))
    result.files = write(p, result)
    return result


def solver_inputs(p: Plan, sl: slice) -> dict:
    """The noise level (from the file's record) and, for a warm start, the classical reconstruction
    of the selected slices `sl` (module docstring)."""
    fop = slice_operator(p.op, sl)
    fy = p.meas.y[sl].to(p.device)
    sig = measurement_sigma(p.meas.noise, p.meas.task, slice_operator(p.solve_op, sl), fop, fy,
                            index=p.slices[sl])
    return {"sigma_y": sig, "x_init": warm_image(fop, fy, p.cfg)}


def guard(p: Plan, sl: slice, mean: torch.Tensor) -> list:
    """The out-of-distribution guard (`ood.check`, docs/design.md §4.4) on the mean of slices `sl`: its
    typicality under the model (with the model's reference) and its residual on the file's own operator
    and data against the noise floor of the file's noise record."""
    fop = slice_operator(p.op, sl)
    fy = p.meas.y[sl].to(p.device)
    sig = measurement_sigma(p.meas.noise, p.meas.task, fop, fop, fy, index=p.slices[sl])
    labels = [f"slice {i}: " for i in p.slices[sl]]
    return ood.check(p.model, fop, fy, mean, p.ood_reference, sig, labels, p.batch_size)


def metrics(p: Plan, mean: torch.Tensor) -> dict:
    """PSNR/SSIM (MAR: metal pixels zeroed) of the mean against the file's ground truth, if any."""
    if p.meas.ground_truth is None:
        return {}
    if p.meas.task == "mar" and "metal_mask" in p.meas.extras:
        mask = torch.as_tensor(np.asarray(p.meas.extras["metal_mask"])).bool()
        return compute_metrics(("psnr_mar", "ssim_mar"), mean, p.meas.ground_truth, metal_mask=mask)
    return compute_metrics(("psnr", "ssim"), mean, p.meas.ground_truth)


def volume_scores(p: Plan, mean: torch.Tensor) -> dict:
    """The volume metrics (docs/design.md §9.3) of the mean against the file's ground truth when the
    selected slices form a volume (module docstring); {} otherwise. MAR: metal pixels zeroed in both."""
    if p.meas.ground_truth is None or not p.volume:
        return {}
    ref = p.meas.ground_truth.to(mean)
    if p.meas.task == "mar" and "metal_mask" in p.meas.extras:
        m = torch.as_tensor(np.asarray(p.meas.extras["metal_mask"])).bool().reshape(-1, 1, *mean.shape[-2:])
        mean, ref = mean.masked_fill(m, 0.0), ref.masked_fill(m, 0.0)
    return volume_metrics(mean, ref)


def write(p: Plan, r: Result) -> list[str]:
    """Write the mean (and the std map beside it) in the output's format; returns what was written."""
    g = p.meas.spec.get("geometry") or {}
    desc = f"scoreinv {p.cfg.name}, {r.estimate}"
    if p.cfg.coupling != "none":
        desc += f", {p.cfg.coupling} coupling {p.cfg.ztv_lambda:g}"
    meta = meta_from_source(p.source, p.meas.task, len(p.meas), p.slices,
                                    pixel_size=g.get("pixel_size"), description=desc)
    files = writers.write_volume(p.out, r.mean[:, 0].numpy(), meta, kind="image")
    if r.std is not None:
        files += writers.write_volume(writers.std_path(p.out), r.std[:, 0].numpy(), meta, kind="std")
    return files


def reconstruct(checkpoint: str, measurements: str, out: str, progress: bool = False, **options) -> Result:
    """plan(...) then run(...): see `plan` for the options."""
    return run(plan(checkpoint, measurements, out, **options), progress=progress)


def summary(p: Plan, r: Result) -> dict:
    """A JSON-able record of the run (settings, NFE, time, residual, metrics, files)."""
    d = {"measurements": p.meas.path, "slices": p.slices, "task": p.meas.task, "operator": p.solve_op.name,
         "ct_operator": p.ct_operator, "solver": dataclasses.asdict(p.cfg), "samples": p.samples,
         "settings_origin": p.settings.origin, "seed": p.seed, "device": str(p.device),
         "environment": environment(p.device), "estimate": r.estimate, "nfe_per_slice": r.nfe, "seconds": r.seconds,
         "residual": r.residual.tolist(), "files": r.files, "slice_spacing_mm": p.spacing,
         "ood_check": {"summary": ood.summary_line(r.ood), "slices": [c.as_dict() for c in r.ood]}}
    d["metrics"] = {k: [float(x) for x in v] for k, v in r.metrics.items()}
    if r.volume:
        d["volume_metrics"] = {k: (None if math.isnan(v) else v) for k, v in r.volume.items()}   # NaN -> null
    return d
