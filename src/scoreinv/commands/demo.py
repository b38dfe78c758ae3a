"""`scoreinv demo`: the main job on the bundled models and data."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..atomic import check_new_output
from ..demo import cases, run_demo
from ..errors import ScoreinvError, check_choice, check_int
from ..sampling.settings import SOLVERS


def register(sub):
    p = sub.add_parser(
        "demo", help="reconstruct built-in examples with the shipped models beside classical baselines",
        description="Sparse-view CT (10 views) on held-out phantoms, on pydicom's real CT slice and on a real chest "
                    "CT slice at 256x256 (a patient the patch prior never saw; fetched from the package registries "
                    "on first use), MRI 8x on held-out brain slices, MRI 4x on a real brain slice at 256x256 (a "
                    "patient the MRI patch prior never saw) and metal-artifact reduction on simulated "
                    "implants, with the shipped models ct64, ct256, mri64 and mri256, against FBP/TV, "
                    "zero-filled/CS-TV and LI. Each score solver's row is followed by its out-of-distribution check. Writes OUT/demo.png, "
                    "OUT/metrics.md, OUT/metrics.json and one `scoreinv eval` directory per case; prints the table. "
                    "A few minutes on a laptop CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output directory (resumes a killed demo)")
    p.add_argument("--solver", default=None, help="score solver of every case (default: each case's tuned one: dds, "
                   "diffpir for the real-CT patch prior, ddrm for the real-MRI one; projection is the paper's)")
    p.add_argument("--steps", type=int, default=None, help="noise levels for the score solver (default: the tuned preset "
                   "of its shipped model, e.g. 50 for dds)")
    p.add_argument("--num-images", type=int, default=4, help="held-out images per case")
    p.add_argument("--ct-checkpoint", default="ct64", help="CT model (shipped name, file or work dir)")
    p.add_argument("--ct-real-checkpoint", default="ct256", help="real-CT patch prior (shipped name, file or work dir)")
    p.add_argument("--mri-checkpoint", default="mri64", help="MRI model (shipped name, file or work dir)")
    p.add_argument("--mri-real-checkpoint", default="mri256", help="real-MRI patch prior (shipped name, file or "
                   "work dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an OUT directory holding an earlier demo of another configuration")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    check_int("--num-images", args.num_images)
    if args.steps is not None:
        check_int("--steps", args.steps)
    if args.solver is not None:
        check_choice("--solver", args.solver, SOLVERS)
    out = Path(args.out)
    check_new_output(out / "metrics.json", overwrite=True, flag="--out")     # a folder we can write in
    if out.is_dir():
        ours = {c.name for c in cases(1)} | {"demo.png", "metrics.md", "metrics.json"}
        foreign = [p.name for p in out.iterdir()
                   if p.name not in ours and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
        if foreign:
            raise ScoreinvError(f"--out {out}: holds files the demo did not write ({', '.join(foreign[:3])}); "
                                "give a new folder or an earlier demo's")
        if args.overwrite:
            shutil.rmtree(out)
    run_demo(out, solver=args.solver, steps=args.steps, num_images=args.num_images,
             checkpoints={"ct64": args.ct_checkpoint, "ct256": args.ct_real_checkpoint,
                          "mri64": args.mri_checkpoint, "mri256": args.mri_real_checkpoint}, seed=args.seed)
    return 0
