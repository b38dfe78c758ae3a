"""`scoreinv simulate`: make measurements (CT, MRI, MAR) from images, or show a measurement file.

Thin layer: read images (`scoreinv.data.readers`, the reader of the folder datasets, so one
orientation and one HU mapping everywhere), build the operator and noise from the options, call
the simulation in `scoreinv.tasks` (shared with eval/tune/demo), write the file
(`scoreinv.physics.measurements`).
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
import torch
from skimage.transform import resize

from .. import tasks
from ..atomic import check_new_output
from ..data.folder import normalise
from ..data.readers import read_volume, skipped_line
from ..errors import ScoreinvError, check_finite, check_int, check_range
from ..physics.mar_spectra import HU_MAX, HU_MIN
from ..physics.masks import make_mask
from ..physics.mri import MIN_CENTRE, centre_box
from ..physics.measurements import save_measurements
from ..source_record import describe_source

HELP = """Simulate measurements from images.

  scoreinv simulate --task ct  --views 23 --noise 1e5 --input slice.dcm --size 64 --out ct.npz
  scoreinv simulate --task mri --acceleration 8 --mask equispaced --noise 0.01 --input brain.nii.gz --size 64 --out brain8x.npz
  scoreinv simulate --task mar --input slice.png --size 256 --out slice_mar.npz
  scoreinv simulate --show ct.npz --out ct.png

