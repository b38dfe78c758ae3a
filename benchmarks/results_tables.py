"""Regenerate the results tables of docs/results.md (issue: evaluation against classical baselines).

    python benchmarks/results_tables.py --part ct|ellipses|mri|mar|nfe [--num-images 16] [--out runs/tables]

Each setting is one `scoreinv.evaluate.evaluate` run (the same code as `scoreinv eval`), written to
OUT/<part>/<setting>/ (resumable); the part's markdown table goes to OUT/<part>.md, and
`--collect` merges all parts into docs/results.md. Score solvers run at reduced step counts on a
CPU (stated in the table: the NFE column); TV/CS weights are chosen on validation images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CT_NOISE = 1e5        # incident photons per ray (Poisson)
MRI_NOISE = 0.05      # complex Gaussian std relative to the RMS of the sampled k-space
SCORE = ["baseline", "langevin", "langevin_projection", "projection", "dds"]
STEPS = {"baseline": 50, "projection": 50, "langevin": 50, "langevin_projection": 50, "dds": 50}
CORRECTORS = {"langevin": 2, "langevin_projection": 2}


def settings(part: str):
    if part in ("ct", "ellipses"):
        data = "phantoms" if part == "ct" else "ellipses"
        noises = (0.0, CT_NOISE) if part == "ct" else (0.0,)
        for noise in noises:
            for views in (23, 10, 6):
                yield dict(task="ct", views=views, noise=noise), data, "ct64", ["fbp", "tv"]
    elif part == "mri":
        for noise in (0.0, MRI_NOISE):
            for acc in (4.0, 8.0, 24.0):
                yield dict(task="mri", acceleration=acc, mask="random", noise=noise), "brain", "mri64", \
                    ["zero_filled", "cs_tv"]
    elif part == "mar":
        yield dict(task="mar"), "phantoms", "ct64", ["li", "nmar"]


def run_part(part: str, out: Path, n: int, checkpoints: dict) -> str:
    from scoreinv.data import build_dataset
    from scoreinv.evaluate import evaluate, model_fingerprint, resolve_methods
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options

    lines = ["| setting | method | PSNR (dB) | SSIM | s/image | NFE |", "|---|---|---|---|---|---|"]
    models = {}
    for opts, data, model_name, classical in settings(part):
        spec = checkpoints.get(model_name, model_name)
        if spec not in models:
            models[spec] = load_score_model(spec)
        model, cfg = models[spec]
        size = cfg.data.image_size
        o = task_options(**opts)
        sets = {name: {"steps": STEPS[name], **({"corrector_steps": CORRECTORS[name]} if name in CORRECTORS else {})}
                for name in SCORE}
        methods = resolve_methods(classical + SCORE, o.task, sets=sets, noise=o.noise)
        d = out / part / o.slug()
        summary = evaluate(d, o, build_dataset(data, "test", size), methods, n, data_id=data, split="test",
                           model=model, model_id=model_fingerprint(model), batch_size=n,
                           val_dataset=lambda: build_dataset(data, "val", size), n_val=4, log=print)
        for r in summary:
            lines.append(f"| {r['setting']} | {r['solver']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | "
                         f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {r['sec_per_image']:.2f} | {r['nfe']} |")
    return "\n".join(lines)


def run_nfe(out: Path, n: int, checkpoints: dict) -> str:
    """PSNR/SSIM against NFE for projection and dds (CT 23 views, MRI 8x), noise-free."""
    from scoreinv.data import build_dataset
    from scoreinv.evaluate import evaluate, model_fingerprint, resolve_methods
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options

    lines = ["| setting | solver | levels | NFE | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|---|---|---|"]
    cases = [(dict(task="ct", views=23), "phantoms", "ct64"),
             (dict(task="mri", acceleration=8.0, mask="random"), "brain", "mri64")]
    grid = {"projection": (25, 100, 1000), "dds": (10, 25, 50, 100)}
    for opts, data, model_name in cases:
        model, cfg = load_score_model(checkpoints.get(model_name, model_name))
        o = task_options(**opts)
        for solver, levels in grid.items():
            for steps in levels:
                methods = resolve_methods([solver], o.task, steps=steps)
                d = out / "nfe" / o.slug() / f"{solver}_{steps}"
                r = evaluate(d, o, build_dataset(data, "test", cfg.data.image_size), methods, n, data_id=data,
                             split="test", model=model, model_id=model_fingerprint(model), batch_size=n, log=print)[0]
                lines.append(f"| {r['setting']} | {solver} | {steps} | {r['nfe']} | {r['psnr_mean']:.2f} ± "
                             f"{r['psnr_std']:.2f} | {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | "
                             f"{r['sec_per_image']:.2f} |")
    return "\n".join(lines)


def collect(out: Path) -> str:
    """Markdown tables from every finished setting's summary.json under OUT (finished parts and
    partial ones alike), one table per part."""
    blocks = []
    for part in ("ct", "ellipses", "mri", "mar"):
        rows = []
        for f in sorted((out / part).glob("*/summary.json")):
            for r in json.loads(f.read_text()):
                rows.append(f"| {r['setting']} | {r['solver']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | "
                            f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {r['sec_per_image']:.2f} | {r['nfe']} | "
                            f"{r['n_images']} |")
        if rows:
            blocks.append(f"### {part}\n\n| setting | method | PSNR (dB) | SSIM | s/image | NFE | images |\n"
                          "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    rows = []
    for f in sorted((out / "nfe").glob("*/*/summary.json")):
        r = json.loads(f.read_text())[0]
        rows.append((r["setting"], r["solver"], r["nfe"], f"| {r['setting']} | {r['solver']} | {r['nfe']} | "
                     f"{r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | "
                     f"{r['sec_per_image']:.2f} | {r['n_images']} |"))
    if rows:
        rows.sort()
        blocks.append("### PSNR against NFE\n\n| setting | solver | NFE | PSNR (dB) | SSIM | s/image | images |\n"
                      "|---|---|---|---|---|---|---|\n" + "\n".join(r[-1] for r in rows))
    return "\n\n".join(blocks)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["ct", "ellipses", "mri", "mar", "nfe"])
    p.add_argument("--collect", action="store_true", help="print the tables of every finished setting under OUT")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--nfe-images", type=int, default=8, help="images for the NFE study (2000-NFE runs)")
    p.add_argument("--out", default="runs/tables")
    p.add_argument("--ct-checkpoint", default="ct64")
    p.add_argument("--mri-checkpoint", default="mri64")
    a = p.parse_args()
    out = Path(a.out)
    if a.collect:
        print(collect(out))
        return 0
    if a.part is None:
        p.error("--part or --collect is required")
    ck = {"ct64": a.ct_checkpoint, "mri64": a.mri_checkpoint}
    table = run_nfe(out, a.nfe_images, ck) if a.part == "nfe" else run_part(a.part, out, a.num_images, ck)
    from scoreinv.atomic import write_text
    write_text(out / f"{a.part}.md", table + "\n")
    print(table)
    print(json.dumps({"written": str(out / f"{a.part}.md")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
