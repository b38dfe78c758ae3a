"""`scoreinv eval`: score solvers and classical baselines on a dataset split (scoreinv.evaluate).

Also holds the command-line pieces shared by `tune` (and usable by other commands): the task
options (`add_task_arguments`, `task_options_from_args`), data and model loading.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import ood
from ..batch import sharded
from ..data.base import check_image_size
from ..errors import check_int
from ..evaluate import check_out_dir, evaluate, resolve_methods
from ..sampling.settings import SOLVERS, noisy_level, open_preset, parse_sets

HELP = """Evaluate reconstructions against ground truth on a dataset split.

  scoreinv eval --checkpoint ct64 --task ct --views 23 --data phantoms --split test \\
      --solvers fbp,tv,projection,dds --num-images 16 --out results/ct23
  scoreinv eval --checkpoint mri64 --task mri --acceleration 8 --data brain \\
      --solvers zero_filled,cs_tv,projection --preset reference --num-images 16 --out results/mri8
  scoreinv eval --checkpoint ct64 --task mar --data phantoms --solvers li,nmar,projection \\
      --set projection.steps=20 --out results/mar
  scoreinv eval --checkpoint mri64 --task mri --acceleration 8 --coils 4 --data brain \\
      --solvers zero_filled,cs_tv,diffpir --num-images 4 --out results/mri8_sense

Writes into --out: metrics.csv (one row per image and solver: psnr, ssim, their circle / hist
variants for CT and MRI or metal-zeroed (psnr_mar, ssim_mar) variants for MAR, nmse, seconds,
nfe, estimate, and for score solvers the out-of-distribution check: ood_tau, the typicality of the
result under the prior, and ood_verdict; a warning line per solver names the images that look
unlike the prior's training data or leave the measured data), summary.json (one record per solver; the main psnr/ssim columns are on the FULL image,
clipped to [0, 1], data range 1), reconstructions.npz, comparison.png. Progress is saved per
solver and batch: rerunning the same command resumes a killed run, a larger --num-images or
more --solvers extend it; a folder holding another configuration, or files that an evaluation
does not write, is refused. Each summary record holds the environment it ran in (scoreinv and
torch versions, torch thread count, device): results repeat bit for bit at the same thread
count, not across thread counts.

Under torchrun rank r of N evaluates the batches r, r + N, ... (one process per GPU) and writes
their parts; rank 0 then merges every part into the files above, which equal a single process's
(the randomness of a batch depends on its index, not on the rank), up to the seconds columns:

  torchrun --standalone --nproc-per-node 2 -m scoreinv.cli eval --checkpoint ct64 --task ct --views 23 \\
      --data phantoms --solvers fbp,dds --num-images 16 --out results/ct23_sharded

Solvers: score solvers baseline, langevin, langevin_projection, projection, dds, dps, ddrm
(MRI, or CT with --ct-operator fourier), diffpir (need --checkpoint); classical baselines by
task: ct fbp, sirt, cgls, tv; mri zero_filled, cgls, tv, cs_tv, cs_wavelet; mar li, nmar, sirt,
cgls, tv. Each row of the outputs names the estimate it scores (sample, mean-of-K with
--samples K, tweedie@S with --set solver.sigma_end=S, classical); with --samples K each score solver
also gets rows NAME:first that score the first of its K samples alone, at NFE / K (single sample
against the mean of K on the same data). Baseline weights (tv, cs_*) and iteration
counts (sirt, cgls) are chosen on --val-images validation images and cached in the folder,
unless fixed with --set tv.weight=1e-3.

