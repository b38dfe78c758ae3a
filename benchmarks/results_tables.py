"""Regenerate the results tables of docs/results.md (issue: evaluation against classical baselines).

    python benchmarks/results_tables.py --part tune --task ct|mri|mar     # presets, first
    python benchmarks/results_tables.py --part ct|ellipses|mri|mar|nfe|paper [--num-images 16] [--out runs/tables]
    python benchmarks/results_tables.py --collect

`--part tune` runs `scoreinv tune` (optuna GP, SSIM on 4 validation images, 24 trials) for every
score solver of one task at the table's step budget (TUNE_SETTING) and writes the presets to
OUT/presets/TASK-SOLVER.yaml; the table parts use them when present. The solvers run 50 noise
levels here, not the paper's 700-1000, so the snr range is widened to [0, 1.2] (SNR_BOUND) for
every solver with a corrector: with the paper's range a 50-level Langevin chain falls behind the
noise schedule and never denoises (3.8 dB at snr 0.246 against 41.4 dB at snr 0.6, CT 23 views).
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
# the solvers of issue 15 with the shipped model's presets (tuned after the factor study,
# docs/solver_factors.md): ddrm needs the P(Λ)T decomposition, so it runs on MRI only here (the CT
# tables use the Radon operator)
NEW = {"ct": ["diffpir"], "ellipses": ["diffpir"], "mri": ["ddrm", "diffpir"], "mar": []}
STEPS = {"baseline": 50, "projection": 50, "langevin": 50, "langevin_projection": 50, "dds": 50,
         "ddrm": 50, "diffpir": 50}
CORRECTORS = {"langevin": 2, "langevin_projection": 2}
TUNE_SETTING = {"ct": ["--views", "10", "--data", "phantoms", "--checkpoint", "ct64"],
                "mri": ["--acceleration", "8", "--mask", "random", "--data", "brain", "--checkpoint", "mri64"],
                "mar": ["--data", "phantoms", "--checkpoint", "ct64"]}
SNR_BOUND = "snr=0,1.2"
TUNE_TRIALS = 24


def run_tune(out: Path, task: str, checkpoints: dict) -> str:
    """Tune every score solver of `task` (scoreinv tune, the command itself); presets in OUT/presets."""
    from scoreinv.cli import main as cli
    from scoreinv.sampling.solvers import solver_config
    from scoreinv.tune import search_space
    args = list(TUNE_SETTING[task])
    i = args.index("--checkpoint") + 1
    args[i] = checkpoints.get(args[i], args[i])
    lines = []
    for solver in SCORE:
        preset = out / "presets" / f"{task}-{solver}.yaml"
        # snr is searched where the solver runs a corrector (not dds; not the predictor-only MAR projection)
        searched = search_space(solver, task, solver_config(solver, task))
        extra = ["--bound", SNR_BOUND] if "snr" in searched else []
        extra += [f"--set=solver.corrector_steps={CORRECTORS[solver]}"] if solver in CORRECTORS else []
        rc = cli(["tune", "--task", task, *args, "--solver", solver, "--steps", str(STEPS[solver]),
                  "--trials", str(TUNE_TRIALS), "--startup-trials", "8", "--num-images", "4",
                  "--storage", f"sqlite:///{out / 'presets' / 'studies.db'}", "--study-name", f"{task}-{solver}",
                  "--out", str(preset), *extra])
        if rc != 0:
            raise SystemExit(f"tune {task} {solver} failed (exit {rc})")
        lines.append(f"{task} {solver}: {preset.read_text().splitlines()[1:]}")
    return "\n".join(lines)


def load_presets(out: Path, task: str) -> list:
    from scoreinv.sampling.settings import load_preset
    return [load_preset(f, task=task) for f in sorted((out / "presets").glob(f"{task}-*.yaml"))]


def settings(part: str):
    if part in ("ct", "ellipses"):
        data = "phantoms" if part == "ct" else "ellipses"
        noises = (0.0, CT_NOISE)
        for noise in noises:
            for views in (23, 10, 6):
                yield dict(task="ct", views=views, noise=noise), data, "ct64", ["fbp", "tv"]
    elif part == "mri":
        for noise in (0.0, MRI_NOISE):
            for acc in (4.0, 8.0, 24.0):
                # 24x of 64 columns leaves 2.7 lines: too few for a 1-D mask with a centre band, so a 2-D
                # variable-density mask (the same sample count) stands in
                mask = "variable_density" if acc > 8 else "random"
                yield dict(task="mri", acceleration=acc, mask=mask, noise=noise), "brain", "mri64", \
                    ["zero_filled", "cs_tv"]
    elif part == "mar":   # Poisson noise at the paper's 2e7 photons (docs/design.md §3.3): final projection on
        for views in (None, 23):
            yield dict(task="mar", views=views), "phantoms", "ct64", ["li", "nmar"]


HEADER = "| setting | method | PSNR (dB) | SSIM | s/image | NFE | images |\n|---|---|---|---|---|---|---|\n"


def _row(r: dict) -> str:
    return (f"| {r['setting']} | {r['solver']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | "
            f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {r['sec_per_image']:.2f} | {r['nfe']} | {r['n_images']} |")


def run_part(part: str, out: Path, n: int, checkpoints: dict, only: str | None = None) -> str:
    from scoreinv.data import build_dataset
    from scoreinv.evaluate import evaluate, model_fingerprint, resolve_methods
    from scoreinv.sampling.settings import noisy_level
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options

    lines = [HEADER.rstrip()]
    models = {}
    for opts, data, model_name, classical in settings(part):
        spec = checkpoints.get(model_name, model_name)
        if spec not in models:
            models[spec] = load_score_model(spec)
        model, cfg = models[spec]
        size = cfg.data.image_size
        o = task_options(**opts)
        if only is not None and o.slug() != only:
            continue
        score = SCORE + NEW[part]
        sets = {name: {"steps": STEPS[name], **({"corrector_steps": CORRECTORS[name]} if name in CORRECTORS else {})}
                for name in score}
        presets = load_presets(out, o.task)
        for pr in presets:       # the table fixes the budget; a preset brings the tuned parameters
            sets[pr.solver] = {k: v for k, v in sets[pr.solver].items() if k not in pr.params}
        # solvers without a preset of OUT/presets take the shipped model's (checkpoint=model_name)
        methods = resolve_methods(classical + score, o.task, sets=sets, presets=presets,
                                  noisy=noisy_level(o.task, o.noise), checkpoint=model_name)
        d = out / part / o.slug()
        summary = evaluate(d, o, build_dataset(data, "test", size), methods, n, data_id=data, split="test",
                           model=model, model_id=model_fingerprint(model), batch_size=n,
                           val_dataset=lambda: build_dataset(data, "val", size), n_val=4, log=print)
        for r in summary:
            lines.append(_row(r))
    return "\n".join(lines)


def run_nfe(out: Path, n: int, checkpoints: dict) -> str:
    """PSNR/SSIM against NFE (CT 23 views, MRI 8x), noise-free: projection and dds with the reference
    presets (untuned), diffpir and (MRI) ddrm with the shipped model's presets at each budget."""
    from scoreinv.data import build_dataset
    from scoreinv.evaluate import evaluate, model_fingerprint, resolve_methods
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options

    lines = ["| setting | solver | levels | NFE | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|---|---|---|"]
    cases = [(dict(task="ct", views=23), "phantoms", "ct64"),
             (dict(task="mri", acceleration=8.0, mask="random"), "brain", "mri64")]
    grid = {"projection": (25, 100, 1000), "dds": (10, 25, 50, 100), "diffpir": (10, 25, 50, 100),
            "ddrm": (10, 25, 50, 100)}
    shipped = {"diffpir", "ddrm"}
    for opts, data, model_name in cases:
        model, cfg = load_score_model(checkpoints.get(model_name, model_name))
        o = task_options(**opts)
        for solver, levels in grid.items():
            if solver in shipped and solver not in NEW[o.task]:
                continue
            for steps in levels:
                methods = resolve_methods([solver], o.task, steps=steps,
                                          checkpoint=model_name if solver in shipped else None)
                d = out / "nfe" / o.slug() / f"{solver}_{steps}"
                r = evaluate(d, o, build_dataset(data, "test", cfg.data.image_size), methods, n, data_id=data,
                             split="test", model=model, model_id=model_fingerprint(model), batch_size=n, log=print)[0]
                lines.append(f"| {r['setting']} | {solver} | {steps} | {r['nfe']} | {r['psnr_mean']:.2f} ± "
                             f"{r['psnr_std']:.2f} | {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | "
                             f"{r['sec_per_image']:.2f} |")
    return "\n".join(lines)


