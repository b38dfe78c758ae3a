"""`scoreinv bench [train|physics|sampler|peers|volume]`: benchmarks printing `key: value` lines."""
from __future__ import annotations

import argparse

import torch

from ..bench import emit
from ..bench import peers as bench_peers
from ..bench.physics import run as bench_physics
from ..bench.sampler import run as bench_sampler
from ..bench.train import check_groups
from ..bench.train import run as bench_train
from ..bench.volume import DATA as VOLUME_DATA
from ..bench.volume import run as bench_volume
from ..errors import check_int, check_range

PARTS = ("train", "physics", "sampler")        # run when no part is named
OPTIONAL_PARTS = ("peers", "volume")          # run only when named (peers: its own environment; volume: long)

HELP = """Benchmarks measured side by side in one run, printed as `key: value` lines under `# bench PART`.

- train: training images/s of each speed variant (fp32/bf16 autocast, channels-last, torch.compile,
  Adam implementation, data workers, batch size) against the float32 and bf16 matmul peaks measured
  in the same run, and the chosen variant, cached for `scoreinv train` (unless --no-save);
- physics: CT projector and FBP against ASTRA and scikit-image on a --size x --size Shepp-Logan
  phantom, 180 parallel-beam views (default 256);
- sampler: seconds per image and the time outside the network in a solver (--solver, default
  projection; the checkpoint's shipped preset) at the model's image size, --batch-size images,
  --steps noise levels, CT (23 views, --ct-operator) and MRI 8x (--tasks);
- peers (only when named; needs deepinv: `make bench-peers` installs it in .venv-peers and runs
  this): deepinv 0.5's DiffPIR, DDRM and DPS with our shipped prior as their denoiser, on our test
  images and our exact measurements (the hashes printed), against our solvers with the shipped
  presets at the same NFE: PSNR, SSIM, NFE and seconds per image on CT 10 views (phantoms, ct64)
  and MRI 8x random columns (brain, mri64), --images test images, noise-free; the peers'
  hyperparameters chosen on 3 validation images over a small grid (scoreinv.bench.peers);
- volume (only when named): seconds (total and per slice) and peak resident memory of reconstructing
  one CT volume of --slices slices (default 61) of --image-size pixels (default the model's, 256 for
  ct256) at --views views (23) with --checkpoint (default ct256), --solver (default diffpir) at the
  preset's NFE or --steps, once per coupling in --couplings (default none,ztv), through the machinery
  of `scoreinv reconstruct`. Data: the lung2 test volume of ct-real when fetched, else a phantom3d
  volume (--data; the `data:` line says which). Memory: ru_maxrss of a fresh process per coupling
  (--in-process: this process, faster, earlier work included) (scoreinv.bench.volume).

  scoreinv bench
  scoreinv bench train --seconds 3
  scoreinv bench physics --size 128
  scoreinv bench sampler --checkpoint ct64 --steps 10
  scoreinv bench sampler --checkpoint ct256 --solver diffpir --steps 50 --batch-size 1 --tasks ct
  scoreinv bench peers --images 2 --nfe 50 --settings mri
  scoreinv bench volume --checkpoint ct64 --slices 8 --steps 10 --data phantom3d
"""


