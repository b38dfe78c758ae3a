"""The per-format readers behind `readers` (which finds the files and dispatches): NIfTI, NRRD,
fastMRI-style HDF5, 2-D images and NumPy arrays, each as a header reader (shape, spacing,
affine without the pixels) and a pixel reader into (D, H, W) float32 in the display layout of
`orientation` where the file knows its position in the body. What each format means is in
`readers`' module docstring; DICOM and InVesalius projects have modules of their own (`dicom`, `inv3`).
"""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from PIL import Image, ImageSequence

from ..errors import ScoreinvError
from . import orientation
from .dicom import cause

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
NPZ_KEYS = ("image", "images", "volume", "data", "ground_truth", "arr_0")
H5_KEYS = ("reconstruction_rss", "reconstruction_esc")


def _as_volume(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """2-D -> (1, H, W); 3-D kept; (D, 1, H, W) squeezed; magnitude of complex; float32, finite."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biufc":
        raise ScoreinvError(f"{path}: {what} has dtype {arr.dtype}; expected numbers")
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape[1:]) < 2 or arr.shape[0] < 1:
        raise ScoreinvError(f"{path}: {what} has shape {arr.shape}; expected a 2-D slice (H, W) or a 3-D "
                            "volume (D, H, W) with H, W >= 2")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ScoreinvError(f"{path}: {what} holds NaN or Inf values; expected finite intensities")
    return arr


# --- NIfTI ----------------------------------------------------------------------------------
def _nifti_load(path: Path):
    """(image, stored shape (3,), stored affine) of a NIfTI file, from its header."""
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read NIfTI header ({cause(e)}); expected a "
                            ".nii or .nii.gz file") from e
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ScoreinvError(f"{path}: NIfTI image has shape {img.shape}; expected a 3-D volume (a 4-D series "
                            "must be split into 3-D files first)")
    return img, tuple(shape), orientation.check_affine(img.affine, str(path))


def nifti_header(path: Path) -> tuple[tuple, tuple, np.ndarray]:
    """(shape (D, H, W), spacing (mm), affine) of a NIfTI file in the display layout, from its header."""
    _, shape, affine = _nifti_load(path)
    t = orientation.display_transform(affine, shape, str(path))
    disp = orientation.transformed_affine(affine, shape, t)
    return orientation.transformed_shape(shape, t), orientation.spacing(disp), disp


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(volume (D, H, W) float32 in the display layout, its affine (4, 4) voxel -> RAS mm)."""
    img, shape, affine = _nifti_load(path)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read NIfTI data ({cause(e)}); expected a complete "
                            ".nii or .nii.gz file") from e
    data, disp = orientation.to_display(np.asarray(data), affine, str(path))
    return _as_volume(data, path, "NIfTI data"), disp


# --- NRRD -----------------------------------------------------------------------------------
# NRRD 'space' -> sign of each of its axes in RAS (the NRRD format's anatomical spaces)
NRRD_SPACES = {"right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
               "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
               "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1)}
NRRD_SPATIAL_KINDS = ("domain", "space")


def _nrrd_layout(path: Path):
    """(header, spatial axes, stored spatial shape (3,), affine voxel -> RAS or None, spacing (3,) or None)
    of a NRRD file, in its stored (fastest-first) axis order; a 2-D image gets a third axis of 1."""
    import nrrd

    try:
        h = nrrd.read_header(str(path))
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read NRRD header ({cause(e)}); expected a .nrrd or .nhdr "
                            "file") from e
    sizes = [int(v) for v in np.atleast_1d(h.get("sizes", []))]
    kinds = [str(k).lower() for k in h.get("kinds", ["domain"] * len(sizes))]
    spatial = [i for i, k in enumerate(kinds) if k in NRRD_SPATIAL_KINDS]
    other = [i for i in range(len(sizes)) if i not in spatial]
    if len(kinds) != len(sizes) or len(spatial) not in (2, 3) or any(sizes[i] != 1 for i in other):
        raise ScoreinvError(f"{path}: NRRD image of sizes {sizes} and kinds {kinds}; expected a scalar 2-D "
                            "or 3-D image (axes of another kind than domain/space must have size 1)")
    shape = [sizes[i] for i in spatial] + ([1] if len(spatial) == 2 else [])
    dirs = h.get("space directions")
    space = str(h.get("space", "")).strip().lower()
    affine = spacing = None
    if dirs is not None:
        d = np.asarray(dirs, dtype=np.float64)
        if d.ndim != 2 or d.shape[0] != len(sizes) or not np.isfinite(d[spatial]).all():
            raise ScoreinvError(f"{path}: NRRD 'space directions' {dirs!r} do not give one finite vector per "
                                "spatial axis")
        d = d[spatial]
        if len(spatial) == 2 and d.shape[1] == 3:       # a slice: its normal (1 mm) as the third axis
            n = np.cross(d[0], d[1])
            if not np.linalg.norm(n) > 0:
                raise ScoreinvError(f"{path}: NRRD 'space directions' of the two axes are parallel")
            d = np.vstack([d, n / np.linalg.norm(n)])
        if space in NRRD_SPACES and d.shape == (3, 3):
            a = np.eye(4)
            a[:3, :3] = d.T                                  # column i: the step of axis i in the space
            origin = h.get("space origin")
            a[:3, 3] = np.zeros(3) if origin is None else np.asarray(origin, np.float64).reshape(3)
            affine = orientation.check_affine(np.diag([*NRRD_SPACES[space], 1.0]) @ a, str(path))
        spacing = tuple(float(v) for v in np.linalg.norm(d, axis=1))
        spacing = (*spacing, 1.0)[:3]
    elif h.get("spacings") is not None:
        sp = np.asarray(h["spacings"], np.float64)[spatial]
        spacing = tuple(float(v) if np.isfinite(v) and v > 0 else 1.0 for v in sp) + ((1.0,) if len(sp) == 2 else ())
    return h, spatial, tuple(shape), affine, spacing


