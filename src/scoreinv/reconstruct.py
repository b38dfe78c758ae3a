"""The `scoreinv reconstruct` run: load, validate, batch, solve, write.

`plan(...)` reads the measurement file, the solver settings and the checkpoint and checks
everything that can be wrong (measurement format version, NaN, operator vs. checkpoint image
size, solver name, hyperparameter ranges, EMA weights, output format) before any sampling;
`run(plan)` reconstructs the selected slices in batches with `sampling.solvers.posterior`
(K posterior samples per slice: mean and pixel-wise standard deviation) and writes them with
`scoreinv.writers`; `reconstruct(...)` does both.

Solver settings, later ones win: the task's reference preset (`solvers.PRESETS`), a preset
file written by `scoreinv tune` ({solver, task, params}, read by `tune.load_preset`), `steps`,
then explicit overrides.
`final_projection` (the closing hard λ = 1 projection with y) defaults to on for noise-free
measurements and off for noisy ones (it would put the noise back into the image).

CT sinograms (ParallelBeamCT) are solved either on the sinogram (`ct_operator="radon"`,
projection by CG) or on its Fourier-slice conversion (`"fourier"`, exact A = P(Λ)T; the
conversion is `fourier_from_parallel`); the default is `tasks.DEFAULT_CT_OPERATOR`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import writers
from .errors import ScoreinvError, check_choice, check_range
from .physics.measurements import PER_SLICE_ARRAYS, Measurements, load_measurements
from .sampling import solvers
from .source_record import meta_from_source

PARAM_ALIASES = {"lambda": "lam", "λ": "lam"}


# --- solver settings ----------------------------------------------------------------------------
def read_preset(path) -> dict:
    """A solver preset file written by `scoreinv tune` -> {"solver", "task", "params"} (`tune.load_preset`)."""
    from .tune import load_preset
    p = load_preset(path)
    return {"solver": p.solver, "task": p.task, "params": dict(p.params)}


def coerce_params(params: dict) -> dict:
    """Solver parameters (names of SolverConfig fields, 'solver.' prefix and 'lambda' allowed)
    converted to their field types; raises ScoreinvError for unknown names or wrong types."""
    types = {f.name: f.type for f in dataclasses.fields(solvers.SolverConfig)}
    out = {}
    for key, v in params.items():
        k = str(key).removeprefix("solver.")
        k = PARAM_ALIASES.get(k, k)
        if k not in types or k == "name":
            raise ScoreinvError(f"unknown solver parameter {key!r}; expected one of "
                                f"{', '.join(sorted(set(types) - {'name'}))}")
        t = types[k] if isinstance(types[k], str) else types[k].__name__
        ok = {"bool": isinstance(v, bool),
              "int": isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and float(v).is_integer(),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": isinstance(v, str)}.get(t, False)
        if not ok:
            raise ScoreinvError(f"solver.{k} = {v!r}: expected a value of type {t}")
        out[k] = {"bool": bool, "int": int, "float": float, "str": str}[t](v)
    return out


def solver_settings(task: str, solver: str | None = None, preset: str | None = None, steps: int | None = None,
                    overrides: dict | None = None, noisy: bool = False) -> solvers.SolverConfig:
    """The validated SolverConfig for `task` (order of precedence: module docstring)."""
    params = {}
    name = solver
    if preset:
        p = read_preset(preset)
        if name is not None and name != p["solver"]:
            raise ScoreinvError(f"--solver {name} differs from the preset's solver {p['solver']!r} ({preset})")
        if p.get("task") and p["task"] != task:
            raise ScoreinvError(f"--preset {preset} was tuned for task {p['task']!r}; the measurements are {task!r}")
        name = p["solver"]
        params.update(coerce_params(p["params"]))
    if name is None:
        raise ScoreinvError(f"give --solver (one of {', '.join(solvers.SOLVERS)}) or --preset")
    check_choice("solver", name, solvers.SOLVERS)
    params.update(coerce_params(overrides or {}))
    if steps is not None:
        params["steps"] = coerce_params({"steps": steps})["steps"]
    params.setdefault("final_projection", not noisy)
    return solvers.solver_config(name, task, **params)


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
    model: object
    model_cfg: object
    out: str
    samples: int = 1
    batch_size: int = 8
    seed: int = 0
    device: torch.device = torch.device("cpu")
    ct_operator: str | None = None


def plan(checkpoint: str, measurements: str, out: str, solver: str | None = None, steps: int | None = None,
         samples: int = 1, overrides: dict | None = None, preset: str | None = None, batch_size: int = 8,
         seed: int = 0, device: str = "auto", ct_operator: str | None = None, slices: str | None = None) -> Plan:
    """Load and check everything; raises ScoreinvError before any sampling (module docstring)."""
    from .score import load_score_model
    from .tasks import CT_OPERATORS, DEFAULT_CT_OPERATOR
    from .train import resolve_device
    check_range("--samples", samples, 1)
    check_range("--batch-size", batch_size, 1)
    if int(samples) != samples or int(batch_size) != batch_size:
        raise ScoreinvError(f"--samples {samples} / --batch-size {batch_size}: expected integers")
    writers.output_format(out)
    full = load_measurements(measurements)
    idx = parse_slices(slices, len(full))
    writers.check_output(out, len(idx))
    if samples > 1:
        writers.check_output(writers.std_path(out), len(idx))
    meas = select(full, idx)
    op = meas.operator()
    if getattr(op, "complex_image", False):
        raise ScoreinvError(f"{measurements}: {op.name} reconstructs complex images; the score prior models real "
                            "images (simulate with a real-image operator)")
    cfg = solver_settings(meas.task, solver, preset, steps, overrides,
                          noisy=meas.noise.get("model", "none") != "none")
    dev = resolve_device(device)
    model, model_cfg = load_score_model(checkpoint, device=dev)
    s = int(model_cfg.data.image_size)
    if tuple(meas.image_size) != (s, s):
        raise ScoreinvError(f"{measurements}: the operator ({op.name}) is for {meas.image_size[0]}x"
                            f"{meas.image_size[1]} images, but checkpoint {checkpoint!r} models {s}x{s} images")
    from .physics.ct import ParallelBeamCT
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
        from .physics.fourier_slice import fourier_from_parallel
        solve_op, y = fourier_from_parallel(op, y)
    return Plan(meas, full.source, idx, op, solve_op, y, cfg, model, model_cfg, str(out), int(samples),
                int(batch_size), int(seed), dev, ct_operator)


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Result:
    mean: torch.Tensor                 # (S, 1, H, W) on the CPU, image scale
    std: torch.Tensor | None           # (S, 1, H, W) with samples > 1
    nfe: int                           # network evaluations per slice (all samples)
    seconds: float
    residual: torch.Tensor             # (S,) ‖A x − y‖ / ‖y‖ of the mean, the file's operator and y
    metrics: dict = field(default_factory=dict)   # name -> (S,) against the file's ground truth
    files: list = field(default_factory=list)


def _relative_residual(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r = (op.forward(x) - y).abs().flatten(1).norm(dim=1)
    return (r / y.abs().flatten(1).norm(dim=1).clamp_min(1e-30)).cpu()


def run(p: Plan, progress: bool = True) -> Result:
    """Sample every selected slice in batches of about `batch_size` images, then write the outputs."""
    from tqdm.auto import tqdm

    from .tasks import repeat_operator, slice_operator
    n = len(p.meas)
    per = max(1, p.batch_size // p.samples)       # slices per call: network batch ≈ batch_size
    g = torch.Generator().manual_seed(p.seed)
    means, stds, res, nfe = [], [], [], 0
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="reconstruct", unit="slice", disable=not progress)
    for i0 in range(0, n, per):
        i1 = min(n, i0 + per)
        sop = repeat_operator(slice_operator(p.solve_op, slice(i0, i1)), p.samples)
        out = solvers.posterior(p.model, sop, p.y[i0:i1], p.cfg, samples=p.samples, generator=g, progress=progress)
        means.append(out["mean"].float().cpu())
        stds.append(out["std"].float().cpu())
        res.append(_relative_residual(slice_operator(p.op, slice(i0, i1)), out["mean"], p.meas.y[i0:i1].to(p.device)))
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
    result = Result(mean, std, nfe, seconds, torch.cat(res), metrics(p, mean))
    result.files = write(p, result)
    return result


def metrics(p: Plan, mean: torch.Tensor) -> dict:
    """PSNR/SSIM (MAR: metal pixels zeroed) of the mean against the file's ground truth, if any."""
    if p.meas.ground_truth is None:
        return {}
    from .metrics import compute_metrics
    if p.meas.task == "mar" and "metal_mask" in p.meas.extras:
        mask = torch.as_tensor(np.asarray(p.meas.extras["metal_mask"])).bool()
        return compute_metrics(("psnr_mar", "ssim_mar"), mean, p.meas.ground_truth, metal_mask=mask)
    return compute_metrics(("psnr", "ssim"), mean, p.meas.ground_truth)


def write(p: Plan, r: Result) -> list[str]:
    """Write the mean (and the std map beside it) in the output's format; returns what was written."""
    g = p.meas.spec.get("geometry") or {}
    desc = f"scoreinv {p.cfg.name}" + (f", mean of {p.samples}" if p.samples > 1 else "")
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
         "seed": p.seed, "device": str(p.device), "nfe_per_slice": r.nfe, "seconds": r.seconds,
         "residual": r.residual.tolist(), "files": r.files}
    d["metrics"] = {k: [float(x) for x in v] for k, v in r.metrics.items()}
    return d