def register(sub):
    p = sub.add_parser("bench", help="run benchmarks (train, physics, sampler: all with no argument; peers)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", choices=PARTS + OPTIONAL_PARTS,
                   help="which benchmark; train, physics and sampler when omitted")
    p.add_argument("--preset", default="ct64", help="train: model preset (default ct64)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="train: batch size (default: the preset's); sampler: images per batch (default 8); "
                        "volume: images per network call (default 8)")
    p.add_argument("--checkpoint", default=None, help="sampler: model (default: an untrained ct64 network); "
                   "volume: model (default ct256)")
    p.add_argument("--seconds", type=float, default=3.0, help="train: seconds per variant (default 3)")
    p.add_argument("--groups", default="layouts,compile,adam,data,batch",
                   help="train: variant groups, comma-separated (layouts, compile, adam, data, batch; default all)")
    p.add_argument("--threads", type=int, default=None, help="train, peers, volume: torch threads (default: "
                   "torch's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="train, volume: device (default auto)")
    p.add_argument("--no-save", action="store_true", help="train: do not write the per-machine speed choice "
                   "(~/.cache/scoreinv/train_probe.json) that `scoreinv train` reads")
    p.add_argument("--size", type=int, default=256, help="physics: image size N of the N x N phantom (default 256)")
    p.add_argument("--steps", type=int, default=None, help="sampler: noise levels (default 20); volume: noise "
                   "levels (default: the solver preset's)")
    p.add_argument("--solver", default=None, help="sampler: solver (default projection); volume: solver (default "
                   "diffpir)")
    p.add_argument("--ct-operator", default="fourier", help="sampler: CT operator, fourier or radon (default "
                   "fourier)")
    p.add_argument("--slices", type=int, default=61, help="volume: slices of the volume (default 61, all of lung2)")
    p.add_argument("--image-size", type=int, default=None, help="volume: slices are N x N (default: the model's)")
    p.add_argument("--views", type=int, default=23, help="volume: CT views (default 23)")
    p.add_argument("--couplings", default="none,ztv", help="volume: couplings to time, comma-separated (default "
                   "none,ztv)")
    p.add_argument("--data", choices=VOLUME_DATA, default="auto", help="volume: lung2 (ct-real's test volume), "
                   "phantom3d, or auto (default: lung2 when fetched)")
    p.add_argument("--in-process", action="store_true", help="volume: measure in this process (faster; peak "
                   "memory then includes earlier work)")
    p.add_argument("--tasks", default="ct,mri", help="sampler: tasks, comma-separated (ct, mri; default both)")
    p.add_argument("--images", type=int, default=bench_peers.DEFAULT_IMAGES,
                   help=f"peers: test images per setting (default {bench_peers.DEFAULT_IMAGES})")
    p.add_argument("--nfe", default=",".join(map(str, bench_peers.DEFAULT_NFE)),
                   help="peers: network evaluations per image, comma-separated even numbers (default "
                        f"{','.join(map(str, bench_peers.DEFAULT_NFE))})")
    p.add_argument("--settings", default=",".join(bench_peers.SETTINGS),
                   help=f"peers: settings, comma-separated ({', '.join(bench_peers.SETTINGS)}; default all)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    parts = [args.part] if args.part else list(PARTS)
    groups = check_groups(args.groups)          # every option is checked before the first part runs
    check_range("--seconds", args.seconds, 0.0)
    check_int("--size", args.size, 16)
    if args.steps is not None:
        check_int("--steps", args.steps)
    if args.batch_size is not None:
        check_int("--batch-size", args.batch_size)
    if args.threads is not None:
        check_int("--threads", args.threads)
    peers_opts = bench_peers.check_options(args.images, args.nfe, args.settings)
    for part in parts:
        if part == "train":
            emit(bench_train(args.preset, args.batch_size, seconds=args.seconds, groups=groups, device=args.device,
                             threads=args.threads, save=not args.no_save), part)
        elif part == "physics":
            res = bench_physics(n=args.size)
            if res.get("astra_available") == 0.0:
                print("astra: NOT AVAILABLE (the `astra` module could not be imported); no ASTRA numbers reported")
            emit(res, part)
        elif part == "sampler":
            emit(bench_sampler(batch=args.batch_size or 8, steps=args.steps or 20, checkpoint=args.checkpoint,
                               solver=args.solver or "projection", ct_operator=args.ct_operator,
                               tasks=[t.strip() for t in args.tasks.split(",") if t.strip()]), part)
        elif part == "volume":
            if args.threads is not None:
                torch.set_num_threads(args.threads)
            couplings = [c.strip() for c in args.couplings.split(",") if c.strip()]
            emit(bench_volume(checkpoint=args.checkpoint or "ct256", solver=args.solver or "diffpir", steps=args.steps,
                              slices=args.slices, image_size=args.image_size, views=args.views,
                              batch_size=args.batch_size or 8, couplings=couplings, data=args.data,
                              device=args.device, in_process=args.in_process), part)
        else:
            if args.threads is not None:
                torch.set_num_threads(args.threads)
            res = bench_peers.run(*peers_opts)
            emit(res, part)
            print()
            print(bench_peers.table(res))
            print()
            for line in bench_peers.best_lines(res):
                print(line)
    return 0