def nrrd_header(path: Path) -> tuple[tuple, tuple | None, np.ndarray | None]:
    """(shape (D, H, W), spacing (mm) or None, affine or None) of a NRRD file, from its header."""
    _, _, shape, affine, spacing = _nrrd_layout(path)
    if affine is None:
        return shape[::-1], (spacing[::-1] if spacing else None), None
    t = orientation.display_transform(affine, shape, str(path))
    disp = orientation.transformed_affine(affine, shape, t)
    return orientation.transformed_shape(shape, t), orientation.spacing(disp), disp


def read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(volume (D, H, W) float32, in the display layout when the file has a patient space, and its
    affine (4, 4) voxel -> RAS mm, or None)."""
    import nrrd

    _, _, shape, affine, _ = _nrrd_layout(path)
    try:
        data, _ = nrrd.read(str(path), index_order="F")     # axis i of the array = axis i of the header
        data = np.asarray(data).reshape(shape)               # drops the size-1 axes of other kinds
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read NRRD data ({cause(e)}); expected a complete .nrrd file "
                            "(or .nhdr with its data file)") from e
    if affine is None:
        return _as_volume(np.ascontiguousarray(data.transpose(2, 1, 0)), path, "NRRD data"), None
    data, disp = orientation.to_display(data, affine, str(path))
    return _as_volume(data, path, "NRRD data"), disp


# --- HDF5 (fastMRI) -------------------------------------------------------------------------
def _recon_size(f) -> tuple[int, int] | None:
    if "ismrmrd_header" not in f:
        return None
    try:
        raw = f["ismrmrd_header"][()]
        root = ET.fromstring(raw.decode() if isinstance(raw, bytes) else str(raw))
        ns = {"m": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
        pre = "m:" if ns else ""
        m = root.find(f".//{pre}encoding/{pre}reconSpace/{pre}matrixSize", ns)
        return int(m.find(f"{pre}x", ns).text), int(m.find(f"{pre}y", ns).text)
    except Exception:  # a header we cannot parse: no crop, said in the metadata
        return None


def _h5_choice(f, path: Path, key: str | None) -> str:
    if key is not None:
        if key not in f:
            raise ScoreinvError(f"{path}: no dataset {key!r}; datasets: {', '.join(f.keys())}")
        return key
    for k in (*H5_KEYS, "kspace"):
        if k in f:
            return k
    raise ScoreinvError(f"{path}: no 'reconstruction_rss', 'reconstruction_esc' or 'kspace' dataset "
                        f"(found: {', '.join(f.keys()) or 'none'}); pass the dataset name as h5_key")


def hdf5_header(path: Path, key: str | None = None) -> tuple[tuple, str, bool]:
    """(shape (D, H, W), dataset used, cropped?) from the HDF5 metadata, without reading pixels."""
    try:
        with h5py.File(str(path), "r") as f:
            k = _h5_choice(f, path, key)
            shape = tuple(f[k].shape)
            crop = _recon_size(f) if k == "kspace" else None
    except ScoreinvError:
        raise
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot open HDF5 file ({cause(e)}); expected a complete "
                            ".h5 file") from e
    if k == "kspace":
        if len(shape) not in (3, 4):
            raise ScoreinvError(f"{path}: 'kspace' has shape {shape}; expected (slices, H, W) or "
                                "(slices, coils, H, W)")
        shape = (shape[0], *shape[-2:])
        if crop:
            shape = (shape[0], min(crop[0], shape[1]), min(crop[1], shape[2]))
    return shape, k, bool(crop)


def _ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred, orthonormal inverse 2-D FFT over the last two axes."""
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=ax), axes=ax, norm="ortho"), axes=ax)


