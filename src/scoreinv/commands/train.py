"""`scoreinv train`: train, resume, or continue a score model from given weights."""
from __future__ import annotations

import argparse

from .. import config as C
from ..errors import ScoreinvError, check_int, check_range
from ..train import train

HELP = """Train an NCSN++ score model with continuous denoising score matching. Resumes automatically
from WORKDIR/checkpoints-meta/checkpoint.pt. Runs under `torchrun --nproc-per-node N` with
DistributedDataParallel (gloo on CPU, nccl on GPU).

--init NAME|CHECKPOINT starts a new run from weights: a shipped model (ct64, mri64), a checkpoint
file or a work directory (online and EMA weights, and Adam's state when the file has it); the
network of --config must match. The run continues at the file's step, so the learning-rate
schedule and the EMA go on where they were; a fresh Adam (no state in the file) warms up again.
Repeating the command resumes the work directory. An exported model (python -m scoreinv.export)
is all a later run needs: a run can go on across working days from a few MB of committed weights.

Validation (held-out denoising error at fixed noise levels and a fast dds reconstruction PSNR)
runs every val.every steps: TensorBoard (WORKDIR/tb) and WORKDIR/validation.jsonl.
--precision, train.channels_last and train.compile set to auto take what `scoreinv bench train`
(or a first long run) measured on this machine (cached in ~/.cache/scoreinv/train_probe.json).

  scoreinv train --config ct64 --workdir runs/ct64                      # resumes automatically
  scoreinv train --config ct64 --workdir runs/ct64_more --init ct64 --max-steps 20000
  scoreinv train --config mri64 --workdir runs/ft --init mri64 --data /data/brats --max-minutes 60
  scoreinv train --config mri64 --workdir runs/mine --data /data/brats --set model.nf=32
  scoreinv train --config ct64 --workdir runs/ct64 --precision fp32 --set val.every=1000
  torchrun --nproc-per-node 2 -m scoreinv.cli train --config ct64 --workdir runs/ddp
"""


def register(sub):
    p = sub.add_parser("train", help="train (or resume, or continue from weights) a score model", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ct64",
                   help=f"preset name ({', '.join(C.preset_names())}) or a YAML file (default ct64)")
    p.add_argument("--workdir", required=True, help="work directory for checkpoints, samples, TensorBoard logs")
    p.add_argument("--init", default=None, metavar="NAME|CHECKPOINT",
                   help="start a new run from these weights: shipped model name, checkpoint file or work directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable (e.g. --set model.nf=64 --set data.dataset=/data/ct)")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this global step (overrides train.max_steps)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="also stop after this many minutes of this call (overrides train.max_minutes; 0: no limit)")
    p.add_argument("--data", default=None,
                   help="dataset: phantoms | ellipses | brain | a folder of DICOM/NIfTI/HDF5/PNG/NumPy files")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="overrides train.device")
    p.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="float32, bfloat16 autocast, or auto: the faster one measured on this machine "
                        "(overrides train.precision)")
    p.add_argument("--bf16", action="store_true", help="same as --precision bf16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    ov = list(args.overrides)
    if args.max_steps is not None:
        ov.append(f"train.max_steps={check_int('--max-steps', args.max_steps)}")
    if args.max_minutes is not None:
        ov.append(f"train.max_minutes={check_range('--max-minutes', args.max_minutes, 0.0)}")
    if args.data is not None:
        ov.append(f"data.dataset={args.data}")
    if args.device is not None:
        ov.append(f"train.device={args.device}")
    if args.seed is not None:
        ov.append(f"train.seed={check_int('--seed', args.seed, lo=0)}")
    if args.bf16 and args.precision not in (None, "bf16"):
        raise ScoreinvError(f"--bf16 contradicts --precision {args.precision}; give one of them")
    if args.precision is not None or args.bf16:
        ov.append(f"train.precision={args.precision or 'bf16'}")
    cfg = C.load_config(args.config, ov)
    out = train(cfg, args.workdir, progress=not args.no_progress, init=args.init)
    print(f"done: step {out['step']}, loss {out['loss']:.3f}")
    return 0
