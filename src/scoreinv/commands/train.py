"""`scoreinv train`: train or resume a score model."""
from __future__ import annotations

import argparse

from .. import config as C


def register(sub):
    p = sub.add_parser(
        "train", help="train (or resume) a score model",
        description="Train an NCSN++ score model with continuous denoising score matching. Resumes automatically "
                    "from WORKDIR/checkpoints-meta/checkpoint.pt. Runs under `torchrun --nproc-per-node N` with "
                    "DistributedDataParallel (gloo on CPU, nccl on GPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="ct64",
                   help=f"preset name ({', '.join(C.preset_names())}) or a YAML file")
    p.add_argument("--workdir", required=True, help="work directory for checkpoints, samples, TensorBoard logs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable (e.g. --set model.nf=64 --set data.dataset=/data/ct)")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this global step (overrides train.max_steps)")
    p.add_argument("--data", default=None, help="dataset: phantoms | ellipses | brain | a folder of DICOM/NIfTI/HDF5/PNG/NumPy files")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="overrides train.device")
    p.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (see docs/training.md for its effect)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..train import train

    ov = list(args.overrides)
    if args.max_steps is not None:
        ov.append(f"train.max_steps={args.max_steps}")
    if args.data is not None:
        ov.append(f"data.dataset={args.data}")
    if args.device is not None:
        ov.append(f"train.device={args.device}")
    if args.seed is not None:
        ov.append(f"train.seed={args.seed}")
    if args.bf16:
        ov.append("train.bf16=true")
    cfg = C.load_config(args.config, ov)
    out = train(cfg, args.workdir, progress=not args.no_progress)
    print(f"done: step {out['step']}, loss {out['loss']:.3f}")
    return 0
