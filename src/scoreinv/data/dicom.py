"""DICOM series: find, group, sort and read into a float32 volume (D, H, W) with pydicom.

- Frames: every frame of every file; an enhanced multi-frame file (CT, MR) brings its frames'
  positions, orientation, pixel spacing and rescale in the Per-frame and Shared Functional
  Groups Sequences, which take precedence over the top-level attributes.
- Grouping: one volume per SeriesInstanceUID and orientation (a localizer series with three
  planes gives three volumes); files without a SeriesInstanceUID: one volume per file.
- Order: by the position of each frame along the slice normal, n . ImagePositionPatient with
  n = e_row x e_col the cross product of the ImageOrientationPatient cosines (not by z alone);
  else by (InstanceNumber, frame); else by (file name, frame).
- Values: pydicom's modality transform (`pydicom.pixels.apply_modality_lut`: RescaleSlope and
  RescaleIntercept, or a Modality LUT Sequence), per frame; a missing slope counts as 1 and a
  missing intercept as 0. No VOI LUT (window) is applied: CT values stay in Hounsfield units.
  MONOCHROME1 is turned into MONOCHROME2 sense, v -> f(s_min) + f(s_max) - v over the stored
  value range [s_min, s_max] (BitsStored, PixelRepresentation) mapped by the transform f. A zero
  or non-finite slope raises.
- Compressed pixel data are decoded by pydicom's decoders: JPEG 2000 through pylibjpeg-openjpeg
  (or Pillow), JPEG (baseline, lossless) and JPEG-LS through pylibjpeg-libjpeg, RLE natively; a
  missing decoder raises, naming the transfer syntax and the package to install.
- Geometry: with ImageOrientationPatient and ImagePositionPatient on every frame the series has
  an affine, and the volume is laid out in the display convention of `orientation`; without
  them it keeps the stored layout. Spacing (mm) follows the layout.
Every problem raises ScoreinvError naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from ..errors import ScoreinvError
from . import orientation

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def cause(e: BaseException) -> str:
    """A library exception in one line, for the end of an error message: 'Type: message'."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


@dataclass
class Frame:
    """One 2-D frame of a DICOM file, known from its header."""
    path: Path
    index: int                       # frame number in its file (0 for single-frame files)
    ds: Dataset                      # the file's header (no pixel data)
    position: np.ndarray | None      # ImagePositionPatient (3,), LPS mm
    iop: np.ndarray | None           # ImageOrientationPatient (6,): e_row, e_col
    pixel_spacing: tuple | None      # (row spacing, column spacing) mm


def looks_like_dicom(path: Path) -> bool:
    """True for a DICOM suffix, or the 'DICM' marker at byte 128 of the file."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_header(path: Path):
    """The DICOM header (no pixel data) of `path`; None for a DICOM object that is not an image
    (DICOMDIR, structured reports, RT structures: no Rows/Columns). Unreadable -> ScoreinvError."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for damaged files
        raise ScoreinvError(f"{path}: cannot read DICOM header ({cause(e)}); expected a "
                            "DICOM file") from e
    if "Rows" not in ds or "Columns" not in ds:
        return None
    return ds