def _center_crop(a: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = a.shape[-2:]
    h, w = min(h, H), min(w, W)
    i, j = (H - h) // 2, (W - w) // 2
    return a[..., i:i + h, j:j + w]


def read_hdf5(path: Path, key: str | None = None) -> np.ndarray:
    try:
        with h5py.File(str(path), "r") as f:
            k = _h5_choice(f, path, key)
            ds = f[k]
            if k != "kspace":
                data = np.asarray(ds[()])
            else:
                if ds.ndim not in (3, 4):
                    raise ScoreinvError(f"{path}: 'kspace' has shape {ds.shape}; expected (slices, H, W) or "
                                        "(slices, coils, H, W)")
                crop = _recon_size(f)
                out = []
                for s in range(ds.shape[0]):                             # slice by slice: bounded memory
                    img = np.abs(_ifft2c(np.asarray(ds[s])))
                    if img.ndim == 3:
                        img = np.sqrt((img ** 2).sum(0))                 # root-sum-of-squares over coils
                    out.append(_center_crop(img, *crop) if crop else img)
                data = np.stack(out)
    except ScoreinvError:
        raise
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read HDF5 data ({cause(e)}); expected a complete "
                            ".h5 file") from e
    return _as_volume(data, path, f"HDF5 dataset {k!r}")


# --- 2-D images -----------------------------------------------------------------------------
def _open_image(path: Path):
    try:
        with warnings.catch_warnings():        # a damaged file raises below; Pillow's warnings add nothing
            warnings.simplefilter("ignore")
            return Image.open(str(path))
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot open image ({cause(e)}); expected a PNG, TIFF or "
                            "JPEG file") from e


def image_header(path: Path) -> tuple:
    with _open_image(path) as im:
        return (int(getattr(im, "n_frames", 1)), im.size[1], im.size[0])


def _frame_array(im) -> np.ndarray:
    if im.mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr"):
        rgb = np.asarray(im.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0]
        return np.asarray(im.convert("L"))
    return np.asarray(im)


def read_image(path: Path) -> np.ndarray:
    try:
        with _open_image(path) as im:
            frames = [_frame_array(fr) for fr in ImageSequence.Iterator(im)]
    except ScoreinvError:
        raise
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot decode image ({cause(e)}); the file may be "
                            "truncated or damaged") from e
    if len({f.shape for f in frames}) > 1:
        raise ScoreinvError(f"{path}: frames have different shapes {sorted({f.shape for f in frames})}; "
                            "expected one shape for every slice")
    return _as_volume(np.stack(frames), path, "image")


# --- NumPy ----------------------------------------------------------------------------------
def _npz_key(z, path: Path, key: str | None) -> str:
    names = list(z.files)
    if key is not None:
        if key not in names:
            raise ScoreinvError(f"{path}: no array {key!r}; arrays: {', '.join(names)}")
        return key
    if len(names) == 1:
        return names[0]
    for k in NPZ_KEYS:
        if k in names:
            return k
    raise ScoreinvError(f"{path}: holds arrays {', '.join(names) or 'none'}; expected one array, or one named "
                        f"{', '.join(NPZ_KEYS)} (or pass npz_key)")


def read_numpy(path: Path, key: str | None = None, mmap: bool = False) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(str(path), allow_pickle=False) as z:
                arr = z[_npz_key(z, path, key)]
        else:
            arr = np.load(str(path), allow_pickle=False, mmap_mode="r" if mmap else None)
            if mmap:
                return arr
    except ScoreinvError:
        raise
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read NumPy array ({cause(e)}); expected a complete "
                            ".npy/.npz file of numbers") from e
    return _as_volume(arr, path, "array")


def numpy_header(path: Path, key: str | None = None) -> tuple:
    if path.suffix.lower() == ".npz":
        return read_numpy(path, key).shape
    arr = read_numpy(path, mmap=True)
    shape = arr.shape
    if arr.ndim == 4 and shape[1] == 1:
        shape = (shape[0], *shape[2:])
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or arr.dtype.kind not in "biufc":
        _as_volume(np.asarray(arr), path, "array")     # raises the descriptive error
    return tuple(shape)
