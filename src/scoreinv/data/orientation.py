"""The one orientation convention of scoreinv's image volumes.

A volume is an array (D, H, W) = (slices, rows, columns), laid out as a DICOM viewer shows an
axial slice (radiological display):

    axis 0, slices    inferior -> superior        (RAS z ascending)
    axis 1, rows      anterior -> posterior       (RAS y descending: anterior at the top)
    axis 2, columns   patient right -> left       (RAS x descending: the patient's right on the left)

Every reader that knows where the voxels lie in the body (a NIfTI affine; DICOM
ImageOrientationPatient and ImagePositionPatient) rearranges them to the closest of these
axes with nibabel's orientation tools (`io_orientation`, `ornt_transform`, `apply_orientation`:
axis permutations and flips only, never resampling), as `nibabel.as_closest_canonical` does for
RAS. So a RAS NIfTI, an LPS NIfTI and a DICOM series of the same patient give the same array,
whatever their storage order, and a 3-D volume is always cut into axial slices along axis 0.

A single slice (one voxel thick) stays a single slice: its own plane takes the rows and the
columns, as a viewer shows that plane (coronal: superior at the top, patient right on the left;
sagittal: superior at the top, anterior on the left; axial as above).

Files without a position in the body (PNG/TIFF/JPEG, NumPy, HDF5, DICOM without
ImageOrientationPatient) keep their stored layout: row 0 at the top.

The affine that goes with a volume maps voxel (k, r, c, 1) of the (D, H, W) array to RAS
millimetres; `display_to_nifti` turns a volume and its affine back into a NIfTI image stored
in the closest canonical (RAS) voxel order, the inverse of the reading.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from ..errors import ScoreinvError

# display axis n holds RAS axis DISPLAY[n, 0] running in direction DISPLAY[n, 1]
DISPLAY = np.array([[2, 1], [1, -1], [0, -1]])
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])          # RAS <-> LPS (DICOM patient coordinates), its own inverse


def check_affine(affine, where: str) -> np.ndarray:
    """A (4, 4) float affine whose three axes are finite and of non-zero length; else ScoreinvError."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ScoreinvError(f"{where}: the affine is not a finite 4 x 4 matrix; expected a valid voxel-to-mm "
                            "transform")
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if not (sizes > 1e-9).all() or abs(np.linalg.det(a[:3, :3])) < 1e-12 * max(float(np.prod(sizes)), 1e-300):
        raise ScoreinvError(f"{where}: the affine has a zero-length or non-finite axis (voxel sizes "
                            f"{', '.join(f'{s:g}' for s in sizes)} mm) or two parallel axes; expected a "
                            "non-degenerate affine")
    return a


def display_target(affine, shape) -> np.ndarray:
    """The (3, 2) nibabel orientation of the display layout for a volume of `shape` (module docstring)."""
    start = ornt.io_orientation(affine)
    flat = [i for i in range(3) if shape[i] == 1]
    if flat and int(start[flat[0], 0]) != 2:        # one non-axial slice: its plane takes rows and columns
        s = int(start[flat[0], 0])
        rest = [a for a in (2, 1, 0) if a != s]      # vertical first: superior, then anterior
        return np.array([[s, 1], [rest[0], -1], [rest[1], -1]])
    return DISPLAY.copy()


def display_transform(affine, shape, where: str) -> np.ndarray:
    """The nibabel orientation transform from the stored layout of a `shape` volume to the display."""
    a = check_affine(affine, where)
    if len(shape) != 3:
        raise ScoreinvError(f"{where}: volume of shape {tuple(shape)}; expected 3 axes")
    return ornt.ornt_transform(ornt.io_orientation(a), display_target(a, shape))


def transformed_shape(shape, transform) -> tuple:
    """The shape after `apply_orientation(data, transform)`."""
    out = [0, 0, 0]
    for i, (axis, _) in enumerate(transform):
        out[int(axis)] = int(shape[i])
    return tuple(out)


def transformed_affine(affine, shape, transform) -> np.ndarray:
    """The affine of the array `apply_orientation(data, transform)` (data of `shape`)."""
    return np.asarray(affine, np.float64) @ ornt.inv_ornt_aff(transform, shape)


def source_index(shape, transform, index) -> np.ndarray:
    """The stored voxel index (3,) of display voxel `index` (3,) (a volume of stored `shape`)."""
    return (ornt.inv_ornt_aff(transform, shape) @ np.append(np.asarray(index, np.float64), 1.0))[:3]


def apply(data: np.ndarray, transform) -> np.ndarray:
    """`data` rearranged by an orientation transform (permutation and flips), contiguous."""
    return np.ascontiguousarray(ornt.apply_orientation(data, transform))


def to_display(data: np.ndarray, affine, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(data in the display layout (D, H, W), its affine (4, 4) voxel (k, r, c) -> RAS mm)."""
    t = display_transform(affine, data.shape, where)
    return apply(data, t), transformed_affine(affine, data.shape, t)


def spacing(affine) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three array axes of `affine`."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0))


def display_to_nifti(vol: np.ndarray, affine) -> nib.Nifti1Image:
    """A NIfTI image of a display volume (D, H, W) with its affine, stored in the closest canonical
    (RAS) voxel order: the inverse of reading a canonically stored NIfTI file (same array, same
    affine up to rounding); for any other stored order the same voxels at the same positions."""
    a = check_affine(affine, "output volume")
    return nib.as_closest_canonical(nib.Nifti1Image(np.asarray(vol), a))
