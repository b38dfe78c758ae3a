"""Evaluation runs: score solvers and classical baselines on a split, resumable, with metrics.

`evaluate(...)` reconstructs `num_images` images of a dataset split with each method and writes
into `out_dir`:
- metrics.csv: one row per (image, solver): PSNR, SSIM (full image; the main columns), the
  circle / histogram variants (CT, MRI) or metal-zeroed variants (MAR), NMSE, seconds, NFE and
  the estimate the row scores (`settings.estimate_name`: sample, mean-of-K, tweedie@σ, classical;
  docs/design.md §2.11), so that a posterior mean is not compared with a single sample unawares
  (with --samples K > 1 each score solver also gets rows NAME:first scoring the first of its K
  samples alone, paired with the mean on the same data: the single-sample figure at NFE / K and
  seconds / K, the K chains having run as one batch),
  and for score solvers the out-of-distribution guard's typicality τ and verdict (`ood_tau`,
  `ood_verdict`; docs/design.md §4.4; empty for classical baselines);
- summary.json: one record per solver (mean ± population std over images, s/image, NFE, estimate;
  score solvers: `ood_check` with the flagged images and the largest τ);
- reconstructions.npz: ground_truth, naive, recon_<solver> (and std_<solver> with samples > 1);
- comparison.png: rows = images (reconstruction and |error| rows), columns = ground truth and
  each solver.
The parts are merged into these files by `eval_outputs.write_outputs`.
Resume: every (solver, batch) result is saved atomically under parts/ as it completes; a rerun
skips what exists, so a killed evaluation resumes and a larger --num-images extends it. The
configuration (everything but num_images; solvers may be added) lives in eval.json and a
directory of another configuration is refused, as is a non-empty folder that holds anything
but an evaluation's own files. Baselines with a parameter (tv, cs_tv, cs_wavelet: weight;
sirt, cgls: iterations) get it from `choose_weight` on VALIDATION images, cached per (task,
setting, data) in weights.json, each candidate's score as it is computed (a killed search
loses at most one). Every summary record holds the environment its parts ran in (scoreinv and
torch versions, thread count, device: `runinfo.environment`). Score-solver settings come from
`sampling.settings.resolve` (the precedence shared with reconstruct and tune); they get the
measurement noise level of the simulated data and, when they warm-start, the classical
reconstruction from the baselines' data (`sampling.inputs.problem_inputs`).

Sharding under torchrun (`scoreinv.batch.Shard`): rank r of N evaluates the batches b with b mod N = r
and writes their parts (per-batch files: no two ranks write one); eval.json and the baseline weights
are written by rank 0 before a barrier, and after a final barrier rank 0 merges the parts into the
outputs above. The randomness of a batch (masks, noise, implants: seed "problem", b; samplers: seed
"solve", method, b) depends on its index b alone, never on the rank or the world size, so a sharded run
writes the rows and means of a single-process one; sharding by whole batches also keeps the slices a
coupled solver couples together. Resuming works across world sizes (the parts are per batch).

Volumes (docs/design.md §9.3): when the dataset lists each image's (volume, slice) (`index`: ct-real,
mri-real, folders of volumes, phantom3d), every run of two or more consecutive slices of one volume
among the evaluated images is scored as a volume too, and each summary record gets `volume`: the
means over those volumes of PSNR/SSIM on axial, coronal and sagittal planes and the z-gradient error.
Score solvers with `coupling: ztv` couple the consecutive slices of a volume within each batch (so
--batch-size sets how much of a volume is coupled); they are refused on data without that index.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import atomic, ood
from .atomic import check_new_output
from .baselines import BASELINES, choose_weight, get_baseline
from .batch import Shard
from .data.base import derive_seed
from .errors import ScoreinvError, check_int
from .eval_outputs import load_part, slice_labels, volume_index, write_outputs
from .metrics import compute_metrics
from .runinfo import config_diff, environment
from .sampling.inputs import measurement_sigma, problem_inputs
from .sampling.settings import (REFERENCE_KEYWORD, SOLVERS, SolverConfig, check_applies, record,
                                resolve, shipped_model)
from .sampling.solvers import posterior, sigma_range, solve
from .tasks import Problem, TaskOptions, build_problem, repeat_operator

TASK_BASELINES = {"ct": ("fbp", "sirt", "cgls", "tv"),
                  "mri": ("zero_filled", "cgls", "tv", "cs_tv", "cs_wavelet"),
                  "mar": ("li", "nmar", "sirt", "cgls", "tv")}
TASK_METRICS = {"ct": ("psnr", "ssim", "psnr_hu", "ssim_hu", "psnr_circle", "ssim_circle", "psnr_hist", "ssim_hist",
                       "nmse"),
                "mri": ("psnr", "ssim", "psnr_circle", "ssim_circle", "psnr_hist", "ssim_hist", "nmse"),
                "mar": ("psnr", "ssim", "psnr_mar", "ssim_mar", "psnr_mar_hu", "ssim_mar_hu", "nmse")}
CONFIG_VERSION = 2      # 2: phased MRI takes its phase misfit as noise; --samples K scores the first sample
OWN_FILES = {"eval.json", "weights.json", "parts", "metrics.csv", "summary.json", "reconstructions.npz",
             "comparison.png"}


@dataclass
class Method:
    """A named reconstruction method: a score solver (params = SolverConfig fields) or a
    classical baseline (params: its fixed weight/iters, or {} to choose on validation data);
    origin: where a score solver's settings came from (settings.Resolved.describe)."""
    name: str
    kind: str
    params: dict
    origin: str = ""


