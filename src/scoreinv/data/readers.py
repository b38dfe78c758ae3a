"""Read medical images into float32 volumes (D, H, W) with metadata: the one reader of every
command (`scoreinv simulate`, `scoreinv data inspect`, folder datasets for training and eval).

Layout: the display convention of `orientation` (slices inferior -> superior, rows anterior ->
posterior, columns patient right -> left) for every file that knows its position in the body
(NIfTI, DICOM with ImageOrientationPatient); others keep their stored layout.

Formats (by suffix; DICOM files may also have no suffix and are recognised by their marker):
- DICOM series (.dcm/.dicom/.ima): grouped by SeriesInstanceUID, one series = one volume,
  values through pydicom's modality transform (HU for CT), compressed syntaxes through the
  pylibjpeg plugins; see `dicom`.
- NIfTI (.nii, .nii.gz; nibabel): a 2-D image is one slice, 3-D a volume.
- NRRD (.nrrd, .nhdr with its detached data; pynrrd): scalar 2-D or 3-D images (axes of size 1
  of another kind are dropped). With a patient 'space' (right-anterior-superior,
  left-anterior-superior, left-posterior-superior, or their 3-letter names) the 'space
  directions' and 'space origin' give the affine voxel -> RAS mm, and the volume is rearranged
  to the display layout as NIfTI is; without one (no space, or e.g. scanner-xyz) the stored
  layout is kept, (D, H, W) = (axis 3, axis 2, axis 1) of the file (its fastest axis last), with
  the spacing from 'space directions' or 'spacings'. NRRD records no modality: values are not
  taken as HU (folder datasets: normalize='window' for CT).
- InVesalius projects (.inv3): the CT/MR matrix of the project (see `inv3`).
- fastMRI-style HDF5 (.h5, .hdf5; h5py): 'reconstruction_rss' or 'reconstruction_esc' if
  present, else the magnitude of the centred orthonormal inverse 2-D FFT of 'kspace',
  combined over coils by root-sum-of-squares and cropped to the reconSpace matrix of the
  'ismrmrd_header' when there is one; `key` picks another dataset.
- Images (.png, .tif, .tiff, .jpg, .jpeg, .bmp; Pillow): one slice, or one per frame; colour
  images with unequal channels are converted to luminance.
- NumPy (.npy, .npz): 2-D (one slice) or 3-D arrays; .npz: the only array, or `key`, or the
  first of 'image', 'images', 'volume', 'data', 'ground_truth', 'arr_0'. Complex values -> magnitude.
Every unreadable, truncated or ill-shaped file raises ScoreinvError naming the file, and so does a
constant volume (every voxel one value: nothing to scale or reconstruct).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import ScoreinvError
from . import dicom, inv3
from .formats import IMAGE_SUFFIXES, read_hdf5, read_image, read_nifti, read_nrrd, read_numpy

KINDS = ("dicom", "nifti", "nrrd", "inv3", "hdf5", "image", "numpy")
SKIPPED_LISTED = 10


class Skipped(NamedTuple):
    """A file a folder scan left out, and why."""
    path: Path
    reason: str


def skipped_line(skipped, root=None) -> str:
    """'skipped N file(s): name (reason), ...' (names relative to `root`; at most 10 listed)."""
    def name(p: Path) -> str:
        try:
            return str(Path(p).relative_to(root)) if root is not None else str(p)
        except ValueError:
            return str(p)
    shown = [f"{name(s.path)} ({s.reason})" for s in skipped[:SKIPPED_LISTED]]
    more = f", and {len(skipped) - SKIPPED_LISTED} more" if len(skipped) > SKIPPED_LISTED else ""
    return f"skipped {len(skipped)} file(s): {', '.join(shown)}{more}"


def file_kind(path: Path) -> str | None:
    """'dicom' | 'nifti' | 'nrrd' | 'inv3' | 'hdf5' | 'image' | 'numpy', or None for other files."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".inv3"):
        return "inv3"
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in (".npy", ".npz"):
        return "numpy"
    if dicom.looks_like_dicom(path):
        return "dicom"
    return None


