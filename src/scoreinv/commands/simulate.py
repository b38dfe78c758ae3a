"""`scoreinv simulate`: make measurements (CT, MRI, MAR) from images, or show a measurement file.

Thin layer: read images, build the operator and noise from the options, call the simulation in
`scoreinv.tasks` (shared with eval/tune/demo), write the file (`scoreinv.physics.measurements`).
Input readers here are minimal (a 2-D image or a volume of slices from .npy/.npz/.png/.jpg/.tif/
DICOM file or folder/NIfTI).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from .. import tasks
from ..errors import ScoreinvError, check_finite, check_range

HELP = """Simulate measurements from images.

  scoreinv simulate --task ct  --views 23 --noise 1e5 --input slice.dcm --out meas.npz
  scoreinv simulate --task mri --acceleration 8 --mask equispaced --noise 0.01 --input brain.nii.gz --out meas.npz
  scoreinv simulate --task mar --input slice.png --size 256 --out meas.npz
  scoreinv simulate --show meas.npz --out fig.png

Images are scaled to [0, 1] first (--intensity): DICOM CT in HU maps [-1024, 3200] HU to [0, 1]
(the paper's MAR window), anything else is min-max scaled per volume. Volumes (3-D inputs)
are simulated slice by slice. Noise (--noise): CT = incident photons per ray (Poisson,
attenuation of image value 1 = --mu-max per cm); MRI = complex Gaussian standard deviation
relative to the RMS magnitude of the sampled k-space; MAR = photons per ray (default 2e7, as
the paper). For MAR, images already in the paper's HU window (PNG slices) need --intensity none. CT is simulated without the inverse crime: the image is upsampled --upsample times
and projected with a finer grid of the same physical geometry.
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("simulate", help="simulate CT/MRI/MAR measurements, or show a measurement file",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("ct", "mri", "mar"), help="measurement process to simulate")
    p.add_argument("--input", help="image or volume: .npy, .npz, .png/.jpg/.tif, .dcm or a DICOM folder, .nii/.nii.gz")
    p.add_argument("--out", required=True, help="output .npz measurement file (with --show: the figure .png)")
    p.add_argument("--show", metavar="MEAS", help="render measurement file MEAS (measurements, mask, naive "
                   "reconstruction, ground truth) to --out instead of simulating")
    p.add_argument("--slice", type=int, default=0, help="with --show: which slice to render (default 0)")
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
    mri.add_argument("--center-fraction", type=float, help="fully sampled centre fraction (random, variable_density)")
    mri.add_argument("--coils", type=int, default=1, help="receiver coils: 1 = single coil, >1 = SENSE with "
                     "synthetic birdcage maps (default 1)")
    mar = p.add_argument_group("MAR")
    mar.add_argument("--implants", type=int, help="number of metal implants per slice (default 1-3, random)")
    mar.add_argument("--metal", default="titanium", choices=("titanium", "iron", "copper", "gold"),
                     help="implant material (default titanium, 4.5 g/cm^3)")
    p.set_defaults(func=run)
    return p


# --- reading images ---------------------------------------------------------------------------
def _read_dicom(path: str, headers: list | None = None) -> tuple[np.ndarray, bool]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_rescale
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if not f.startswith("."))
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            arr = np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float64)
        except (InvalidDicomError, AttributeError, KeyError, ValueError, OSError) as e:
            if len(files) == 1:
                raise ScoreinvError(f"{f}: not a readable DICOM image ({e})") from None
            continue  # a folder may hold other files
        pos = getattr(ds, "ImagePositionPatient", None)
        key = float(pos[2]) if pos is not None else float(getattr(ds, "InstanceNumber", len(slices)))
        slices.append((key, arr, getattr(ds, "Modality", "") == "CT", ds))
    if not slices:
        raise ScoreinvError(f"{path}: no readable DICOM images")
    slices.sort(key=lambda s: s[0])
    shapes = {s[1].shape for s in slices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ScoreinvError(f"{path}: DICOM slices must be 2-D and of one size, got {sorted(shapes)}")
    if headers is not None:
        headers.extend(s[3] for s in slices)
    return np.stack([s[1] for s in slices]), all(s[2] for s in slices)


def read_images(path: str, dicom_headers: list | None = None) -> tuple[np.ndarray, bool]:
    """Read an image or volume -> ((N, H, W) float64, is_hu). Raises ScoreinvError if unreadable.

    For DICOM input, the datasets of the slices (in the returned order) are appended to
    `dicom_headers` when a list is given.
    """
    if not path or not os.path.exists(path):
        raise ScoreinvError(f"input {path!r}: no such file or folder")
    low = path.lower()
    is_hu = False
    try:
        if os.path.isdir(path) or low.endswith((".dcm", ".dicom", ".ima")):
            arr, is_hu = _read_dicom(path, dicom_headers)
        elif low.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        elif low.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = [k for k in ("image", "images", "volume", "ground_truth") if k in z.files]
                if not keys and len(z.files) != 1:
                    raise ScoreinvError(f"{path}: which array? expected a key image/images/volume or a single "
                                        f"array, found {', '.join(z.files)}")
                arr = z[keys[0] if keys else z.files[0]]
        elif low.endswith((".nii", ".nii.gz")):
            import nibabel as nib
            vol = np.asarray(nib.load(path).get_fdata(), dtype=np.float64)
            if vol.ndim == 4 and vol.shape[3] == 1:
                vol = vol[..., 0]
            if vol.ndim == 2:  # one slice: the same layout as a volume of one (the writers invert it)
                vol = vol[..., None]
            if vol.ndim != 3:
                raise ScoreinvError(f"{path}: NIfTI image of shape {vol.shape}; expected a 2-D slice or a 3-D "
                                    "volume (split 4-D series into 3-D files first)")
            # axial slices along the last axis, shown with rows = anterior-posterior
            arr = np.stack([np.rot90(vol[:, :, k]) for k in range(vol.shape[2])])
        elif low.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
            from PIL import Image
            with Image.open(path) as im:
                a = np.asarray(im)
            arr = a[..., :3].mean(-1) if a.ndim == 3 else a
        else:
            raise ScoreinvError(f"{path}: unknown image format; expected .npy, .npz, .png/.jpg/.tif, "
                                ".dcm or a DICOM folder, .nii/.nii.gz")
    except ScoreinvError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise ScoreinvError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise ScoreinvError(f"{path}: expected real image values, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape[1:]) < 4:
        raise ScoreinvError(f"{path}: expected a 2-D image or a volume of 2-D slices, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ScoreinvError(f"{path}: image contains NaN or Inf")
    return arr, is_hu


def prepare_images(arr: np.ndarray, is_hu: bool, intensity: str, size: int | None, square: bool) -> torch.Tensor:
    """Scale to [0, 1], pad to square (if `square` or `size`), resize -> (N, 1, S, S) float32."""
    from ..physics.mar_spectra import hu_to_unit
    mode = intensity if intensity != "auto" else ("hu" if is_hu else "minmax")
    if mode == "hu":
        arr = np.clip(hu_to_unit(arr), 0.0, 1.0)
    elif mode == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            raise ScoreinvError("input image is constant; cannot min-max scale it (use --intensity none)")
        arr = (arr - lo) / (hi - lo)
    elif arr.min() < 0 or arr.max() > 1:
        raise ScoreinvError(f"--intensity none: values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]")
    n, h, w = arr.shape
    if (square or size) and h != w:
        m = max(h, w)
        pad = ((0, 0), ((m - h) // 2, m - h - (m - h) // 2), ((m - w) // 2, m - w - (m - w) // 2))
        arr = np.pad(arr, pad, constant_values=float(arr.min()))
    if size:
        if size < 8:
            raise ScoreinvError(f"--size {size}: expected at least 8")
        from skimage.transform import resize
        arr = np.stack([resize(a, (size, size), order=1, anti_aliasing=True, mode="edge") for a in arr])
    return torch.from_numpy(np.clip(arr, 0.0, 1.0)).float()[:, None]


# --- simulation (scoreinv.tasks holds the physics; these adapt the command-line options) ------
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def simulate_ct(args, x: torch.Tensor, g: torch.Generator):
    """Sinograms of x (N, 1, S, S), projected on an `--upsample`-times finer grid (bicubic)."""
    geometry = tasks.ct_geometry(x.shape[-1], args.views, args.dense_views, args.fan, args.pixel_size,
                                 args.detectors, args.det_spacing, args.source_distance, args.detector_distance)
    if args.upsample < 1:
        raise ScoreinvError(f"--upsample {args.upsample}: expected a positive integer")
    if args.noise < 0:
        raise ScoreinvError(f"--noise {args.noise}: expected photons per ray >= 0")
    return tasks.simulate_ct(x, g, geometry, args.upsample, args.noise, check_range("--mu-max", args.mu_max, 1e-9))


def simulate_mri(args, x: torch.Tensor, g: torch.Generator):
    """k-space of x (N, 1, H, W): single coil (CartesianMRI) or SENSE with birdcage maps."""
    if args.coils < 1:
        raise ScoreinvError(f"--coils {args.coils}: expected at least 1")
    if args.noise < 0:
        raise ScoreinvError(f"--noise {args.noise}: expected a relative standard deviation >= 0")
    return tasks.simulate_mri(x, g, args.mask, args.acceleration, args.center_fraction, args.coils, args.noise)


def simulate_mar_task(args, x: torch.Tensor, g: torch.Generator):
    """Metal-artifact scans of x (N, 1, S, S): the MAR operator, its measurements and the images."""
    fixed = [o for o, v in (("--fan", args.fan), ("--detectors", args.detectors), ("--det-spacing", args.det_spacing),
                            ("--dense-views", args.dense_views)) if v]
    if fixed:
        raise ScoreinvError(f"{', '.join(fixed)}: MAR uses the paper's scanner (N views over 180 degrees, "
                            "ceil(sqrt(2) N) bins over the diagonal); only --pixel-size and --views can change")
    if args.noise < 0:
        raise ScoreinvError(f"--noise {args.noise}: expected photons per ray >= 0")
    return tasks.simulate_mar(x, g, args.views, args.pixel_size, args.implants, args.metal, args.noise)


def run(args) -> int:
    if args.show:
        return show(args.show, args.out, args.slice)
    if not args.task or not args.input:
        raise ScoreinvError("simulate needs --task and --input (or --show MEAS)")
    from ..physics.measurements import save_measurements
    from ..source_record import describe_source
    headers: list = []
    arr, is_hu = read_images(args.input, headers)
    square = args.task in ("ct", "mar")
    x = prepare_images(arr, is_hu, args.intensity, args.size, square=square)
    source = describe_source(args.input, arr, is_hu, args.intensity, args.size, square, headers)
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


def show(path: str, out: str, index: int = 0) -> int:
    """Render slice `index` of a measurement file to a PNG (Agg backend)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import atomic
    from ..physics.measurements import load_measurements
    meas = load_measurements(path)
    if not 0 <= index < len(meas):
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
