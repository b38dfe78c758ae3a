"""The outputs of an evaluation run (`scoreinv.evaluate`): merging its per-batch parts into
metrics.csv, summary.json, reconstructions.npz and comparison.png (the files, their columns and
records are described in evaluate's module docstring), the guard's records per image
(docs/design.md §4.4) and the volume metrics of runs of consecutive slices (docs/design.md §9.3).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import atomic, ood
from .eval_report import MAIN_VARIANT, comparison_figure, format_table
from .metrics import VOLUME_METRICS, summarise, volume_metrics
from .sampling.settings import SolverConfig, estimate_name

if TYPE_CHECKING:
    from .evaluate import Method


def volume_index(dataset) -> list[tuple[int, int]] | None:
    """(volume, slice) of every image of a dataset of volumes (its `index`), else None."""
    idx = getattr(dataset, "index", None)
    if not isinstance(idx, (list, tuple)) or len(idx) != len(dataset) \
            or not all(isinstance(e, (tuple, list)) and len(e) == 2 for e in idx):
        return None
    return [(int(v), int(k)) for v, k in idx]


def _runs(index, images) -> list[int]:
    """A run number per image of `images` (dataset indices, in order): a new run wherever the next image
    is not the next slice of the same volume."""
    out, run = [], 0
    for j, i in enumerate(images):
        prev = index[images[j - 1]] if j else None
        if j and not (index[i][0] == prev[0] and index[i][1] == prev[1] + 1):
            run += 1
        out.append(run)
    return out


def slice_labels(index, images) -> torch.Tensor | None:
    """Volume labels (B,) of a batch for the coupled solvers (docs/design.md §9.2): consecutive slices of
    one volume share a label; None without an index."""
    return None if index is None else torch.tensor(_runs(index, [int(i) for i in images]))


def volume_scores(index, images, x: np.ndarray, ref: np.ndarray) -> dict:
    """Volume metrics (docs/design.md §9.3) of the reconstructions x against ref ((N, 1, S, S), the
    evaluated images `images` in order), averaged over the runs of 2+ consecutive slices; {} if none."""
    if index is None:
        return {}
    runs = np.asarray(_runs(index, [int(i) for i in images]))
    vals = []
    for r in np.unique(runs):
        pos = np.flatnonzero(runs == r)
        if len(pos) >= 2:
            vals.append(volume_metrics(torch.from_numpy(x[pos]), torch.from_numpy(ref[pos])))
    if not vals:
        return {}
    sizes = [int((runs == r).sum()) for r in np.unique(runs)]
    out = {"n_volumes": len(vals), "slices": [n for n in sizes if n >= 2]}
    for k in VOLUME_METRICS:
        v = np.asarray([d[k] for d in vals])
        out[k] = None if np.isnan(v).any() else float(v.mean())
    return out


def _scored(label: str, kind: str, est: str, vals: dict, secs: np.ndarray, nfe: int, index, names, common: dict,
            guards: list | None = None) -> tuple[list, dict]:
    """(metrics.csv rows, the start of the summary record) of one scored estimate: per image its metrics,
    seconds, NFE and estimate (and out-of-distribution columns `guards`); the record's means ± stds."""
    rows = [{"image": int(img), "solver": label, **{k: float(vals[k][i]) for k in names}, "seconds": float(secs[i]),
             "nfe": nfe, "estimate": est, **(guards[i] if guards else {})} for i, img in enumerate(index)]
    rec = {"solver": label, "kind": kind, "estimate": est, **common}
    for k in names:
        rec.update(_summary_stats(k, vals[k]))
    rec.update(sec_per_image=float(secs.mean()), nfe=nfe, n_images=int(len(secs)))
    return rows, rec


def first_sample_metrics(parts, names) -> dict | None:
    """{metric: (N,)} of the first of the K samples from a score solver's parts (`m1_<metric>`); None when
    some part predates them (a resumed run), so that no image is left out of the rows silently."""
    if any(f"m1_{k}" not in p for p in parts for k in names):
        return None
    return {k: np.concatenate([p[f"m1_{k}"] for p in parts]) for k in names}


def single_sample_label(name: str) -> str:
    """The solver label of the rows that score the first of K samples alone (`--samples K`): NAME:first."""
    return f"{name}:first"


def estimate_of(method: Method, samples: int) -> str:
    """The estimate a method's rows score (settings.estimate_name)."""
    return estimate_name(SolverConfig(**method.params) if method.kind == "score" else None, samples)


def _summary_stats(k: str, v: np.ndarray) -> dict:
    bad = int(np.isnan(v).sum())
    if bad:
        return {f"{k}_mean": None, f"{k}_std": None, f"{k}_undefined": bad}
    m, s = summarise(v)
    return {f"{k}_mean": m, f"{k}_std": s}


def _environment(parts) -> dict:
    """The environment the parts were computed in; {'mixed': [...]} if a resumed run changed it."""
    envs = sorted({str(p["env"]) if "env" in p else "{}" for p in parts})
    if len(envs) == 1:
        return json.loads(envs[0]) or {"recorded": False}
    return {"mixed": [json.loads(e) or {"recorded": False} for e in envs]}


