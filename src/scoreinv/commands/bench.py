"""`scoreinv bench [train|physics|sampler]`: benchmarks printing `key: value` lines."""
from __future__ import annotations

import argparse

PARTS = ("train", "physics", "sampler")


def register(sub):
    p = sub.add_parser(
        "bench", help="run benchmarks (train, physics, sampler; all with no argument)",
        description="Benchmarks measured side by side in one run, printed as `key: value` lines. "
                    "train: training images/s against the measured float32 matmul peak (and bf16 autocast); "
                    "physics: CT projector and FBP against ASTRA and scikit-image on a 256x256 Shepp-Logan "
                    "phantom, 180 views; sampler: time outside the network in the projection solver "
                    "(64x64, batch 8, CT and MRI).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("part", nargs="?", choices=PARTS, help="which benchmark; all when omitted")
    p.add_argument("--preset", default="ct64", help="model preset for `train`")
    p.add_argument("--batch-size", type=int, default=None, help="batch size for `train` (default: the preset's)")
    p.add_argument("--checkpoint", default=None, help="model for `sampler` (default: an untrained ct64 network)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..bench import emit as _print

    parts = [args.part] if args.part else list(PARTS)
    for part in parts:
        if part == "train":
            from ..bench.train import run as bench_train
            _print(part, bench_train(args.preset, args.batch_size))
        elif part == "physics":
            from ..bench.physics import run as bench_physics
            res = bench_physics()
            if res.get("astra_available") == 0.0:
                print("astra: NOT AVAILABLE (the `astra` module could not be imported); no ASTRA numbers reported")
            _print(part, res)
        else:
            from ..bench.sampler import run as bench_sampler
            _print(part, bench_sampler(checkpoint=args.checkpoint))
    return 0
