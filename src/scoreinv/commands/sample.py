"""`scoreinv sample`: unconditional samples from a trained model as a PNG grid."""
from __future__ import annotations

import argparse


def register(sub):
    p = sub.add_parser(
        "sample", help="draw unconditional samples into a PNG grid",
        description="Unconditional predictor-corrector sampling (reverse-diffusion predictor + Langevin corrector) "
                    "with the EMA weights of a checkpoint. 2 x STEPS network evaluations per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file, training work directory, or shipped model name")
    p.add_argument("-n", "--num", type=int, default=16, help="number of samples")
    p.add_argument("--out", required=True, help="output PNG (a .npy beside it holds the raw samples)")
    p.add_argument("--steps", type=int, default=None, help="noise levels (default: the model's sample.steps)")
    p.add_argument("--snr", type=float, default=None, help="Langevin corrector signal-to-noise ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from ..atomic import atomic_path
    from ..errors import ScoreinvError, check_range
    from ..imaging import save_grid
    from ..sampling.unconditional import sample_images
    from ..score import load_score_model
    from ..train import resolve_device

    if args.num <= 0:
        raise ScoreinvError(f"-n must be positive, got {args.num}")
    device = resolve_device(args.device)
    model, cfg = load_score_model(args.checkpoint, device=device)
    steps = args.steps or cfg.sample.steps
    check_range("--steps", steps, 1)
    snr = check_range("--snr", args.snr if args.snr is not None else cfg.sample.snr, 0.0)
    g = torch.Generator().manual_seed(args.seed)
    x = sample_images(model, args.num, cfg.data.image_size, steps=steps, snr=snr, generator=g, device=device,
                      progress=True)
    save_grid(x, args.out)
    with atomic_path(Path(args.out).with_suffix(".npy"), suffix=".npy") as tmp:
        np.save(tmp, x.numpy())
    print(f"wrote {args.out} ({args.num} samples, {2 * steps} network evaluations each)")
    return 0
