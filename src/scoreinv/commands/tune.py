"""`scoreinv tune`: Bayesian optimisation of a score solver's hyperparameters (scoreinv.tune)."""
from __future__ import annotations

import argparse

import torch

from ..data.base import derive_seed
from ..errors import ScoreinvError, check_choice, check_int
from ..evaluate import load_images
from ..sampling.settings import REFERENCE_KEYWORD, SOLVERS, noisy_level, parse_sets
from ..score import resolve_checkpoint
from ..tasks import build_problem
from ..tune import OBJECTIVES, base_settings, check_preset_output, search_space, tune
from .eval import (add_pick_argument, add_task_arguments, data_id, load_model, load_split, spread,
                   task_options_from_args)

HELP = """Tune a score solver's hyperparameters on VALIDATION images by Bayesian optimisation.

  scoreinv tune --checkpoint ct64 --task ct --views 23 --data phantoms --solver projection \\
      --trials 100 --steps 50 --bound snr=0,1.2 --storage sqlite:///tune/ct23.db --out tune/ct23-projection.yaml

then pass the preset to eval or reconstruct: --preset tune/ct23-projection.yaml.

Searches (optuna GPSampler: Gaussian-process Bayesian optimisation after --startup-trials random
points) over (snr, lambda) for projection / langevin_projection, (snr, r) for baseline /
langevin, (lambda, eta) for dds, zeta for dps, (eta, eta_b, noise_scale) for ddrm, (hqs_lambda, hqs_zeta,
noise_scale) for diffpir (noise_scale in [0.01, 1]), plus warm_sigma when the fixed settings warm-start (--set solver.warm_start=classical, or =tv: then also the TV
weight warm_weight in [1e-5, 0.1]);
snr in [0, 0.4] for CT and MAR, [0.2, 0.8] for MRI, lambda in [0, 1], r in [0.1, 20] (as the
paper; --bound replaces one). Objective: mean --metric over
--num-images images of --split (val by default; the test split is refused): the first ones, or with
--pick spread ones spread evenly over the split (a split by patient then puts every patient in it).

--trials is the total number of completed trials: every finished trial is stored in --storage,
so rerunning the command after an interruption resumes the study (earlier trials kept) and a
larger --trials extends it. Several workers can share one study: start the same command (same
--storage and --study-name, a different --worker number each) in several processes or on several
machines; they stop together when the study holds --trials completed trials. Across machines use
a PostgreSQL server: --storage postgresql+psycopg2://USER:PASSWORD@HOST:5432/DBNAME (needs the
psycopg2 package; SQLite files are for one machine). The best parameters so far are written
atomically to --out (YAML preset: solver, task, params) after every trial; a resumed study
replaces its own preset, any other existing file is refused unless --overwrite.

The fixed (unsearched) parameters follow the rule of reconstruct and eval, later ones winning:
the reference preset of the task and solver, the tuned preset (the shipped model's, e.g.
--checkpoint ct64, or --preset FILE; --preset reference skips it), --steps, then --set
solver.KEY=VALUE (or --set SOLVER.KEY=VALUE; KEY a solver parameter, 'lambda' for lam, VALUE a
YAML scalar). The closing hard projection is off for data noisier than the reference
acquisition (CT/MRI --noise > 0; MAR fewer photons than the paper's 2e7).
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tune", help="Bayesian optimisation of solver hyperparameters (optuna GP)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p, model_optional=False)
    p.add_argument("--split", default="val", help="images to tune on: val (default) or train; test is refused")
    p.add_argument("--solver", required=True, help="score solver: projection, langevin_projection, baseline, "
                   "langevin, dds, dps, ddrm or diffpir")
    p.add_argument("--trials", type=int, required=True, help="completed trials wanted in the study (total)")
    p.add_argument("--storage", required=True, help="optuna database URL: sqlite:///study.db, or "
                   "postgresql+psycopg2://user:password@host/db to share a study across machines")
    p.add_argument("--study-name", help="study name (default: TASK-SOLVER-SETTING, e.g. ct-projection-v23-n0-radon)")
    p.add_argument("--num-images", type=int, default=4, help="validation images in the objective (default 4)")
    add_pick_argument(p, "so every patient of a split by patient is in the objective")
    variants = ", ".join(m for m in OBJECTIVES if m not in ("ssim", "psnr"))
    p.add_argument("--metric", default="ssim", help="objective: ssim (default) or psnr, or a variant: "
                   f"{variants} (the *_hu ones: CT in the HU window [-1000, 1000]; the *_mar ones: MAR, "
                   "metal pixels left out)")
    p.add_argument("--steps", type=int, help="noise levels of the solver while tuning (default: the preset's; "
                   "stored in the preset)")
    p.add_argument("--preset", metavar="FILE", help="start from this preset's fixed parameters (e.g. steps, "
                   "corrector_steps); 'reference' for the reference preset (default: the shipped model's tuned one)")
    p.add_argument("--set", action="append", default=[], metavar="solver.KEY=VALUE",
                   help="fixed solver parameters during tuning (stored in the preset), e.g. solver.cg_iters=20")
    p.add_argument("--bound", action="append", default=[], metavar="PARAM=LOW,HIGH",
                   help="replace the search range of one parameter, e.g. --bound snr=0,1 (a solver run with "
                   "fewer noise levels than the paper's needs larger Langevin steps); repeatable")
    p.add_argument("--startup-trials", type=int, default=10, help="random trials before the GP takes over "
                   "(default 10)")
    p.add_argument("--worker", type=int, default=0, help="worker number of a parallel search: changes only the "
                   "sampler's random start points (default 0)")
    p.add_argument("--out", help="YAML preset with the best parameters (default: STUDY-NAME.yaml)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out that is not this study's "
                   "preset")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.split in ("test", "all"):
        raise ScoreinvError(f"--split {args.split}: tuning on test images would leak them into the parameters "
                            "that are then evaluated on them; tune on val (default) or train")
    check_choice("--split", args.split, ("val", "train"))
    check_choice("--solver", args.solver, SOLVERS)
    check_choice("--metric", args.metric, OBJECTIVES)
    check_int("--num-images", args.num_images)
    check_int("--trials", args.trials)
    check_int("--startup-trials", args.startup_trials)
    check_int("--worker", args.worker, lo=0)
    opts = task_options_from_args(args)
    base = base_settings(opts.task, args.solver, args.preset, args.steps, parse_sets(args.set),
                         noisy_level(opts.task, opts.noise, opts.phase), args.checkpoint)
    bounds = parse_bounds(args.bound)
    name = args.study_name or f"{opts.task}-{args.solver}-{opts.slug()}"
    out = args.out or f"{name}.yaml"
    reads = [args.preset] if args.preset not in (None, REFERENCE_KEYWORD) else []
    check_preset_output(out, name, args.overwrite, args.storage, inputs=reads + [resolve_checkpoint(args.checkpoint)])
    space = search_space(args.solver, opts.task, base.cfg, bounds)
    print(f"tune: searching {', '.join(space)}; the rest fixed: {base.describe()}", flush=True)
    model, fingerprint, size, device = load_model(args, needed=True)
    ds = load_split(args, args.split, size)
    if args.num_images > len(ds):
        raise ScoreinvError(f"--num-images {args.num_images}: the {args.split} split of {args.data} holds only "
                            f"{len(ds)} image(s)")
    if args.pick == "spread":
        ds = spread(ds, args.num_images, "--num-images")
    problem = build_problem(load_images(ds, range(args.num_images)), opts,
                            torch.Generator().manual_seed(derive_seed(args.seed, "problem-tune")))
    config = {"options": opts.to_dict(), "setting": opts.setting(), "data": data_id(args.data),
              "data_seed": args.data_seed, "split": args.split, "num_images": args.num_images, "model": fingerprint,
              "problem_seed": args.seed, **({"pick": "spread"} if args.pick == "spread" else {})}
    res = tune(model, problem, args.solver, trials=args.trials, storage=args.storage, study_name=name,
               config=config, metric=args.metric, base=base, seed=args.seed, worker=args.worker,
               batch_size=args.batch_size, device=device, startup_trials=args.startup_trials, out=out,
               bounds=bounds)
    print(f"best {args.metric} {res['best_value']:.4f} with {res['preset']} ({res['n_complete']} trials); "
          f"wrote {out}")
    return 0


def parse_bounds(items) -> dict[str, tuple[float, float]]:
    """--bound PARAM=LOW,HIGH items -> {PARAM: (LOW, HIGH)}; ranges are checked by tune.search_space."""
    out = {}
    for item in items:
        name, eq, rng = item.partition("=")
        parts = rng.split(",")
        try:
            if not eq or not name.strip() or len(parts) != 2:
                raise ValueError
            bound = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise ScoreinvError(f"--bound {item!r}: expected PARAM=LOW,HIGH, e.g. --bound snr=0,1") from None
        if name.strip() in out:
            raise ScoreinvError(f"--bound {name.strip()} given twice; give each parameter one range")
        out[name.strip()] = bound
    return out
