"""`scoreinv reconstruct`: solve the inverse problem of a measurement file with a trained prior."""
from __future__ import annotations

import argparse
import json
import math

from .. import atomic, ood
from ..batch import FORMATS, is_batch, reconstruct_many, sharded
from ..errors import ScoreinvError
from ..metrics import PLANES, summarise
from ..reconstruct import plan, run as run_plan, summary
from ..sampling.settings import COUPLINGS, parse_sets

HELP = """Reconstruct every slice of a measurement file (written by `scoreinv simulate`) with a
score-based prior and one of the solvers, and write the result.

  scoreinv reconstruct --checkpoint ct64 --measurements ct.npz --solver projection --out ct_recon.nii.gz
  scoreinv reconstruct --checkpoint mri64 --measurements brain8x.npz --solver dds --samples 8 --out brain8x.png
  scoreinv reconstruct --checkpoint ct64 --measurements ct.npz --preset tune/ct23-projection.yaml --set solver.snr=0.2 --out series.dcm

Solvers: baseline (Score SDE), langevin (annealed Langevin), langevin_projection, projection
(the paper's method), dds (fast, ~50 steps), dps, ddrm (DDRM; MRI and Fourier-slice CT) and
diffpir (DiffPIR), both ~50 steps and aware of the noise level in the file's noise record. Every
solver can start from the classical reconstruction (FBP, NMAR or zero-filled) at a chosen noise
level (--set solver.warm_start=classical --set solver.warm_sigma=2; same NFE), or from the TV image
(--set solver.warm_start=tv --set solver.warm_weight=1e-3; CT and MRI), and can return the
Tweedie estimate at a larger final noise level (--set solver.sigma_end=0.2), a partial posterior
mean; the output line says which estimate was written. Settings, later ones win (as in eval and
tune): the task's reference preset (the paper's values), the tuned preset (--preset FILE written
by `scoreinv tune`, else the one a shipped model brings: --checkpoint ct64 or mri64 run each
solver's tuned setting of about 50 noise levels; --preset reference skips it), --steps, then
--set solver.KEY=VALUE (e.g. solver.snr=0.25, solver.lambda=0.9, solver.cg_iters=20,
solver.final_projection=false; VALUE a YAML scalar; PROJECTION.KEY=VALUE, naming the solver,
works too). The first line printed says where each setting came from. The closing hard
projection with y (final_projection) is off for data noisier than the reference acquisition
(CT/MRI with noise; MAR with fewer photons than the paper's 2e7), on otherwise.

An existing output (and its _std map or DICOM series folder) is refused unless --overwrite;
an output equal to the measurement file is always refused. --report writes a JSON record with
the settings, their origin and the environment (scoreinv and torch versions, torch thread count,
device): results repeat bit for bit with the same seed at the same thread count, not across
thread counts.

After the data residual comes the out-of-distribution check (docs/design.md §4.4): how much worse
the prior denoises the result than its own validation images (τ; above 1.6 the input looks unlike
the training data and a score solver may have painted the training anatomy into it) and whether the
result still explains the data within the noise. A warning names the worst slice; compare it with
the zero-filled / classical reconstruction. --report holds every slice's figures.

Volumes: --coupling ztv solves the selected slices together as one volume, adding a total-variation
penalty along the slice axis to every data-consistency step (ADMM on the stacked volume, as
DiffusionMBIR and DDS do; solvers projection, langevin_projection, dds and diffpir), which removes
the stripes between slices that slice-by-slice reconstruction leaves. Its weight and ADMM settings:
--set solver.ztv_lambda=VALUE (0 gives back the uncoupled result; by default 0.01 x the voxel aspect
in-plane pixel / slice spacing when the file gives both, as 3-D TV scales its z term), solver.admm_iters=4,
solver.admm_rho=1. Slice order and spacing come from the file (a DICOM series or NIfTI volume given
to `scoreinv simulate`): slices must be evenly spaced, none duplicated or missing (a clear error
otherwise). The network still sees --batch-size images at a time; the coupled step runs on the whole
volume, so the result does not depend on --batch-size. With a ground truth of two or more evenly
spaced slices, PSNR/SSIM on axial, coronal and sagittal planes and the z-gradient error are printed.

With --samples K > 1 the output is the posterior mean and, beside it, the pixel-wise standard
deviation (recon_std.npy, recon_std.png, ...). Slices are solved --batch-size images at a time
(K samples of a slice count K images).

Many inputs: --measurements takes several files, a folder (its *.npz files, by name) or a .txt list
(one path per line, relative to the list's folder); --out is then a folder holding one output per
input, named after it (case01.npz -> case01.nii.gz; --format npy, nii.gz, nii, dcm or png, default
nii.gz), and manifest.json: per input its sha256, output files, the settings hash, its status and
seconds. Each output is written atomically and only then recorded as done, so rerunning the same
command after a kill skips what is done (same settings, unchanged input) and redoes the rest; a
folder of other settings is refused unless --overwrite (which redoes every input). An input that
fails is recorded as failed, the others go on, and the command exits with status 2. Under torchrun
rank r of N takes inputs r, r + N, ... (one process per GPU, cuda:LOCAL_RANK) and writes only
manifest.rank{r}.json; when all are done rank 0 merges them into manifest.json. Every input gets
--seed, so its output is what a run on that file alone writes, however the inputs are sharded:

  scoreinv reconstruct --checkpoint ct64 --measurements cases/ --solver dds --out recon/ --format nii.gz
  torchrun --standalone --nproc-per-node 2 -m scoreinv.cli reconstruct --checkpoint ct64 \\
      --measurements cases/ --solver dds --out recon/

Outputs: .npy (float32 (S, H, W), or (H, W) for one slice, image scale [0, 1]); .png (the slice,
or a grid of all slices); .nii/.nii.gz (original units, e.g. HU for CT; affine from the DICOM
geometry or the pixel size); .dcm (one file for one slice, else a folder NAME/ of IM_0001.dcm ...:
a new series in the input's study and frame of reference when the input was DICOM, CT in HU
via RescaleSlope/Intercept). When the file holds a ground truth, PSNR/SSIM are printed.
"""


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("reconstruct", help="reconstruct images from a measurement file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file, training work directory, or shipped model name")
    p.add_argument("--measurements", required=True, nargs="+", metavar="PATH",
                   help="measurement file (.npz from `scoreinv simulate`); several files, a folder of them or a "
                        ".txt list reconstruct each into the folder --out")
    p.add_argument("--out", required=True, help="output: .npy, .png, .nii, .nii.gz or .dcm; with several inputs "
                   "a folder")
    p.add_argument("--format", choices=tuple(FORMATS), help="with several inputs: the format of each output "
                   "(default nii.gz)")
    p.add_argument("--solver", help="baseline, langevin, langevin_projection, projection, dds, dps, ddrm or "
                   "diffpir (default: the preset's)")
    p.add_argument("--preset", metavar="FILE", help="solver preset YAML written by `scoreinv tune` "
                   "({solver, task, params}), or 'reference' (default: the shipped model's tuned preset)")
    p.add_argument("--steps", type=int, help="noise levels (default: the solver's preset; NFE = see output)")
    p.add_argument("--samples", type=int, default=1, help="posterior samples per slice (default 1); K > 1 also "
                   "writes the standard-deviation map")
    p.add_argument("--set", action="append", default=[], metavar="solver.KEY=VALUE",
                   help="solver parameter override (repeatable), e.g. --set solver.snr=0.2 --set solver.lambda=1")
    p.add_argument("--batch-size", type=int, default=8, help="images per network call (default 8)")
    p.add_argument("--slices", help="which slices of the file: 3, 0:8 or 0,5,9 (default: all)")
    p.add_argument("--coupling", choices=COUPLINGS, help="couple the slices as one volume: ztv = total "
                   "variation along the slice axis in every data-consistency step (default: the preset's, none); "
                   "weight --set solver.ztv_lambda=VALUE")
    p.add_argument("--ct-operator", choices=("fourier", "radon"),
                   help="CT sinograms: solve on the Fourier-slice decomposition (exact projection) or the "
                        "sinogram with CG (default: the project's choice, scoreinv.tasks.DEFAULT_CT_OPERATOR)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); a run repeats bit for bit at "
                   "the same torch thread count")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--report", metavar="JSON", help="also write a JSON record of the run (settings and their "
                   "origin, environment, NFE, time, metrics, files)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (--out, its _std map, "
                   "--report); with several inputs: redo every input, whatever the folder's manifest holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if is_batch(args.measurements):
        return run_many(args)
    if args.format is not None:
        raise ScoreinvError(f"--format {args.format}: applies to several inputs (a folder, a .txt list or several "
                            "files in --measurements); one output takes its format from the --out name")
    args.measurements = args.measurements[0]
    p = plan(args.checkpoint, args.measurements, args.out, solver=args.solver, steps=args.steps,
             samples=args.samples, sets=parse_sets(args.set), preset=args.preset, batch_size=args.batch_size,
             seed=args.seed, device=args.device, ct_operator=args.ct_operator, slices=args.slices,
             overwrite=args.overwrite, report=args.report, coupling=args.coupling,
             log=lambda line: print(line, flush=True))
    h, w = p.meas.image_size
    print(f"reconstruct: {len(p.meas)} slice(s) {h}x{w} from {args.measurements} ({p.meas.task}, {p.solve_op.name}); "
          f"{p.samples} sample(s) per slice, seed {p.seed}, {p.device}\n"
          f"solver {p.settings.describe()}", flush=True)
    r = run_plan(p, progress=not args.no_progress)
    n = len(p.meas)
    print(f"NFE per slice: {r.nfe} ({p.samples} x {r.nfe // p.samples}); {r.seconds:.1f} s "
          f"({r.seconds / n:.2f} s per slice); estimate: {r.estimate}")
    print(f"data residual |Ax - y| / |y| of the {'mean' if p.samples > 1 else 'result'}: "
          f"mean {float(r.residual.mean()):.3g}, max {float(r.residual.max()):.3g}")
    print(ood.summary_line(r.ood))
    if r.metrics:
        parts = []
        for name, v in r.metrics.items():
            m, s = summarise(v)
            label = name.upper().replace("_MAR", " (metal zeroed)")
            parts.append(f"{label} {m:.2f} ± {s:.2f} dB" if name.startswith("psnr") else f"{label} {m:.4f} ± {s:.4f}")
        print("against the ground truth: " + ", ".join(parts) + f" over {n} slice(s)")
    if r.volume:
        v = r.volume
        ssim = "/".join("n/a" if math.isnan(v[f"ssim_{q}"]) else f"{v[f'ssim_{q}']:.4f}" for q in PLANES)
        print(f"volume ({n} slices{f', {p.spacing:.4g} mm apart' if p.spacing else ''}): PSNR axial/coronal/sagittal "
              + "/".join(f"{v[f'psnr_{q}']:.2f}" for q in PLANES) + f" dB, SSIM {ssim}, z-gradient RMSE "
              f"{v['zgrad_rmse']:.4g}")
    for f in r.files:
        print(f"wrote {f}")
    if args.report:
        atomic.write_text(args.report, json.dumps(summary(p, r), indent=2))
        print(f"wrote {args.report}")
    return 0


def run_many(args) -> int:
    """Several inputs into the folder --out, this process's share under torchrun (scoreinv.batch)."""
    if args.report:
        raise ScoreinvError("--report: one record per run of one file; with several inputs the folder's "
                            "manifest.json records each input")
    with sharded(args.device) as shard:
        r = reconstruct_many(args.checkpoint, args.measurements, args.out, args.format or "nii.gz", shard=shard,
                             overwrite=args.overwrite, progress=not args.no_progress, solver=args.solver,
                             steps=args.steps, samples=args.samples, sets=parse_sets(args.set), preset=args.preset,
                             batch_size=args.batch_size, seed=args.seed, device=args.device,
                             ct_operator=args.ct_operator, slices=args.slices, coupling=args.coupling)
    shard.say(f"{shard.tag}batch: {len(r.done)} reconstructed, {len(r.skipped)} skipped (done before), "
              f"{len(r.failed)} failed" + (f"; wrote {r.manifest}" if r.manifest else ""))
    for src, _ in r.failed:
        shard.say(f"{shard.tag}failed: {src} (a rerun of the same command retries it)")
    return 2 if r.failed else 0
