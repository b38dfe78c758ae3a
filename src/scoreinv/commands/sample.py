"""`scoreinv sample`: unconditional samples from a trained model as a PNG grid."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, check_new_output
from ..errors import ScoreinvError, check_int, check_range
from ..imaging import save_grid
from ..sampling.unconditional import sample_images
from ..score import load_score_model, resolve_checkpoint
from ..train import resolve_device

HELP = """Unconditional predictor-corrector sampling (reverse-diffusion predictor + Langevin corrector)
with the EMA weights of a checkpoint: 2 x STEPS network evaluations per image. Writes the grid
as a PNG and the raw samples (float32 (N, H, W), image scale [0, 1]) in a .npy beside it.

  scoreinv sample --checkpoint ct64 -n 16 --out samples.png --steps 500
  scoreinv sample --checkpoint runs/ct64 -n 4 --out grid.png --steps 50 --seed 1 --overwrite
"""


def register(sub):
    p = sub.add_parser("sample", help="draw unconditional samples into a PNG grid", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file, training work directory, or shipped model name")
    p.add_argument("-n", "--num", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--out", required=True, help="output PNG (a .npy beside it holds the raw samples)")
    p.add_argument("--steps", type=int, default=None, help="noise levels (default: the model's sample.steps)")
    p.add_argument("--snr", type=float, default=None, help="Langevin corrector signal-to-noise ratio "
                   "(default: the model's sample.snr)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out and its .npy")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    check_int("-n/--num", args.num)
    if args.steps is not None:
        check_int("--steps", args.steps)
    if args.snr is not None:
        check_range("--snr", args.snr, 0.0)
    if not str(args.out).lower().endswith(".png"):
        raise ScoreinvError(f"--out {args.out}: expected a .png file name")
    npy = Path(args.out).with_suffix(".npy")
    check_new_output(args.out, overwrite=args.overwrite, inputs=[resolve_checkpoint(args.checkpoint)],
                     side_files=[npy])
    device = resolve_device(args.device)
    model, cfg = load_score_model(args.checkpoint, device=device)
    steps = args.steps if args.steps is not None else cfg.sample.steps
    snr = args.snr if args.snr is not None else cfg.sample.snr
    g = torch.Generator().manual_seed(args.seed)
    x = sample_images(model, args.num, cfg.data.image_size, steps=steps, snr=snr, generator=g, device=device,
                      progress=True)
    save_grid(x, args.out)
    with atomic_path(npy, suffix=".npy") as tmp:
        np.save(tmp, x[:, 0].numpy())
    print(f"wrote {args.out} and {npy} ({args.num} samples, {2 * steps} network evaluations each)")
    return 0
