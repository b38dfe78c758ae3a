"""Evaluation runs: score solvers and classical baselines on a split, resumable, with metrics.

`evaluate(...)` reconstructs `num_images` images of a dataset split with each method and writes
into `out_dir`:
- metrics.csv: one row per (image, solver): PSNR, SSIM (full image; the main columns), the
  circle / histogram variants (CT, MRI) or metal-zeroed variants (MAR), NMSE, seconds, NFE;
- summary.json: one record per solver (mean ± population std over images, s/image, NFE);
- reconstructions.npz: ground_truth, naive, recon_<solver> (and std_<solver> with samples > 1);
- comparison.png: rows = images (reconstruction and |error| rows), columns = ground truth and
  each solver.
Resume: every (solver, batch) result is saved atomically under parts/ as it completes; a rerun
skips what exists, so a killed evaluation resumes and a larger --num-images extends it. The
configuration (everything but num_images; solvers may be added) lives in eval.json and a
directory of another configuration is refused. Baselines with a parameter (tv, cs_tv,
cs_wavelet: weight; sirt, cgls: iterations) get it from `choose_weight` on VALIDATION images,
cached per (task, setting, data) in weights.json.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .baselines import BASELINES, choose_weight, get_baseline
from .data.base import derive_seed
from .errors import ScoreinvError, check_range
from .metrics import compute_metrics, summarise
from .sampling.solvers import SOLVERS, SolverConfig, posterior, solve, solver_config
from .tasks import Problem, TaskOptions, build_problem, repeat_operator

TASK_BASELINES = {"ct": ("fbp", "sirt", "cgls", "tv"),
                  "mri": ("zero_filled", "cgls", "tv", "cs_tv", "cs_wavelet"),
                  "mar": ("li", "nmar", "sirt", "cgls", "tv")}
TASK_METRICS = {"ct": ("psnr", "ssim", "psnr_circle", "ssim_circle", "psnr_hist", "ssim_hist", "nmse"),
                "mri": ("psnr", "ssim", "psnr_circle", "ssim_circle", "psnr_hist", "ssim_hist", "nmse"),
                "mar": ("psnr", "ssim", "psnr_mar", "ssim_mar", "nmse")}
MAIN_VARIANT = "full image (psnr, ssim: whole image clipped to [0, 1], data range 1)"
CONFIG_VERSION = 1


@dataclass
class Method:
    """A named reconstruction method: a score solver (params = SolverConfig fields) or a
    classical baseline (params: its fixed weight/iters, or {} to choose on validation data)."""
    name: str
    kind: str
    params: dict


def parse_sets(items) -> dict[str, dict]:
    """['solver.snr=0.3', 'tv.weight=1e-3'] -> {'solver': {'snr': 0.3}, 'tv': {'weight': 0.001}}.
    'solver.' applies to every score solver, '<name>.' to one method; values are YAML scalars."""
    import yaml
    out: dict[str, dict] = {}
    for it in items or ():
        key, sep, val = str(it).partition("=")
        target, dot, param = key.strip().partition(".")
        if not sep or not dot or not target or not param:
            raise ScoreinvError(f"--set {it!r}: expected TARGET.PARAM=VALUE, e.g. solver.snr=0.3 or tv.weight=1e-3")
        try:
            out.setdefault(target, {})[param] = yaml.safe_load(val)
        except yaml.YAMLError:
            raise ScoreinvError(f"--set {it!r}: cannot parse the value {val!r}") from None
    return out


def resolve_methods(names, task: str, steps: int | None = None, sets: dict | None = None, presets=(),
                    noise: float = 0.0) -> list[Method]:
    """Methods for `names` on `task`. Score solver parameters, in increasing precedence: the task
    preset (sampling.solvers.PRESETS; final_projection off for noisy CT/MRI data), a tuned
    preset (tune.Preset), `steps`, then `sets` (parse_sets)."""
    names = [n.strip() for n in names if n.strip()] if not isinstance(names, str) else \
        [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ScoreinvError("no solvers given; expected a comma-separated list such as fbp,tv,projection")
    valid = list(SOLVERS) + list(TASK_BASELINES[task])
    sets = dict(sets or {})
    bad = [n for n in names if n not in valid]
    if bad:
        other = [n for n in bad if n in BASELINES]
        hint = f" ({', '.join(other)}: not a {task} method)" if other else ""
        raise ScoreinvError(f"unknown solver(s) {', '.join(bad)} for task {task}{hint}; expected some of: "
                            f"{', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ScoreinvError(f"solvers listed twice: {', '.join(names)}")
    unknown = set(sets) - set(names) - {"solver"}
    if unknown:
        raise ScoreinvError(f"--set for {', '.join(sorted(unknown))}, which is not among the solvers "
                            f"({', '.join(names)}); use solver.PARAM for every score solver")
    by_solver = {}
    for p in presets:
        if p.task != task:
            raise ScoreinvError(f"preset {p.source}: tuned for task {p.task!r}, this run is {task!r}")
        if p.solver not in names:
            raise ScoreinvError(f"preset {p.source}: for solver {p.solver!r}, which is not among the solvers "
                                f"({', '.join(names)})")
        by_solver[p.solver] = p.params
    methods = []
    for n in names:
        if n in SOLVERS:
            kw = {"final_projection": False} if noise > 0 and task != "mar" else {}
            kw.update(by_solver.get(n, {}))
            if steps is not None:
                if isinstance(steps, bool) or int(steps) != steps or steps < 1:
                    raise ScoreinvError(f"--steps {steps!r}: expected a positive integer")
                kw["steps"] = int(steps)
            kw.update(sets.get("solver", {}))
            kw.update(sets.get(n, {}))
            methods.append(Method(n, "score", dataclasses.asdict(solver_config(n, task, **kw))))
        else:
            b = get_baseline(n)
            fixed = sets.get(n, {})
            extra = set(fixed) - {b.param}
            if extra:
                raise ScoreinvError(f"--set {n}.{sorted(extra)[0]}: {n} has "
                                    + (f"one parameter, {b.param}" if b.param else "no parameter"))
            methods.append(Method(n, "baseline", dict(fixed)))
    return methods


def _real(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() if x.is_complex() else x).float().cpu()


def run_method(method: Method, problem: Problem, model=None, samples: int = 1,
               generator: torch.Generator | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Reconstruct one problem batch -> (x (B, 1, H, W) CPU, posterior std or None, NFE per image)."""
    if method.kind == "baseline":
        kw = dict(method.params)
        if method.name == "nmar" and problem.metal_mask is not None:
            kw["metal_mask"] = problem.metal_mask
        rec = get_baseline(method.name)(problem.baseline_op, problem.baseline_y.to(device), **kw)
        return _real(rec.x), None, 0
    if model is None:
        raise ScoreinvError(f"solver {method.name!r} needs a score model (--checkpoint)")
    cfg = SolverConfig(**method.params)
    y = problem.y.to(device)
    if samples == 1:
        x, nfe = solve(model, problem.op, y, cfg, generator)
        return _real(x), None, int(nfe)
    post = posterior(model, repeat_operator(problem.op, samples), y, cfg, samples, generator)
    return _real(post["mean"]), _real(post["std"]), int(post["nfe"])


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
    choose_weight on the validation `problem`; cached in `cache` (JSON) under `key`."""
    todo = [m for m in methods if m.kind == "baseline" and BASELINES[m.name].param and not m.params]
    if not todo:
        return
    store = json.loads(cache.read_text()) if cache.exists() else {}
    entry = store.setdefault(key, {})
    metric = "psnr_mar" if problem.task == "mar" else "psnr"
    for m in todo:
        if m.name not in entry:
            t0 = time.perf_counter()
            c = choose_weight(m.name, problem.baseline_op, problem.baseline_y, problem.x, metric=metric,
                              metal_mask=problem.metal_mask)
            entry[m.name] = {"param": c.param, "value": c.weight, "metric": c.metric, "grid": list(c.grid),
                             "scores": list(c.scores), "at_edge": c.at_edge, "n_val": int(problem.x.shape[0])}
            atomic.write_text(cache, json.dumps(store, indent=1))
            log(f"[{m.name}] {c.param} = {c.weight:g} chosen on {problem.x.shape[0]} validation images "
                f"({c.metric} {max(c.scores):.2f}, {time.perf_counter() - t0:.1f} s)"
                + (" - at the edge of the grid" if c.at_edge else ""))
        m.params[entry[m.name]["param"]] = entry[m.name]["value"]


def config_diff(a: dict, b: dict, prefix: str = "", skip: str = "") -> list[str]:
    """Keys (dotted) whose values differ between two JSON-like dicts, with both values."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k == skip:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out