# --- header values, functional groups first -------------------------------------------------
def _group_item(ds, i: int, name: str):
    """Item 0 of sequence `name` in frame i's Per-frame Functional Group, else the Shared one."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        item = seq[i] if groups.startswith("PerFrame") and i < len(seq) else seq[0]
        inner = item.get(name)
        if inner:
            return inner[0]
    return None


def _floats(value, n: int):
    try:
        v = np.asarray([float(x) for x in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.isfinite(v).all() else None


def n_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frames_of(path: Path, ds) -> list[Frame]:
    """The frames of one file, with their geometry from the functional groups or the top level."""
    out = []
    for i in range(n_frames(ds)):
        pos = _group_item(ds, i, "PlanePositionSequence")
        ori = _group_item(ds, i, "PlaneOrientationSequence")
        meas = _group_item(ds, i, "PixelMeasuresSequence")
        ipp = _floats((pos or ds).get("ImagePositionPatient"), 3)
        iop = _floats((ori or ds).get("ImageOrientationPatient"), 6)
        ps = _floats((meas if meas is not None and "PixelSpacing" in meas else ds).get("PixelSpacing"), 2)
        out.append(Frame(path, i, ds, ipp, iop, tuple(ps) if ps is not None and (ps > 0).all() else None))
    return out


def series_key(frame: Frame) -> str:
    uid = str(frame.ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        return f"file:{frame.path}"
    if frame.iop is None:
        return uid
    return uid + "|" + ",".join(f"{v:.3f}" for v in np.round(frame.iop, 3) + 0.0)


def _normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3], iop[3:])


def sort_frames(frames: list[Frame]) -> list[Frame]:
    """Frames of one series along the slice axis (module docstring)."""
    if all(f.position is not None and f.iop is not None for f in frames):
        n = _normal(frames[0].iop)
        key = [float(n @ f.position) for f in frames]
    elif all(f.ds.get("InstanceNumber") is not None for f in frames):
        key = [(int(f.ds.InstanceNumber), f.index) for f in frames]
    else:
        key = [(str(f.path), f.index) for f in frames]
    order = sorted(range(len(frames)), key=lambda i: key[i])
    if isinstance(key[0], float):   # two frames at one position: a duplicate or a mixed series
        for a, b in zip(order, order[1:]):
            if abs(key[b] - key[a]) < 1e-3:
                raise ScoreinvError(f"{frames[a].path.name} and {frames[b].path.name}: two slices of one series at "
                                    f"the same position ({key[a]:.3f} mm along the slice normal); expected one "
                                    "slice per position (remove the duplicate, or split the series)")
    spacings = {tuple(round(float(v), 4) for v in f.pixel_spacing) for f in frames if f.pixel_spacing is not None}
    if len(spacings) > 1:
        raise ScoreinvError(f"{frames[0].path.parent}: one series with several PixelSpacing values "
                            f"{sorted(spacings)}; expected one pixel size per series")
    return [frames[i] for i in order]


def is_hu(ds) -> bool:
    """Values in Hounsfield units: Modality CT, or RescaleType HU (top level or functional groups)."""
    rt = _group_item(ds, 0, "PixelValueTransformationSequence")
    types = {str(ds.get("RescaleType", "")), str(rt.get("RescaleType", "")) if rt is not None else ""}
    return str(ds.get("Modality", "")).upper() == "CT" or "HU" in {t.upper() for t in types}


# --- geometry ---------------------------------------------------------------------------------
def _thickness(frame: Frame) -> float | None:
    meas = _group_item(frame.ds, frame.index, "PixelMeasuresSequence")
    for src in (meas, frame.ds):
        for k in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                v = float(src.get(k)) if src is not None and src.get(k) is not None else None
            except (TypeError, ValueError):
                v = None
            if v and np.isfinite(v) and v > 0:
                return v
    return None


def stored_affine(frames: list[Frame]) -> np.ndarray | None:
    """The RAS affine (4, 4) of the sorted frames stacked as (frame, row, column), or None when a
    frame has no ImageOrientationPatient or ImagePositionPatient."""
    if not all(f.position is not None and f.iop is not None for f in frames):
        return None
    first = frames[0]
    dr, dc = first.pixel_spacing or (1.0, 1.0)
    e_row, e_col = first.iop[:3], first.iop[3:]
    step = (frames[-1].position - first.position) / (len(frames) - 1) if len(frames) > 1 else None
    if step is None or np.linalg.norm(step) < 1e-6:
        normal = _normal(first.iop)
        step = normal / max(np.linalg.norm(normal), 1e-12) * (_thickness(first) or 1.0)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = step, dr * e_col, dc * e_row, first.position
    return orientation.LPS @ a


def series_info(frames: list[Frame]) -> dict:
    """Display shape (D, H, W), spacing (mm), HU flag, affine and layout of sorted frames (headers only)."""
    shapes = {(int(f.ds.Rows), int(f.ds.Columns)) for f in frames}
    where = f"DICOM series in {frames[0].path.parent}"
    if len(shapes) > 1:
        raise ScoreinvError(f"{where} mixes slice shapes {sorted(shapes)}; expected one (Rows, Columns) for "
                            "every slice of a series")
    stored = (len(frames), *shapes.pop())
    first = frames[0]
    affine = stored_affine(frames)
    info = {"hu": is_hu(first.ds), "modality": str(first.ds.get("Modality", "unknown") or "unknown")}
    if affine is None:
        dr, dc = first.pixel_spacing or (1.0, 1.0)
        return {**info, "shape": stored, "spacing": (_thickness(first) or 1.0, dr, dc), "affine": None,
                "transform": None, "positions": None, "slice_order": list(range(len(frames)))}
    t = orientation.display_transform(affine, stored, f"{first.path}")
    shape = orientation.transformed_shape(stored, t)
    disp = orientation.transformed_affine(affine, stored, t)
    positions = order = None
    if int(t[0, 0]) == 0:      # the slices stay slices: keep each one's own position and header
        order = list(range(len(frames)))[::int(t[0, 1])]
        r0, c0 = orientation.source_index(stored, t, (0, 0, 0))[1:]
        a_lps = orientation.LPS @ affine
        inplane = a_lps[:3, 1] * r0 + a_lps[:3, 2] * c0
        positions = [(frames[k].position + inplane).tolist() for k in order]
    sp = orientation.spacing(disp)
    return {**info, "shape": shape, "spacing": sp, "affine": disp, "transform": t, "positions": positions,
            "slice_order": order}


# --- pixel values -----------------------------------------------------------------------------
def _missing_decoder(path: Path, ds) -> str | None:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not ts.is_compressed:
        return None
    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        return f"{path}: pixel data are compressed as {ts.name} ({ts}), which no DICOM decoder reads; " \
               "expected an uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE transfer syntax"
    if dec.is_available:
        return None
    if ts in JPEG2000TransferSyntaxes or "2000" in ts.name:
        pkg = "pylibjpeg pylibjpeg-openjpeg"
    elif ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        pkg = "pylibjpeg pylibjpeg-libjpeg"
    else:
        pkg = "pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg"
    return f"{path}: pixel data are compressed as {ts.name} ({ts}) and no decoder for it is installed; " \
           f"install one with: pip install {pkg}"


def _rescale(ds, i: int, path: Path) -> Dataset:
    """A dataset holding frame i's modality transform for `apply_modality_lut`."""
    item = _group_item(ds, i, "PixelValueTransformationSequence")
    src = item if item is not None else ds
    slope, inter = src.get("RescaleSlope"), src.get("RescaleIntercept")
    if slope is None and inter is None:
        return ds                              # a Modality LUT Sequence, or identity
    out = Dataset()
    try:
        out.RescaleSlope = 1.0 if slope is None else float(slope)
        out.RescaleIntercept = 0.0 if inter is None else float(inter)
    except (TypeError, ValueError):
        raise ScoreinvError(f"{path}: RescaleSlope {slope!r} / RescaleIntercept {inter!r} are not numbers; "
                            "expected numbers") from None
    if not np.isfinite([out.RescaleSlope, out.RescaleIntercept]).all() or out.RescaleSlope == 0:
        raise ScoreinvError(f"{path}: RescaleSlope {out.RescaleSlope:g}, RescaleIntercept "
                            f"{out.RescaleIntercept:g}; expected a finite, non-zero slope (a zero slope maps every "
                            "pixel to one value)")
    return out