@dataclass
class Volume:
    """data (D, H, W) float32; meta: name, kind, paths, hu, spacing (mm or None), affine (4, 4)
    voxel (k, r, c) -> RAS mm or None, skipped (read_volume); for DICOM also headers (the dataset
    of each slice, or one for the series when the slices were resliced) and positions ((D, 3) LPS
    ImagePositionPatient of each slice's first pixel, or None)."""
    data: np.ndarray
    meta: dict = field(default_factory=dict)


@dataclass
class VolumeRef:
    """A volume found on disk, known from headers only: `read()` loads its pixels."""
    name: str
    kind: str
    paths: tuple
    shape: tuple                      # (D, H, W)
    hu: bool = False
    spacing: tuple | None = None      # (d, h, w) in mm when known
    info: dict = field(default_factory=dict)
    key: str | None = None

    def read(self) -> Volume:
        affine, extra = self.info.get("affine"), {}
        if self.kind == "dicom":
            data = dicom.read_series(self.info["frames"], self.info["series"])
            order = self.info["series"]["slice_order"]
            frames = self.info["frames"]
            extra = {"headers": [frames[k].ds for k in order] if order is not None else [frames[0].ds],
                     "positions": self.info["series"]["positions"]}
        elif self.kind == "nifti":
            data, affine = read_nifti(self.paths[0])
        elif self.kind == "nrrd":
            data, affine = read_nrrd(self.paths[0])
        elif self.kind == "inv3":
            data = inv3.read_inv3(self.paths[0])[0]
        elif self.kind == "hdf5":
            data = read_hdf5(self.paths[0], self.key)
        elif self.kind == "image":
            data = read_image(self.paths[0])
        else:
            data = read_numpy(self.paths[0], self.key)
        where = self.paths[0] if len(self.paths) == 1 else f"DICOM series {self.name}"
        if data.shape != tuple(self.shape):
            raise ScoreinvError(f"{where}: read shape {data.shape} differs from the header's "
                                f"{tuple(self.shape)}; the file may be damaged")
        lo, hi = float(data.min()), float(data.max())
        if not hi > lo:
            raise ScoreinvError(f"{where}: every voxel is {lo:g}; expected an image with contrast (a constant "
                                "image cannot be scaled or reconstructed)")
        meta = {"name": self.name, "kind": self.kind, "paths": [str(p) for p in self.paths], "hu": self.hu,
                "spacing": self.spacing, "affine": affine, **extra,
                **{k: v for k, v in self.info.items() if k not in ("frames", "series", "affine")}}
        return Volume(data, meta)


def read_volume(path, key: str | None = None) -> Volume:
    """Read one file, or the one volume of a folder (a DICOM series), into a Volume.

    Files of the folder that are not images or cannot be read are left out and listed in
    meta['skipped'] (Skipped(path, reason); `skipped_line` words them); a folder of more than
    one volume raises.
    """
    from .folder import scan  # folder builds on this module: imported here to avoid a cycle

    refs, skipped = scan(path, key=key)
    if not refs:
        why = f" ({skipped_line(skipped, path)})" if skipped else ""
        raise ScoreinvError(f"{path}: no image found{why}; expected a DICOM series, NIfTI, NRRD, HDF5, "
                            "PNG/TIFF/JPEG or NumPy file")
    if len(refs) != 1:
        names = ", ".join(r.name for r in refs[:5]) + (", ..." if len(refs) > 5 else "")
        raise ScoreinvError(f"{path}: holds {len(refs)} volumes ({names}); expected exactly one (give one file "
                            "or series folder, or use a folder dataset)")
    vol = refs[0].read()
    vol.meta["skipped"] = list(skipped)
    return vol