def check_config(path: Path, config: dict) -> dict:
    """Compare `config` with the one stored at `path` (refuse another configuration; solvers may be
    added, a solver's parameters must match); store the union; return it."""
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


def _summary_stats(k: str, v: np.ndarray) -> dict:
    bad = int(np.isnan(v).sum())
    if bad:
        return {f"{k}_mean": None, f"{k}_std": None, f"{k}_undefined": bad}
    m, s = summarise(v)
    return {f"{k}_mean": m, f"{k}_std": s}


def _load_part(path: Path, idx: np.ndarray):
    """The saved part at `path` if it covers exactly the images `idx`, else None."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        part = {k: z[k] for k in z.files}
    return part if np.array_equal(part["idx"], idx) else None


def evaluate(out_dir, options: TaskOptions, dataset, methods: list[Method], num_images: int, *, data_id: str,
             split: str, model=None, model_id: str | None = None, samples: int = 1, seed: int = 0,
             batch_size: int = 4, device="cpu", val_dataset=None, n_val: int = 4, figure_images: int = 4,
             log=print) -> list[dict]:
    """Run (or resume) an evaluation; write the files of the module docstring; return summary records.

    dataset: the split to evaluate (ds[i] -> (1, S, S)); val_dataset: a callable returning the
    validation split (needed only for baselines whose parameter must be chosen).
    """
    out = Path(out_dir)
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ScoreinvError(f"--num-images {num_images!r}: expected a positive integer")
    if num_images > len(dataset):
        raise ScoreinvError(f"--num-images {num_images}: the {split} split of {data_id} holds only "
                            f"{len(dataset)} image(s)")
    check_range("--batch-size", batch_size, 1)
    check_range("--samples", samples, 1)
    check_range("--val-images", n_val, 1)
    config = {"version": CONFIG_VERSION, "task": options.to_dict(), "data": data_id, "split": split,
              "seed": seed, "batch_size": batch_size, "samples": samples, "model": model_id,
              "methods": {m.name: m.params for m in methods}}
    check_config(out / "eval.json", config)
    key = f"{options.task}|{options.setting()}|{data_id}"
    if any(m.kind == "baseline" and BASELINES[m.name].param and not m.params for m in methods):
        if val_dataset is None:
            raise ScoreinvError("choosing baseline weights needs validation data (val_dataset)")
        vds = val_dataset()
        x_val = load_images(vds, range(min(n_val, len(vds))))
        vp = build_problem(x_val, options, torch.Generator().manual_seed(derive_seed(seed, "problem-val")))
        choose_baseline_params(methods, vp, out / "weights.json", key, log)
    batches = [np.arange(i, min(i + batch_size, num_images)) for i in range(0, num_images, batch_size)]
    names = TASK_METRICS[options.task]
    for b, idx in enumerate(batches):
        truth_path = out / "parts" / "truth" / f"b{b:05d}.npz"
        todo = [m for m in methods if _load_part(out / "parts" / m.name / f"b{b:05d}.npz", idx) is None]
        if not todo and _load_part(truth_path, idx) is not None:
            continue
        x = load_images(dataset, idx)
        problem = build_problem(x, options, torch.Generator().manual_seed(derive_seed(seed, "problem", b)))
        mm = problem.metal_mask
        atomic.savez(truth_path, idx=idx, x=x.numpy(), naive=_real(problem.naive).numpy(),
                     **({"metal_mask": mm.numpy()} if mm is not None else {}))
        for m in todo:
            g = torch.Generator().manual_seed(derive_seed(seed, "solve", m.name, b))
            t0 = time.perf_counter()
            xr, std, nfe = run_method(m, problem, model, samples, g, device)
            sec = time.perf_counter() - t0
            if not bool(torch.isfinite(xr).all()):
                raise ScoreinvError(f"{m.name}: the reconstruction of images {idx.tolist()} contains NaN or Inf "
                                    f"(diverged; check its parameters {m.params})")
            vals = image_metrics(names, xr, x, metal_mask=mm)
            atomic.savez(out / "parts" / m.name / f"b{b:05d}.npz", idx=idx, x=xr.numpy(), seconds=sec, nfe=nfe,
                         **({"std": std.numpy()} if std is not None else {}),
                         **{f"m_{k}": v for k, v in vals.items()})
            log(f"[{m.name}] batch {b + 1}/{len(batches)} ({len(idx)} images): {sec:.1f} s, "
                f"PSNR {float(vals['psnr'].mean()):.2f}, SSIM {float(vals['ssim'].mean()):.3f}")
    return _write_outputs(out, options, methods, batches, names, data_id, split, samples, figure_images, log)


def _write_outputs(out: Path, options, methods, batches, names, data_id, split, samples, figure_images, log):
    truth = [_load_part(out / "parts" / "truth" / f"b{b:05d}.npz", idx) for b, idx in enumerate(batches)]
    gt = np.concatenate([t["x"] for t in truth])
    arrays = {"index": np.concatenate(batches), "ground_truth": gt,
              "naive": np.concatenate([t["naive"] for t in truth])}
    if "metal_mask" in truth[0]:
        arrays["metal_mask"] = np.concatenate([t["metal_mask"] for t in truth])
    rows, summary = [], []
    for m in methods:
        parts = [_load_part(out / "parts" / m.name / f"b{b:05d}.npz", idx) for b, idx in enumerate(batches)]
        arrays[f"recon_{m.name}"] = np.concatenate([p["x"] for p in parts])
        if "std" in parts[0]:
            arrays[f"std_{m.name}"] = np.concatenate([p["std"] for p in parts])
        vals = {k: np.concatenate([p[f"m_{k}"] for p in parts]) for k in names}
        secs = np.concatenate([np.full(len(p["idx"]), float(p["seconds"]) / len(p["idx"])) for p in parts])
        nfe = int(parts[0]["nfe"])
        for i, img in enumerate(arrays["index"]):
            rows.append({"image": int(img), "solver": m.name, **{k: float(vals[k][i]) for k in names},
                         "seconds": float(secs[i]), "nfe": nfe})
        rec = {"solver": m.name, "kind": m.kind, "task": options.task, "setting": options.setting(),
               "data": data_id, "split": split, "metric_variant": MAIN_VARIANT}
        for k in names:
            rec.update(_summary_stats(k, vals[k]))
        rec.update(sec_per_image=float(secs.mean()), nfe=nfe, n_images=int(len(secs)),
                   samples=samples if m.kind == "score" else 1,
                   params=m.params)
        summary.append(rec)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["image", "solver", *names, "seconds", "nfe"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(out / "metrics.csv", buf.getvalue())
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic.savez(out / "reconstructions.npz", **arrays)
    comparison_figure(arrays, [m.name for m in methods], out / "comparison.png", options.task, figure_images)
    log(format_table(summary))
    return summary


def comparison_figure(arrays: dict, solvers, path, task: str, n_images: int = 4) -> None:
    """Rows: per image a reconstruction row and an |error| row; columns: ground truth, each solver."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .imaging import save_figure
    gt = arrays["ground_truth"]
    n = min(n_images, gt.shape[0])
    cols = 1 + len(solvers)
    fig, axes = plt.subplots(2 * n, cols, figsize=(2.0 * cols, 4.1 * n), squeeze=False)
    for i in range(n):
        ref = gt[i, 0]
        lo, hi = (np.quantile(ref, [0.01, 0.995]) if task in ("ct", "mar") else (0.0, 1.0))
        hi = max(hi, lo + 1e-3)
        axes[2 * i, 0].imshow(ref, cmap="gray", vmin=lo, vmax=hi)
        axes[2 * i, 0].set_title(f"ground truth #{int(arrays['index'][i])}", fontsize=8)
        for j, s in enumerate(solvers, 1):
            x = arrays[f"recon_{s}"][i, 0]
            err = np.abs(np.clip(x, 0, 1) - ref)
            mse = float((err ** 2).mean())
            p = 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")
            axes[2 * i, j].imshow(x, cmap="gray", vmin=lo, vmax=hi)
            axes[2 * i, j].set_title(f"{s}\n{p:.2f} dB", fontsize=8)
            axes[2 * i + 1, j].imshow(err, cmap="magma", vmin=0, vmax=0.2)
        axes[2 * i + 1, 0].text(0.5, 0.5, "|error|\n(0 to 0.2)", ha="center", va="center", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def format_table(summary: list[dict]) -> str:
    """The end-of-run table: solver, PSNR ± std, SSIM ± std, s/image, NFE."""
    lines = [f"{'solver':<20} {'PSNR (dB)':>15} {'SSIM':>15} {'s/image':>9} {'NFE':>6}"]
    for r in summary:
        lines.append(f"{r['solver']:<20} {r['psnr_mean']:>7.2f} ± {r['psnr_std']:<5.2f} "
                     f"{r['ssim_mean']:>7.3f} ± {r['ssim_std']:<5.3f} {r['sec_per_image']:>9.2f} {r['nfe']:>6d}")
    n = summary[0]["n_images"] if summary else 0
    return "\n".join(lines) + f"\n({n} images, {summary[0]['setting'] if summary else ''}; {MAIN_VARIANT})"