def run_paper(out: Path, n: int, checkpoints: dict, only: str | None = None) -> str:
    """The paper's four solvers at the paper's budget and hyperparameters (docs/design.md §2.10, untuned:
    1000 levels for projection and baseline, 700 levels x 3 correctors for the Langevin ones),
    CT 10 views and MRI 8x, noise-free."""
    from scoreinv.data import build_dataset
    from scoreinv.evaluate import evaluate, model_fingerprint, resolve_methods
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options

    lines = [HEADER.rstrip()]
    cases = [(dict(task="ct", views=10), "phantoms", "ct64"),
             (dict(task="mri", acceleration=8.0, mask="random"), "brain", "mri64")]
    for opts, data, model_name in cases:
        o = task_options(**opts)
        if only is not None and o.slug() != only:
            continue
        model, cfg = load_score_model(checkpoints.get(model_name, model_name))
        methods = resolve_methods(["baseline", "langevin", "langevin_projection", "projection"], o.task)
        for r in evaluate(out / "paper" / o.slug(), o, build_dataset(data, "test", cfg.data.image_size), methods, n,
                          data_id=data, split="test", model=model, model_id=model_fingerprint(model), batch_size=n,
                          log=print):
            lines.append(_row(r))
    return "\n".join(lines)


def collect(out: Path) -> str:
    """Markdown tables from every finished setting's summary.json under OUT (finished parts and
    partial ones alike), one table per part, and the tuned presets."""
    import yaml

    from scoreinv.tasks import task_options
    blocks = []
    rows = []
    for f in sorted((out / "presets").glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in d["params"].items())
        rows.append(f"| {d['task']} | {d['solver']} | {params} | {d.get('ssim', float('nan')):.3f} | "
                    f"{d.get('trials')} | {d.get('setting')} |")
    if rows:
        blocks.append("### Tuned presets (optuna GP, mean SSIM on 4 validation images)\n\n"
                      "| task | solver | parameters | val SSIM | trials | tuned at |\n|---|---|---|---|---|---|\n"
                      + "\n".join(rows))
    titles = {"ct": "Sparse-view CT, textured phantoms", "ellipses": "Sparse-view CT, plain ellipse phantoms",
              "mri": "MRI, held-out brain slices", "mar": "Metal artifact reduction, simulated titanium implants",
              "paper": "The paper's budget and hyperparameters (untuned presets)"}
    for part in ("ct", "ellipses", "mri", "mar", "paper"):
        order = [task_options(**opts).slug() for opts, *_ in settings(part)]
        rank = lambda f: (order.index(f.parent.name) if f.parent.name in order else len(order), f.parent.name)  # noqa: E731
        rows = [_row(r) for f in sorted((out / part).glob("*/summary.json"), key=rank)
                for r in json.loads(f.read_text())]
        if rows:
            blocks.append(f"### {titles[part]}\n\n" + HEADER + "\n".join(rows))
    rows = sorted((r["setting"], r["solver"], r["nfe"], _row(r)) for f in (out / "nfe").glob("*/*/summary.json")
                  for r in json.loads(f.read_text())[:1])
    if rows:
        blocks.append("### PSNR against NFE (projection, dds: reference presets, untuned; ddrm, diffpir: the "
                      "shipped presets)\n\n" + HEADER + "\n".join(r[-1] for r in rows))
    return "\n\n".join(blocks)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["tune", "ct", "ellipses", "mri", "mar", "nfe", "paper"])
    p.add_argument("--task", choices=sorted(TUNE_SETTING), help="task to tune (--part tune)")
    p.add_argument("--collect", action="store_true", help="print the tables of every finished setting under OUT")
    p.add_argument("--setting", help="run only the setting with this slug (e.g. R24-variable_density-n0.05), "
                   "to spread one part over several processes")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--nfe-images", type=int, default=8, help="images for the NFE study and the paper-budget "
                   "part (2000-NFE runs)")
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
    if a.part == "tune":
        if a.task is None:
            p.error("--part tune needs --task")
        print(run_tune(out, a.task, ck))
        return 0
    if a.setting is not None:
        from scoreinv.tasks import task_options
        slugs = [task_options(**o).slug() for o, *_ in settings(a.part)] if a.part != "paper" else \
            ["v10-n0-radon", "R8-random-n0"]
        if a.setting not in slugs:
            p.error(f"--setting {a.setting}: not a setting of --part {a.part}; expected one of {', '.join(slugs)}")
    if a.part == "paper":
        table = run_paper(out, a.nfe_images, ck, a.setting)
    elif a.part == "nfe":
        table = run_nfe(out, a.nfe_images, ck)
    else:
        table = run_part(a.part, out, a.num_images, ck, a.setting)
    from scoreinv.atomic import write_text
    md = out / (f"{a.part}.md" if a.setting is None else f"{a.part}-{a.setting}.md")
    write_text(md, table + "\n")
    print(table)
    print(json.dumps({"written": str(md)}))
    return 0


if __name__ == "__main__":
    from scoreinv.errors import run_script
    run_script(main, "results_tables")
