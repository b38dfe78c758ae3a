"""InVesalius 3 project files (.inv3): the image matrix and its spacing.

An .inv3 file is a gzip-compressed tar archive written by InVesalius (GPL-2, CTI Renato
Archer). Its `main.plist` (an Apple property list, read with plistlib) holds, among others:

    matrix: {filename, shape [slices, rows, columns], dtype}   modality ('CT', 'MRI', ...)
    spacing: [column, row, slice] in mm                         orientation: 1 axial, 2 coronal, 3 sagittal

and `matrix.dat` (the name in `matrix.filename`) the raw voxels, C order, little-endian, no
header: exactly prod(shape) x itemsize bytes. Masks, surfaces and measurements are ignored.

Orientation. An axial project stacks the DICOM slices by position, inferior -> superior, and
stores each slice upside down (InVesalius flips the DICOM rows for VTK's bottom-left image
origin: the face lies on the last rows). `read_inv3` flips the rows back, which gives the
display layout of `orientation` (slices inferior -> superior, rows anterior -> posterior,
columns as in the DICOM files, i.e. patient right -> left for the usual axial orientation
(1, 0, 0, 0, 1, 0)). The project records no patient coordinates, so the left-right direction
is this assumption and no affine is returned. Coronal and sagittal projects are refused.
"""
from __future__ import annotations

import plistlib
import tarfile
from pathlib import Path

import numpy as np

from ..errors import ScoreinvError
from .dicom import cause

DTYPES = ("int16", "uint16", "int8", "uint8", "int32", "float32", "float64")
AXIAL = 1


def _plist(tf: tarfile.TarFile, path: Path) -> tuple[dict, tarfile.TarInfo]:
    members = [m for m in tf.getmembers() if m.isfile()]
    heads = [m for m in members if Path(m.name).name == "main.plist"]
    if len(heads) != 1:
        raise ScoreinvError(f"{path}: holds {len(heads)} main.plist files; expected one (an InVesalius 3 project)")
    try:
        info = plistlib.loads(tf.extractfile(heads[0]).read())
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read main.plist ({cause(e)})") from e
    return info, heads[0]


def _geometry(info: dict, path: Path) -> tuple[str, tuple, np.dtype, tuple, bool]:
    """(matrix file name, shape (D, H, W), dtype, spacing (d, h, w) mm, in HU?) from main.plist."""
    try:
        m = info["matrix"]
        name, shape, dtype = str(m["filename"]), tuple(int(v) for v in m["shape"]), str(m["dtype"])
        sx, sy, sz = (float(v) for v in info["spacing"])
        orient = int(info.get("orientation", AXIAL))
    except (KeyError, TypeError, ValueError) as e:
        raise ScoreinvError(f"{path}: main.plist lacks a valid matrix (filename, shape, dtype) or spacing "
                            f"({cause(e)}); expected an InVesalius 3 project") from e
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 2:
        raise ScoreinvError(f"{path}: matrix shape {list(shape)}; expected [slices, rows, columns]")
    if dtype not in DTYPES:
        raise ScoreinvError(f"{path}: matrix dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not all(np.isfinite(v) and v > 0 for v in (sx, sy, sz)):
        raise ScoreinvError(f"{path}: spacing {info['spacing']!r}; expected three positive millimetre values")
    if orient != AXIAL:
        raise ScoreinvError(f"{path}: project orientation {orient} (2 coronal, 3 sagittal); only axial "
                            "projects (1) are supported")
    hu = str(info.get("modality", "")).upper() == "CT"
    return name, shape, np.dtype(dtype).newbyteorder("<"), (sz, sy, sx), hu


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(str(path), "r:gz")
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot open as an InVesalius project ({cause(e)}); expected a "
                            "gzip-compressed tar (.inv3)") from e


def inv3_header(path) -> tuple[tuple, tuple, bool]:
    """(shape (D, H, W), spacing (mm), in HU?) of an .inv3 project, from main.plist."""
    path = Path(path)
    try:
        with _open(path) as tf:
            info, _ = _plist(tf, path)
    except ScoreinvError:
        raise
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read the project ({cause(e)}); the file may be truncated") from e
    _, shape, _, spacing, hu = _geometry(info, path)
    return shape, spacing, hu


def read_inv3(path) -> tuple[np.ndarray, dict]:
    """(volume (D, H, W) float32 in the display layout (module docstring), meta: spacing, hu, modality, name)."""
    path = Path(path)
    try:
        with _open(path) as tf:
            info, head = _plist(tf, path)
            fname, shape, dtype, spacing, hu = _geometry(info, path)
            want = (Path(head.name).parent / fname).as_posix()
            found = [m for m in tf.getmembers() if m.isfile() and Path(m.name).as_posix() == want]
            if not found:
                raise ScoreinvError(f"{path}: no member {fname!r} beside main.plist; the project is incomplete")
            raw = tf.extractfile(found[0]).read()
    except ScoreinvError:
        raise
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read the project ({cause(e)}); the file may be truncated") from e
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise ScoreinvError(f"{path}: {fname} holds {len(raw)} bytes; expected {need} for shape {list(shape)} "
                            f"of {dtype.name}")
    vol = np.frombuffer(raw, dtype=dtype).reshape(shape)[:, ::-1, :].astype(np.float32)
    if not np.isfinite(vol).all():
        raise ScoreinvError(f"{path}: the matrix holds NaN or Inf values")
    meta = {"spacing": spacing, "hu": hu, "modality": str(info.get("modality", "")),
            "name": str(info.get("name", ""))}
    return np.ascontiguousarray(vol), meta