Images are scaled to [0, 1] first (--intensity): DICOM CT in HU maps [-1024, 3200] HU to [0, 1]
(the paper's MAR window), anything else is min-max scaled per volume. Volumes (3-D inputs)
are simulated slice by slice. Noise (--noise): CT = incident photons per ray (Poisson,
attenuation of image value 1 = --mu-max per cm); MRI = complex Gaussian standard deviation
relative to the RMS magnitude of the sampled k-space; MAR = photons per ray (default 2e7, as
the paper). MRI --phase smooth gives each image a random smooth phase (|x| e^{i phi}) and stores
the operator with the phase estimated from the fully sampled k-space centre, which `reconstruct`
uses (docs/design.md §3.5). For MAR, images already in the paper's HU window (PNG slices) need --intensity none. CT is simulated without the inverse crime: the image is upsampled --upsample times
and projected with a finer grid of the same physical geometry.
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("simulate", help="simulate CT/MRI/MAR measurements, or show a measurement file",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("ct", "mri", "mar"), help="measurement process to simulate")
    p.add_argument("--input", help="image or volume: a DICOM file or series folder, .nii/.nii.gz, .h5, "
                   ".png/.jpg/.tif, .npy/.npz (read as `scoreinv data inspect` reads them)")
    p.add_argument("--out", required=True, help="output .npz measurement file (with --show: the figure .png)")
    p.add_argument("--show", metavar="MEAS", help="render measurement file MEAS (measurements, mask, naive "
                   "reconstruction, ground truth) to --out instead of simulating")
    p.add_argument("--slice", type=int, default=0, help="with --show: which slice to render (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the input itself)")
    p.add_argument("--size", type=int, help="resize slices to SIZE x SIZE (non-square slices are padded first)")
    p.add_argument("--intensity", choices=("auto", "minmax", "hu", "none"), default="auto",
                   help="scaling to [0, 1]: auto (HU window for DICOM CT, else minmax), minmax per volume, "
                        "hu (values are HU: [-1024, 3200] -> [0, 1]), none (already in [0, 1])")
    p.add_argument("--seed", type=int, default=0, help="random seed (masks, noise, implants; default 0)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="noise level: CT photons per ray (0 = noise-free), MRI relative std (0 = none); "
                        "MAR photons per ray (0 = the paper's 2e7)")
    ct = p.add_argument_group("CT and MAR geometry")
    ct.add_argument("--views", type=int, help="measured views (parallel: rows round(linspace(0, dense-1, views)) "
                    "of the dense set, as the paper; fan: evenly spaced over 360 degrees; default: all dense angles)")
    ct.add_argument("--dense-views", type=int, help="dense angle set over 180 degrees (fan: 360; default: image size N)")
    ct.add_argument("--detectors", type=int, help="detector bins (default: odd count covering the image diagonal)")
    ct.add_argument("--pixel-size", type=float, help="pixel side in mm (default 1 for CT; MAR: 0.3 x 512 / N as the paper)")
    ct.add_argument("--det-spacing", type=float, help="detector bin width in mm (default: the pixel size)")
    ct.add_argument("--fan", action="store_true", help="fan beam (full 360-degree scan) instead of parallel beam")
    ct.add_argument("--source-distance", type=float, help="fan beam: source to rotation centre in mm (default 2 N pixel)")
    ct.add_argument("--detector-distance", type=float, help="fan beam: source to detector in mm (default 2 x source)")
    ct.add_argument("--upsample", type=int, default=4, help="CT: projection grid refinement against the inverse "
                    "crime (default 4; 1 = same grid)")
    ct.add_argument("--mu-max", type=float, default=tasks.MU_MAX,
                    help="CT noise: attenuation (1/cm) of image value 1 (default 0.81 = 3200 HU, the top of the "
                         "[-1024, 3200] HU window: 0.192 x 4.2 /cm)")
    mri = p.add_argument_group("MRI")
    mri.add_argument("--acceleration", type=float, default=4.0, help="undersampling factor R (default 4)")
    mri.add_argument("--mask", default="equispaced", choices=("equispaced", "random", "variable_density", "radial"),
                     help="k-space mask kind (default equispaced, the paper's)")
    mri.add_argument("--center-fraction", type=float, help="fully sampled centre fraction (random: default 0.32/R, "
                     "fastMRI's 0.08 at 4x and 0.04 at 8x; variable_density: default 0.04)")
    mri.add_argument("--phase", choices=("none", "smooth"), default="none",
                     help="image phase: none (real magnitude images, the paper's) or smooth (a random smooth phase "
                          "up to pi; the solvers see the phase estimated from the k-space centre; single coil)")
    mri.add_argument("--coils", type=int, default=1, help="receiver coils: 1 = single coil, >1 = SENSE with "
                     "synthetic birdcage maps (default 1)")
    mar = p.add_argument_group("MAR")
    mar.add_argument("--implants", type=int, help="number of metal implants per slice (default 1-3, random)")
    mar.add_argument("--metal", default="titanium", choices=("titanium", "iron", "copper", "gold"),
                     help="implant material (default titanium, 4.5 g/cm^3)")
    p.set_defaults(func=run)
    return p


# --- preparing images (read by scoreinv.data.readers, the one reader) ---------------------------
def prepare_images(arr: np.ndarray, is_hu: bool, intensity: str, size: int | None, square: bool) -> torch.Tensor:
    """Scale (N, H, W) to [0, 1] (`folder.normalise`: the HU window of `physics.mar_spectra` or
    min-max), pad to square (if `square` or `size`), resize -> (N, 1, S, S) float32."""
    if size is not None:
        check_int("--size", size, lo=8)
    mode = intensity if intensity != "auto" else ("hu" if is_hu else "minmax")
    if mode == "none":
        if arr.min() < 0 or arr.max() > 1:
            raise ScoreinvError(f"--intensity none: values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]")
    else:
        arr = normalise(arr, "window" if mode == "hu" else "minmax", HU_MIN, HU_MAX, "--input")
    h, w = arr.shape[1:]
    if (square or size) and h != w:
        m = max(h, w)
        pad = ((0, 0), ((m - h) // 2, m - h - (m - h) // 2), ((m - w) // 2, m - w - (m - w) // 2))
        arr = np.pad(arr, pad, constant_values=float(arr.min()))
    if size:
        arr = np.stack([resize(a, (size, size), order=1, anti_aliasing=True, mode="edge") for a in arr])
    return torch.from_numpy(np.clip(arr, 0.0, 1.0)).float()[:, None]


# --- simulation (scoreinv.tasks holds the physics; these adapt the command-line options) ------
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def check_options(args) -> None:
    """Every option of the task, checked by its flag name before anything is read or computed."""
    if args.noise is not None:
        check_range("--noise", args.noise, 0.0)
    for flag, v in (("--views", args.views), ("--dense-views", args.dense_views), ("--detectors", args.detectors),
                    ("--upsample", args.upsample), ("--coils", args.coils)):
        if v is not None:
            check_int(flag, v)
    if args.implants is not None:
        check_int("--implants", args.implants)
    for flag, v in (("--pixel-size", args.pixel_size), ("--det-spacing", args.det_spacing),
                    ("--source-distance", args.source_distance), ("--detector-distance", args.detector_distance),
                    ("--mu-max", args.mu_max)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ScoreinvError(f"{flag} = {v:g}: expected a positive number")
    if args.task == "mri":
        check_range("--acceleration", args.acceleration, 1.0)
        if args.center_fraction is not None:
            check_range("--center-fraction", args.center_fraction, 0.0, 1.0)
        tasks.check_mri_acquisition(args.phase, args.coils)
    elif args.phase != "none":
        raise ScoreinvError(f"--phase applies to --task mri, not to --task {args.task}")
    if args.task == "mar":
        fixed = [o for o, v in (("--fan", args.fan), ("--detectors", args.detectors),
                                ("--det-spacing", args.det_spacing), ("--dense-views", args.dense_views)) if v]
        if fixed:
            raise ScoreinvError(f"{', '.join(fixed)}: MAR uses the paper's scanner (N views over 180 degrees, "
                                "ceil(sqrt(2) N) bins over the diagonal); only --pixel-size and --views can change")


def check_geometry(args, n: int) -> None:
    """The options that depend on the image size N (after --size)."""
    dense = args.dense_views if args.dense_views is not None else n
    if args.views is not None and not args.fan:
        check_int("--views", args.views, 1, dense)
    if args.task == "mri":
        try:
            m = make_mask(args.mask, (n, n), args.acceleration, args.center_fraction, seed=0,
                          require_centre=True)
        except ScoreinvError as e:
            raise ScoreinvError(f"--acceleration/--mask: {e}") from None
        if args.phase == "smooth" and min(centre_box(m)) < MIN_CENTRE:
            raise ScoreinvError(f"--phase smooth: the {args.mask} mask at {args.acceleration:g}x samples a fully "
                                f"sampled k-space centre of {'x'.join(map(str, centre_box(m)))} lines; the phase "
                                f"estimate needs at least {MIN_CENTRE} each way (a random or equispaced mask, a "
                                "larger --center-fraction or a lower --acceleration)")


def simulate_ct(args, x: torch.Tensor, g: torch.Generator):
    """Sinograms of x (N, 1, S, S), projected on an `--upsample`-times finer grid (bicubic)."""
    geometry = tasks.ct_geometry(x.shape[-1], args.views, args.dense_views, args.fan, args.pixel_size,
                                 args.detectors, args.det_spacing, args.source_distance, args.detector_distance)
    return tasks.simulate_ct(x, g, geometry, args.upsample, args.noise, args.mu_max)


def simulate_mri(args, x: torch.Tensor, g: torch.Generator):
    """k-space of x (N, 1, H, W): single coil (CartesianMRI) or SENSE with birdcage maps."""
    return tasks.simulate_mri(x, g, args.mask, args.acceleration, args.center_fraction, args.coils, args.noise,
                              args.phase)


def simulate_mar_task(args, x: torch.Tensor, g: torch.Generator):
    """Metal-artifact scans of x (N, 1, S, S): the MAR operator, its measurements and the images."""
    return tasks.simulate_mar(x, g, args.views, args.pixel_size, args.implants, args.metal, args.noise)


def run(args) -> int:
    if args.show:
        return show(args.show, args.out, args.slice, overwrite=args.overwrite)
    if not args.task or not args.input:
        raise ScoreinvError("simulate needs --task and --input (or --show MEAS)")
    if not str(args.out).lower().endswith(".npz"):
        raise ScoreinvError(f"--out {args.out}: expected a .npz measurement file name")
    check_options(args)
    if args.size is not None:
        check_int("--size", args.size, lo=8)
    check_new_output(args.out, overwrite=args.overwrite, inputs=[args.input])
    vol = read_volume(args.input)
    if vol.meta["skipped"]:
        print(skipped_line(vol.meta["skipped"], args.input))
    arr, is_hu = vol.data, vol.meta["hu"]
    square = args.task in ("ct", "mar")
    x = prepare_images(arr, is_hu, args.intensity, args.size, square=square)
    check_geometry(args, x.shape[-1])
    source = describe_source(args.input, arr, is_hu, args.intensity, args.size, square, vol.meta.get("headers"),
                             affine=vol.meta.get("affine"), positions=vol.meta.get("positions"),
                             kind=vol.meta["kind"])
    g = _generator(args.seed)
    sim = {"ct": simulate_ct, "mri": simulate_mri, "mar": simulate_mar_task}[args.task](args, x, g)
    op, y, noise, extras = sim.op, sim.y, sim.noise, sim.extras
    check_finite("simulated measurements", y)
    save_measurements(args.out, args.task, op, y, noise, ground_truth=x, extras=extras, source=source)
    print(f"wrote {args.out}: {x.shape[0]} slice(s) {x.shape[-2]}x{x.shape[-1]}, {op.name}, "
          f"measurements {tuple(y.shape)}, noise {noise['model']} {noise['level']:g}")
    return 0


# --- showing a measurement file ---------------------------------------------------------------
def _naive(meas, op, y: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The classical reconstruction of y (1, ...) -> (title, (H, W))."""
    if meas.task == "mri":
        rec = op.adjoint(y)
        return "zero-filled", (rec.abs() if rec.is_complex() else rec)[0, 0]
    if hasattr(op, "fbp"):
        try:
            return "FBP", op.fbp(y)[0, 0]
        except ScoreinvError:  # e.g. fan-beam angles FBP cannot weight: least squares below
            return _least_squares(op, y)
    return _least_squares(op, y)


def _least_squares(op, y: torch.Tensor) -> tuple[str, torch.Tensor]:
    x0 = torch.zeros(1, 1, *op.image_shape, dtype=y.dtype)
    return "least squares (CG, 30 it.)", op.lstsq(y, x0, iters=30)[0, 0]


def show(path: str, out: str, index: int = 0, overwrite: bool = False) -> int:
    """Render slice `index` of a measurement file to a PNG (Agg backend); only a .png is written."""
    if not str(out).lower().endswith(".png"):
        raise ScoreinvError(f"--out {out}: with --show, expected a .png figure name")
    check_new_output(out, overwrite=overwrite, inputs=[path])
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import atomic
    from ..physics.measurements import load_measurements
    meas = load_measurements(path)
    if not isinstance(index, int) or not 0 <= index < len(meas):
        raise ScoreinvError(f"--slice {index}: {path} holds {len(meas)} slice(s); expected 0 to {len(meas) - 1}")
    meas = meas.take(index)
    op = meas.operator()
    y = meas.y
    gt = meas.ground_truth[0, 0] if meas.ground_truth is not None else None
    panels = []
    if meas.task == "mar":
        ex = meas.extras
        panels = [("ground truth", gt), ("metal-artifact image", ex["artifact_image"][0, 0]),
                  ("LI image", ex["li_image"][0, 0]),
                  ("sinogram + metal trace", ("sino", ex["sinogram"][0], ex["metal_trace"][0]))]
    else:
        if meas.task == "mri":
            k = y[0] if y.ndim == 3 else y[0].abs().pow(2).sum(0).sqrt()  # SENSE: root-sum-of-squares
            panels.append(("log |k-space|", ("img", torch.log1p(k.abs() / (k.abs().max() + 1e-12) * 1e4))))
            panels.append((f"mask ({op.mask.numel() / float(op.mask.sum()):.1f}x)", ("img", op.mask.float())))
        else:
            panels.append(("sinogram", ("sino", y[0].numpy(), None)))
            ang = np.asarray(op.geometry.angles)
            panels.append((f"{ang.size} view angles", ("angles", ang)))
        panels.append(_naive(meas, op, y))
        if gt is not None:
            panels.append(("ground truth", gt))
    ref = gt if gt is not None else panels[-1][1]
    lo, hi = (0.0, 1.0)
    if meas.task in ("ct", "mar"):  # a display window from the image's own range (HU window)
        q = torch.quantile(torch.as_tensor(np.asarray(ref), dtype=torch.float64).flatten(),
                           torch.tensor([0.01, 0.995], dtype=torch.float64))
        lo, hi = float(q[0]), max(float(q[1]), float(q[0]) + 1e-3)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, v) in zip(np.atleast_1d(axes), panels):
        ax.set_title(name, fontsize=9)
        if isinstance(v, tuple) and v[0] == "angles":
            for a in v[1]:
                ax.plot([-np.cos(a), np.cos(a)], [-np.sin(a), np.sin(a)], lw=0.6, color="k")
            ax.set_aspect("equal")
            ax.set_xticks([]), ax.set_yticks([])
            continue
        if isinstance(v, tuple) and v[0] == "sino":
            ax.imshow(np.asarray(v[1]), cmap="gray", aspect="auto")
            if v[2] is not None:
                ax.contour(np.asarray(v[2], dtype=float), [0.5], colors="r", linewidths=0.6)
            ax.set_xlabel("detector bin", fontsize=8), ax.set_ylabel("view", fontsize=8)
            continue
        if isinstance(v, tuple):
            ax.imshow(np.asarray(v[1]), cmap="gray")
        elif v is not None:
            ax.imshow(np.asarray(v), cmap="gray", vmin=lo, vmax=hi)
        ax.axis("off")
    fig.suptitle(f"{os.path.basename(path)}: {op.name}, slice {index}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic.write_bytes(out, buf.getvalue())
    print(f"wrote {out}")
    return 0