Score-solver settings, later ones win (as in reconstruct and tune): the reference preset of the
task and solver (the paper's values), the tuned preset (a --preset FILE from `scoreinv tune` for
its solver, else the one a shipped model brings, e.g. --checkpoint ct64: about 50 noise levels;
--preset reference skips them), --steps, then --set solver.KEY=VALUE (every score solver), then
--set NAME.KEY=VALUE (one solver; KEY a solver parameter, 'lambda' for lam, VALUE a YAML
scalar). The closing hard projection is off for data noisier than the reference acquisition
(CT/MRI --noise > 0; MAR fewer photons than the paper's 2e7). The settings of each score solver
and where they came from are printed first. CT data are simulated without the inverse
crime on the ParallelBeamCT geometry; --ct-operator picks what score solvers see (see
scoreinv.tasks: radon = ParallelBeamCT + CG projection, the default; fourier = exact
Fourier-slice decomposition of the converted sinogram).
"""


def add_task_arguments(p: argparse.ArgumentParser, model_optional: bool = True) -> None:
    """--task, --views, --acceleration, --mask, --noise, --ct-operator, --upsample, --data, --split,
    --seed, --device, --checkpoint (names shared by eval, tune, reconstruct, demo)."""
    from ..physics.masks import MASK_KINDS
    from ..tasks import CT_OPERATORS, DEFAULT_CT_OPERATOR, DEFAULT_CT_VIEWS
    p.add_argument("--checkpoint", required=not model_optional,
                   help="checkpoint file, training work directory, or shipped model name (sets the image size"
                        + ("; optional when only classical baselines run and --image-size is given)"
                           if model_optional else ")"))
    p.add_argument("--task", required=True, help="ct | mri | mar")
    t = p.add_argument_group("task options")
    t.add_argument("--views", type=int, help=f"CT/MAR: measured views, rows round(linspace(0, N-1, views)) of N "
                   f"dense angles over 180 degrees (default: CT {DEFAULT_CT_VIEWS}, MAR all N)")
    t.add_argument("--acceleration", type=float, help="MRI: undersampling factor R (default 4)")
    t.add_argument("--mask", help=f"MRI: k-space mask kind, one of {', '.join(MASK_KINDS)} (default equispaced)")
    t.add_argument("--phase", choices=("none", "smooth"), default=None,
                   help="MRI: image phase: none (magnitude images, the paper's) or smooth (a random smooth phase; "
                        "the solvers see the phase estimated from the k-space centre, docs/design.md §3.5)")
    t.add_argument("--coils", type=int, help="MRI: receiver coils, 1 = single coil (default), C > 1 = SENSE with C "
                   "simulated birdcage coil maps known to every method")
    t.add_argument("--noise", type=float, help="CT: incident photons per ray (Poisson; default 0 = noise-free); "
                   "MRI: complex Gaussian std relative to the k-space RMS (default 0); MAR: photons per ray "
                   "(default 0 = the paper's 2e7)")
    t.add_argument("--ct-operator", help=f"CT: operator of the score solvers, {' | '.join(CT_OPERATORS)} "
                   f"(default {DEFAULT_CT_OPERATOR})")
    t.add_argument("--upsample", type=int, help="CT: finer projection grid against the inverse crime (default 4)")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="phantoms | ellipses | brain | a folder of images/volumes "
                   "(resized to the model's image size)")
    d.add_argument("--data-seed", type=int, default=0, help="dataset seed (procedural data, folder split; default 0)")
    d.add_argument("--image-size", type=int, help="image size S (S x S): needed without --checkpoint; a patch "
                   "prior (e.g. ct256) also takes other sizes (default: its training size)")
    p.add_argument("--seed", type=int, default=0, help="seed of masks, noise, implants and samplers (default 0)")
    p.add_argument("--batch-size", type=int, default=4, help="images reconstructed together (default 4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def task_options_from_args(args):
    from ..tasks import task_options
    return task_options(args.task, views=args.views, acceleration=args.acceleration, mask=args.mask,
                        noise=args.noise, ct_operator=args.ct_operator, upsample=args.upsample,
                        phase=args.phase, coils=args.coils)


def load_model(args, needed: bool):
    """(model or None, fingerprint or None, image size, device) from --checkpoint / --image-size."""
    from ..errors import ScoreinvError
    from ..evaluate import model_fingerprint
    from ..score import check_model_size, load_score_model
    from ..train import resolve_device
    device = resolve_device(args.device)
    if args.checkpoint:
        model, cfg = load_score_model(args.checkpoint, device=device)
        size = cfg.data.image_size if args.image_size is None else check_image_size(args.image_size, "--image-size")
        check_model_size(cfg, size, what=f"--image-size {size}: the images")
        return model, model_fingerprint(model), size, device
    if needed:
        raise ScoreinvError("score solvers need --checkpoint (a checkpoint file, work directory or shipped model)")
    if args.image_size is None:
        raise ScoreinvError("without --checkpoint, give --image-size")
    return None, None, check_image_size(args.image_size, "--image-size"), device


def data_id(spec: str) -> str:
    from ..data import BUILTIN_DATASETS
    return spec if spec in BUILTIN_DATASETS else os.path.abspath(spec)


def load_split(args, split: str, image_size: int):
    from ..data import BUILTIN_DATASETS, build_dataset
    from ..errors import ScoreinvError
    if split == "all" and args.data in BUILTIN_DATASETS:
        raise ScoreinvError(f"--split all: exists only for --data FOLDER; the built-in {args.data} have train, val "
                            "and test")
    try:
        return build_dataset(args.data, split, image_size, seed=args.data_seed)
    except IndexError as e:
        raise ScoreinvError(f"--data {args.data}: {e}") from None


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate solvers and baselines (PSNR/SSIM tables, figures)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="split to evaluate (default test; 'all' for folders only)")
    p.add_argument("--solvers", required=True, help="comma-separated methods, e.g. fbp,tv,projection")
    p.add_argument("--steps", type=int, help="noise levels of every score solver (default: the preset's)")
    p.add_argument("--samples", type=int, default=1, help="posterior samples per image; the mean is scored "
                   "and the std saved (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="TARGET.KEY=VALUE",
                   help="override a parameter: solver.snr=0.3 (every score solver), projection.lambda=0.9 "
                        "(one solver), tv.weight=1e-3 (a baseline's); repeatable")
    p.add_argument("--preset", action="append", default=[], metavar="YAML",
                   help="tuned parameters from `scoreinv tune` (repeatable, one per solver), or 'reference' "
                        "for the reference presets instead of the shipped model's tuned ones")
    p.add_argument("--num-images", type=int, default=8, help="images of the split to evaluate (default 8)")
    add_pick_argument(p, "also for the validation images")
    p.add_argument("--val-images", type=int, default=4,
                   help="validation images for choosing baseline weights (default 4)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.set_defaults(func=run)
    return p


def add_pick_argument(p, note: str) -> None:
    """--pick of eval and tune: the split's first --num-images, or that many spread over it (`spread`)."""
    p.add_argument("--pick", choices=("first", "spread"), default="first",
                   help="which images of the split: the first --num-images (default), or --num-images spread "
                        f"evenly over the split (volumes: slices from bottom to top; {note})")


def spread(ds, n: int, flag: str):
    """n images of `ds` spread evenly over it (volumes: slices from bottom to top); `flag` names the count."""
    from ..data.base import Subset, spread_indices
    from ..errors import ScoreinvError
    check_int(flag, n)
    if n > len(ds):
        raise ScoreinvError(f"{flag} {n}: the {ds.split} split of {ds.name} holds only {len(ds)} image(s)")
    return Subset(ds, spread_indices(n, len(ds)))


def _val(args, size: int):
    ds = load_split(args, "val", size)
    return spread(ds, min(args.val_images, len(ds)), "--val-images") if args.pick == "spread" else ds


def run(args) -> int:
    opts = task_options_from_args(args)
    presets = [open_preset(p, task=opts.task) for p in args.preset]
    methods = resolve_methods(args.solvers, opts.task, args.steps, parse_sets(args.set), presets,
                              noisy_level(opts.task, opts.noise, opts.phase), args.checkpoint)
    check_out_dir(Path(args.out))
    with sharded(args.device) as shard:
        for m in methods:
            if m.kind == "score" and shard.lead:
                print(f"eval: {m.origin}", flush=True)
        model, fingerprint, size, device = load_model(args, any(m.name in SOLVERS for m in methods))
        ds = load_split(args, args.split, size)
        did = data_id(args.data)
        if args.pick == "spread":      # the pick is part of the data's identity: a resumed run must repeat it
            ds = spread(ds, args.num_images, "--num-images")
            did = f"{did} [spread {args.num_images}]"
        reference = ood.model_reference(args.checkpoint, model, log=shard.say) if model is not None else None
        evaluate(args.out, opts, ds, methods, args.num_images, data_id=did, split=args.split,
                 model=model, model_id=fingerprint, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                 device=device, val_dataset=lambda: _val(args, size), n_val=args.val_images, shard=shard,
                 log=shard.say, ood_reference=reference)
    if shard.lead:
        print(f"wrote {os.path.join(args.out, 'summary.json')}, metrics.csv, reconstructions.npz, comparison.png")
    else:
        shard.say(f"{shard.tag}done: {len(shard.mine(-(-args.num_images // args.batch_size)))} batch(es); rank 0 "
                  "wrote the merged summary")
    return 0