def resolve_methods(names, task: str, steps: int | None = None, sets: dict | None = None, presets=(),
                    noisy: bool = False, checkpoint: str | None = None) -> list[Method]:
    """Methods for `names` on `task`. Score solvers: `settings.resolve` (reference preset < tuned
    preset: one of `presets` (settings.Preset), else the shipped model `checkpoint`'s unless
    'reference' is among `presets` < `steps` < `sets`, parse_sets output: solver.KEY for every
    score solver, NAME.KEY for one); noisy: settings.noisy_level of the data. Baselines: their
    parameter fixed by sets (e.g. tv.weight), else {} (chosen on validation data)."""
    names = [n.strip() for n in names if n.strip()] if not isinstance(names, str) else \
        [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ScoreinvError("--solvers: none given; expected a comma-separated list such as fbp,tv,projection")
    valid = list(SOLVERS) + list(TASK_BASELINES[task])
    sets = dict(sets or {})
    bad = [n for n in names if n not in valid]
    if bad:
        other = [n for n in bad if n in BASELINES]
        hint = f" ({', '.join(other)}: not a {task} method)" if other else ""
        raise ScoreinvError(f"--solvers: unknown solver(s) {', '.join(bad)} for task {task}{hint}; expected "
                            f"some of: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ScoreinvError(f"--solvers: a method is listed twice ({', '.join(names)})")
    unknown = set(sets) - set(names) - {"solver"}
    if unknown:
        raise ScoreinvError(f"--set for {', '.join(sorted(unknown))}, which is not among the solvers "
                            f"({', '.join(names)}); use solver.KEY for every score solver")
    score = [n for n in names if n in SOLVERS]
    check_applies(sets, score)
    if steps is not None and not score:
        raise ScoreinvError(f"--steps {steps}: no score solver among {', '.join(names)}")
    by_solver, reference = {}, False
    for p in presets:
        if p == REFERENCE_KEYWORD:
            reference = True
            continue
        if p.task != task:
            raise ScoreinvError(f"preset {p.source}: tuned for task {p.task!r}, this run is {task!r}")
        if p.solver not in names:
            raise ScoreinvError(f"preset {p.source}: for solver {p.solver!r}, which is not among the solvers "
                                f"({', '.join(names)})")
        if p.solver in by_solver:
            raise ScoreinvError(f"--preset: two presets for {p.solver} ({by_solver[p.solver].source}, {p.source})")
        by_solver[p.solver] = p
    model = shipped_model(checkpoint)
    methods = []
    for n in names:
        if n in SOLVERS:
            r = resolve(task, n, preset=by_solver.get(n, REFERENCE_KEYWORD if reference else None), model=model,
                        steps=steps, sets=sets, noisy=noisy)
            methods.append(Method(n, "score", dataclasses.asdict(r.cfg), r.describe()))
        else:
            b = get_baseline(n)
            fixed = sets.get(n, {})
            extra = set(fixed) - {b.param}
            if extra:
                raise ScoreinvError(f"--set {n}.{sorted(extra)[0]}: {n} has "
                                    + (f"one parameter, {b.param}" if b.param else "no parameter"))
            methods.append(Method(n, "baseline", {k: _baseline_param(n, k, v) for k, v in fixed.items()}))
    return methods


def _baseline_param(name: str, key: str, value):
    """A fixed baseline parameter from --set NAME.KEY=VALUE: iters a positive integer, weight > 0."""
    flag = f"--set {name}.{key}"
    if key == "iters":
        return check_int(flag, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ScoreinvError(f"{flag} = {value!r}: expected a positive number")
    return float(value)


def _real(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() if x.is_complex() else x).float().cpu()


def run_method(method: Method, problem: Problem, model=None, samples: int = 1,
               generator: torch.Generator | None = None, device="cpu",
               volume: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor | None]:
    """Reconstruct one problem batch -> (x (B, 1, H, W) CPU, posterior std or None, NFE per image, the first
    of the K samples or None); volume: (B,) volume labels of the slices for a coupled solver (`slice_labels`)."""
    if method.kind == "baseline":
        kw = dict(method.params)
        if method.name == "nmar" and problem.metal_mask is not None:
            kw["metal_mask"] = problem.metal_mask
        rec = get_baseline(method.name)(problem.baseline_op, problem.baseline_y.to(device), **kw)
        return _real(rec.x), None, 0, None
    if model is None:
        raise ScoreinvError(f"solver {method.name!r} needs a score model (--checkpoint)")
    cfg = SolverConfig(**method.params)
    y = problem.y.to(device)
    inputs = problem_inputs(problem, cfg)
    if samples == 1:
        x, nfe = solve(model, problem.op, y, cfg, generator, **inputs, volume=volume)
        return _real(x), None, int(nfe), None
    post = posterior(model, repeat_operator(problem.op, samples), y, cfg, samples, generator, **inputs, volume=volume)
    return _real(post["mean"]), _real(post["std"]), int(post["nfe"]), _real(post["samples"][0])


def check_score_methods(methods, options: TaskOptions, model=None) -> None:
    """Refuse, before any computation, score solvers that cannot run on the task's operator (ddrm
    needs the A = P(Λ)T decomposition: MRI, or CT with --ct-operator fourier) or whose warm start /
    σ_end lies outside the model's noise range."""
    for m in methods:
        if m.kind != "score":
            continue
        if m.name == "ddrm" and not options.decomposes:
            what = {"mar": "MAR's operator", "ct": "the CT sinogram operator (--ct-operator radon)",
                    "mri": "SENSE (--coils) or the phase-corrected operator (--phase smooth)"}[options.task]
            hint = ", or --ct-operator fourier" if options.task == "ct" else ""
            raise ScoreinvError(f"solver ddrm needs an operator with the A = P(Λ)T decomposition (single-coil "
                                f"Cartesian MRI, Fourier-slice CT); {what} has none. Use diffpir (its data step runs "
                                f"by conjugate gradient) or dds{hint}")
        if model is not None:
            sigma_range(model.sde, SolverConfig(**m.params))


def model_fingerprint(model) -> str:
    """sha256 (16 hex digits) of the network weights: identifies the model a result came from."""
    h = hashlib.sha256()
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_images(dataset, indices) -> torch.Tensor:
    """Images `indices` of a dataset -> (B, 1, S, S) float32."""
    return torch.stack([dataset[int(i)] for i in indices]).float()


def choose_baseline_params(methods, problem: Problem, cache: Path, key: str, log=print) -> None:
    """Fill in the parameter of every baseline that needs one (tv weight, sirt iters, ...) by
    choose_weight on the validation `problem`; cached in `cache` (JSON) under `key`, each
    candidate's score as soon as it is computed (a rerun computes only the missing ones)."""
    todo = [m for m in methods if m.kind == "baseline" and BASELINES[m.name].param and not m.params]
    if not todo:
        return
    store = json.loads(cache.read_text()) if cache.exists() else {}
    entry = store.setdefault(key, {})
    metric = "psnr_mar" if problem.task == "mar" else "psnr"
    n_val = int(problem.x.shape[0])
    for m in todo:
        if "value" not in entry.get(m.name, {}):
            part = entry.get(m.name, {}).get("partial", {})
            same = part.get("n_val") == n_val and part.get("metric") == metric
            known = {v: sc for v, sc in part.get("scores", [])} if same else {}

            def save(v, sc, name=m.name, known=known):
                known[v] = sc
                scores = [[k, x] for k, x in known.items()]
                entry[name] = {"partial": {"n_val": n_val, "metric": metric, "scores": scores}}
                atomic.write_text(cache, json.dumps(store, indent=1))

            t0 = time.perf_counter()
            c = choose_weight(m.name, problem.baseline_op, problem.baseline_y, problem.x, metric=metric,
                              metal_mask=problem.metal_mask, known=known, on_score=save)
            entry[m.name] = {"param": c.param, "value": c.weight, "metric": c.metric, "grid": list(c.grid),
                             "scores": list(c.scores), "at_edge": c.at_edge, "n_val": n_val}
            atomic.write_text(cache, json.dumps(store, indent=1))
            log(f"[{m.name}] {c.param} = {c.weight:g} chosen on {n_val} validation images "
                f"({c.metric} {max(c.scores):.2f}, {time.perf_counter() - t0:.1f} s)"
                + (" - at the edge of the grid" if c.at_edge else ""))
        m.params[entry[m.name]["param"]] = entry[m.name]["value"]


def check_config(path: Path, config: dict, write: bool = True) -> dict:
    """Compare `config` with the one stored at `path` (refuse another configuration; solvers may be
    added, a solver's parameters must match); store the union (unless not `write`: ranks other than
    0 of a sharded run only compare); return it."""
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(config_diff(old, config, skip="methods"))
        for n, p in config["methods"].items():
            if n in old.get("methods", {}):
                diff += config_diff(old["methods"][n], p, f"{n}.")
        if diff:
            raise ScoreinvError(f"{path.parent} holds results of another configuration (differs in: "
                                f"{', '.join(diff)}); use another --out or remove it")
        config = {**old, "methods": {**old.get("methods", {}), **config["methods"]}}
    if write:
        atomic.write_text(path, json.dumps(config, indent=1, sort_keys=True))
    return config


def image_metrics(names, x: torch.Tensor, ref: torch.Tensor, metal_mask=None) -> dict[str, np.ndarray]:
    """{name: (B,) float64}. The histogram variants are undefined (NaN, counted as such in the
    summary) for an image whose histogram has no second peak (e.g. a failed reconstruction)."""
    out = {}
    for k in names:
        try:
            out[k] = compute_metrics([k], x, ref, metal_mask)[k].cpu().numpy()
        except ScoreinvError:
            if not k.endswith("_hist"):
                raise
            vals = []
            for i in range(x.shape[0]):
                try:
                    vals.append(float(compute_metrics([k], x[i:i + 1], ref[i:i + 1])[k][0]))
                except ScoreinvError:
                    vals.append(float("nan"))
            out[k] = np.asarray(vals)
    return out


def check_out_dir(out: Path) -> None:
    """--out, before any computation: a writable new or empty folder, or one holding an earlier
    evaluation (eval.json) and nothing but the files an evaluation writes."""
    check_new_output(out / "eval.json", overwrite=True, flag="--out")
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir()
             if not (p.name.startswith(".") and p.name.endswith(".tmp"))}   # an atomic write cut short
    foreign = sorted(names - OWN_FILES)
    if names and (foreign or "eval.json" not in names):
        what = f"files an evaluation does not write ({', '.join(foreign[:3])})" if foreign else \
            "no evaluation record (eval.json)"
        raise ScoreinvError(f"--out {out}: the folder is not empty and holds {what}; give a new or empty folder, "
                            "or the folder of an earlier evaluation to resume it")


def _check_same_images(out: Path, dataset, idx: np.ndarray) -> None:
    """A resumed folder must hold results of the same images: eval.json does not record the image
    size (without a model) or --data-seed, so the stored ground truth of the first batch is
    compared with the images the dataset gives now."""
    part = load_part(out / "parts" / "truth" / "b00000.npz", idx)
    if part is None:
        return
    x = load_images(dataset, idx).numpy()
    if part["x"].shape != x.shape or not np.allclose(part["x"], x, atol=1e-5):
        raise ScoreinvError(f"--out {out}: holds results for other images (shape {part['x'].shape[-2:]} there, "
                            f"{x.shape[-2:]} now, or other values: another --data-seed, --image-size or data); "
                            "use another --out or remove it")


def evaluate(out_dir, options: TaskOptions, dataset, methods: list[Method], num_images: int, *, data_id: str,
             split: str, model=None, model_id: str | None = None, samples: int = 1, seed: int = 0,
             batch_size: int = 4, device="cpu", val_dataset=None, n_val: int = 4, figure_images: int = 4,
             log=print, shard: Shard | None = None, ood_reference: dict | None = None) -> list[dict]:
    """Run (or resume) an evaluation; write the files of the module docstring; return summary records
    (on rank 0; [] on the other ranks of a sharded run).

    dataset: the split to evaluate (ds[i] -> (1, S, S)); val_dataset: a callable returning the
    validation split (needed only for baselines whose parameter must be chosen); shard: this
    process's share under torchrun (module docstring; default: one process, every batch);
    ood_reference: the model's out-of-distribution reference (`ood.model_reference`; None: the guard
    judges the data residual only).
    """
    shard = shard or Shard()
    out = Path(out_dir)
    check_int("--num-images", num_images)
    if num_images > len(dataset):
        raise ScoreinvError(f"--num-images {num_images}: the {split} split of {data_id} holds only "
                            f"{len(dataset)} image(s)")
    check_int("--batch-size", batch_size)
    check_int("--samples", samples)
    check_int("--val-images", n_val)
    check_out_dir(out)
    check_score_methods(methods, options, model)
    vindex = volume_index(dataset)
    coupled = [m.name for m in methods if m.kind == "score" and m.params.get("coupling", "none") != "none"]
    if coupled and vindex is None:
        raise ScoreinvError(f"{', '.join(coupled)}: coupling across slices needs a dataset of volumes (each image's "
                            f"volume and slice known: ct-real, mri-real, a folder of volumes); {data_id} ({split}) "
                            "holds independent images")
    batches = [np.arange(i, min(i + batch_size, num_images)) for i in range(0, num_images, batch_size)]
    _check_same_images(out, dataset, batches[0])
    env = json.dumps(environment(device), sort_keys=True)
    config = {"version": CONFIG_VERSION, "task": options.to_dict(), "data": data_id, "split": split,
              "seed": seed, "batch_size": batch_size, "samples": samples, "model": model_id,
              "methods": {m.name: record(m.params) if m.kind == "score" else m.params for m in methods}}
    check_config(out / "eval.json", config, write=shard.lead)
    key = f"{options.task}|{options.setting()}|{data_id}"
    choose = any(m.kind == "baseline" and BASELINES[m.name].param and not m.params for m in methods)
    if choose and val_dataset is None:
        raise ScoreinvError("choosing baseline weights needs validation data (val_dataset)")

    def weights():
        vds = val_dataset()
        x_val = load_images(vds, range(min(n_val, len(vds))))
        vp = build_problem(x_val, options, torch.Generator().manual_seed(derive_seed(seed, "problem-val")))
        choose_baseline_params(methods, vp, out / "weights.json", key, log)
    if choose and shard.lead:
        weights()
    shard.barrier()
    if choose and not shard.lead:        # every weight is cached by now: read, not written
        weights()
    names = TASK_METRICS[options.task]
    for b in shard.mine(len(batches)):
        idx = batches[b]
        truth_path = out / "parts" / "truth" / f"b{b:05d}.npz"
        todo = [m for m in methods if load_part(out / "parts" / m.name / f"b{b:05d}.npz", idx) is None]
        if not todo and load_part(truth_path, idx) is not None:
            continue
        x = load_images(dataset, idx)
        problem = build_problem(x, options, torch.Generator().manual_seed(derive_seed(seed, "problem", b)))
        mm = problem.metal_mask
        atomic.savez(truth_path, idx=idx, x=x.numpy(), naive=_real(problem.naive).numpy(),
                     **({"metal_mask": mm.numpy()} if mm is not None else {}))
        for m in todo:
            g = torch.Generator().manual_seed(derive_seed(seed, "solve", m.name, b))
            t0 = time.perf_counter()
            xr, std, nfe, first = run_method(m, problem, model, samples, g, device, volume=slice_labels(vindex, idx))
            sec = time.perf_counter() - t0
            if not bool(torch.isfinite(xr).all()):
                raise ScoreinvError(f"{m.name}: the reconstruction of images {idx.tolist()} contains NaN or Inf "
                                    f"(diverged; check its parameters {m.params})")
            vals = image_metrics(names, xr, x, metal_mask=mm)
            guard = ood_arrays(model, problem, xr, ood_reference, batch_size, device) if m.kind == "score" else {}
            single = ({} if first is None else
                      {f"m1_{k}": v for k, v in image_metrics(names, first, x, metal_mask=mm).items()})
            atomic.savez(out / "parts" / m.name / f"b{b:05d}.npz", idx=idx, x=xr.numpy(), seconds=sec, nfe=nfe, env=env,
                         **({"std": std.numpy()} if std is not None else {}), **single,
                         **{f"m_{k}": v for k, v in vals.items()}, **guard)
            log(f"{shard.tag}[{m.name}] batch {b + 1}/{len(batches)} ({len(idx)} images): {sec:.1f} s, "
                f"PSNR {float(vals['psnr'].mean()):.2f}, SSIM {float(vals['ssim'].mean()):.3f}")
    shard.barrier()              # every part is written: rank 0 merges them
    if not shard.lead:
        return []
    return write_outputs(out, options, methods, batches, names, data_id, split, samples, figure_images, log, vindex)


def ood_arrays(model, problem: Problem, x: torch.Tensor, reference: dict | None, batch: int, device) -> dict:
    """The out-of-distribution guard (`ood.check`, docs/design.md §4.4) on a score solver's reconstructions
    x (B, 1, H, W) of one problem batch, as arrays for its part file: ood_tau (B,) (NaN: no reference),
    ood_ratio (B, len(ood.SIGMAS)), ood_rho and ood_nu (B,): the residual on the operator and data the solver
    saw and its noise floor, ood_threshold (B,): the model's typicality threshold (`ood.typicality_threshold`)."""
    y = problem.y.to(device)
    sig = measurement_sigma(problem.noise, problem.task, problem.op, problem.baseline_op, problem.baseline_y)
    recs = ood.check(model, problem.op, y, x.to(device), reference, sig, batch=batch)
    nan = float("nan")
    return {"ood_tau": np.array([nan if r.typicality is None else r.typicality for r in recs]),
            "ood_ratio": np.array([[r.typicality_per_sigma.get(f"{s:g}", nan) for s in ood.SIGMAS] for r in recs]),
            "ood_rho": np.array([r.residual for r in recs]), "ood_nu": np.array([r.noise_floor for r in recs]),
            "ood_threshold": np.array([r.thresholds["typicality"] for r in recs])}