def load_part(path: Path, idx: np.ndarray):
    """The saved part at `path` if it covers exactly the images `idx`, else None."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        part = {k: z[k] for k in z.files}
    return part if np.array_equal(part["idx"], idx) else None


def ood_records(parts, index) -> list | None:
    """The guard's records (`ood.verdict`) of a score solver's images from its parts (`ood_arrays`),
    labelled by image index; None when a part predates the guard."""
    if any("ood_rho" not in p for p in parts):
        return None
    tau = np.concatenate([p["ood_tau"] for p in parts])
    ratio = np.concatenate([p["ood_ratio"] for p in parts])
    rho = np.concatenate([p["ood_rho"] for p in parts])
    nu = np.concatenate([p["ood_nu"] for p in parts])
    default = ood.TYPICALITY_THRESHOLD          # parts written before per-model thresholds
    limit = np.concatenate([p["ood_threshold"] if "ood_threshold" in p else np.full(len(p["ood_rho"]), default)
                            for p in parts])
    out = []
    for i, img in enumerate(index):
        t = None if math.isnan(tau[i]) else float(tau[i])
        per = {} if t is None else {f"{s:g}": float(ratio[i, j]) for j, s in enumerate(ood.SIGMAS)}
        out.append(ood.verdict(t, per, float(rho[i]), float(nu[i]), f"image {int(img)}: ", float(limit[i])))
    return out


def write_outputs(out: Path, options, methods, batches, names, data_id, split, samples, figure_images, log,
                   vindex=None):
    """Merge the parts under out/parts into the outputs (evaluate's module docstring); return the summary
    records."""
    truth = [load_part(out / "parts" / "truth" / f"b{b:05d}.npz", idx) for b, idx in enumerate(batches)]
    gt = np.concatenate([t["x"] for t in truth])
    arrays = {"index": np.concatenate(batches), "ground_truth": gt,
              "naive": np.concatenate([t["naive"] for t in truth])}
    if "metal_mask" in truth[0]:
        arrays["metal_mask"] = np.concatenate([t["metal_mask"] for t in truth])
    rows, summary = [], []
    common = {"task": options.task, "setting": options.setting(), "data": data_id, "split": split,
              "metric_variant": MAIN_VARIANT}
    for m in methods:
        parts = [load_part(out / "parts" / m.name / f"b{b:05d}.npz", idx) for b, idx in enumerate(batches)]
        arrays[f"recon_{m.name}"] = np.concatenate([p["x"] for p in parts])
        if "std" in parts[0]:
            arrays[f"std_{m.name}"] = np.concatenate([p["std"] for p in parts])
        vals = {k: np.concatenate([p[f"m_{k}"] for p in parts]) for k in names}
        secs = np.concatenate([np.full(len(p["idx"]), float(p["seconds"]) / len(p["idx"])) for p in parts])
        nfe = int(parts[0]["nfe"])
        checks = ood_records(parts, arrays["index"]) if m.kind == "score" else None
        guards = [{"ood_tau": "" if c is None or c.typicality is None else round(c.typicality, 4),
                   "ood_verdict": "" if c is None else c.verdict}
                  for c in (checks or [None] * len(arrays["index"]))]
        new, rec = _scored(m.name, m.kind, estimate_of(m, samples), vals, secs, nfe, arrays["index"], names, common,
                           guards)
        rows += new
        rec.update(samples=samples if m.kind == "score" else 1, params=m.params, environment=_environment(parts))
        if checks is not None:
            line = ood.summary_line(checks, unit="image")
            taus = [c.typicality for c in checks if c.typicality is not None]
            rec["ood_check"] = {"summary": line, "n_flagged": sum(c.verdict != "ok" for c in checks),
                                "typicality_max": max(taus) if taus else None,
                                "flagged": [int(i) for i, c in zip(arrays["index"], checks) if c.verdict != "ok"]}
            log(f"[{m.name}] {line}")
        vol = volume_scores(vindex, arrays["index"], arrays[f"recon_{m.name}"], gt)
        if vol:
            rec["volume"] = vol
            planes = "/".join("n/a" if vol[f"psnr_{q}"] is None else f"{vol[f'psnr_{q}']:.2f}"
                              for q in ("axial", "coronal", "sagittal"))
            zg = "n/a" if vol["zgrad_rmse"] is None else f"{vol['zgrad_rmse']:.4g}"
            log(f"[{m.name}] {vol['n_volumes']} volume(s): PSNR axial/coronal/sagittal {planes} dB, "
                f"z-gradient RMSE {zg}")
        summary.append(rec)
        if m.kind == "score" and samples > 1:      # --samples K: the first sample alone, paired with the mean
            label, one = single_sample_label(m.name), first_sample_metrics(parts, names)
            if one is None:
                log(f"[{m.name}] {label} left out: some batches were computed before the first sample was scored "
                    "(remove their parts/ files to score it)")
                continue
            new, first = _scored(label, m.kind, estimate_of(m, 1), one, secs / samples, nfe // samples,
                                 arrays["index"], names, common)
            rows += new
            first.update(samples=1, of_samples=samples, params=m.params, environment=rec["environment"])
            summary.append(first)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["image", "solver", *names, "seconds", "nfe", "estimate", "ood_tau",
                                        "ood_verdict"], lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(out / "metrics.csv", buf.getvalue())
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic.savez(out / "reconstructions.npz", **arrays)
    comparison_figure(arrays, [m.name for m in methods], out / "comparison.png", options.task, figure_images)
    log(format_table(summary))
    return summary