def check_rescale(ds, path: Path) -> None:
    """Refuse, from the header, a zero, non-finite or non-numeric rescale of any frame."""
    for i in range(n_frames(ds)):
        _rescale(ds, i, path)


def _stored_range(ds) -> np.ndarray:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    return np.array([0, 2 ** bits - 1], dtype=np.int64)


def frame_values(raw: np.ndarray, ds, i: int, path: Path) -> np.ndarray:
    """Stored values of frame i (H, W) -> modality values (HU for CT), MONOCHROME2 sense, float64."""
    lut = _rescale(ds, i, path)
    v = np.asarray(apply_modality_lut(raw, lut), dtype=np.float64)
    if str(ds.get("PhotometricInterpretation", "")).upper().strip() == "MONOCHROME1":
        ends = np.asarray(apply_modality_lut(_stored_range(ds), lut), dtype=np.float64)
        v = ends.min() + ends.max() - v
    return v


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    """(dataset, stored pixel values (frames, H, W)) of one file."""
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot read DICOM file ({cause(e)}); expected a complete "
                            "DICOM image") from e
    missing = _missing_decoder(path, ds)
    if missing:
        raise ScoreinvError(missing)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ScoreinvError(f"{path}: DICOM image has {ds.SamplesPerPixel} samples per pixel "
                            f"({ds.get('PhotometricInterpretation', '?')}); expected a grayscale (1-sample) image")
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ScoreinvError(f"{path}: cannot decode DICOM pixel data ({cause(e)}); expected "
                            "complete pixel data") from e
    return ds, np.asarray(arr).reshape(-1, int(ds.Rows), int(ds.Columns))


def read_series(frames: list[Frame], info: dict) -> np.ndarray:
    """Pixel values of sorted frames -> (D, H, W) float32 in the layout of `series_info`."""
    files: dict[Path, tuple[Dataset, np.ndarray]] = {}
    out = []
    for f in frames:
        if f.path not in files:
            files[f.path] = _decode(f.path)
        ds, arr = files[f.path]
        if f.index >= arr.shape[0]:
            raise ScoreinvError(f"{f.path}: holds {arr.shape[0]} frame(s), the header says {n_frames(ds)}; "
                                "the file may be damaged")
        out.append(frame_values(arr[f.index], ds, f.index, f.path))
    vol = np.stack(out)
    if not np.isfinite(vol).all():
        raise ScoreinvError(f"DICOM series in {frames[0].path.parent}: pixel values hold NaN or Inf")
    if info.get("transform") is not None:
        vol = orientation.apply(vol, info["transform"])
    return np.ascontiguousarray(vol, dtype=np.float32)
