"""DICOM series: find, group by SeriesInstanceUID, sort, read into a float32 volume (pydicom).

- Grouping: one volume per SeriesInstanceUID (files without one: one volume per file).
- Order: by the position of each slice along the slice normal (ImagePositionPatient projected
  on the cross product of the ImageOrientationPatient cosines), else by InstanceNumber, else by
  file name.
- Values: pydicom's modality LUT (RescaleSlope / RescaleIntercept, or a Modality LUT
  Sequence) per file; for CT (Modality 'CT' or RescaleType 'HU') the result is in Hounsfield
  units. MONOCHROME1 images are inverted so that larger is brighter.
- Spacing (mm): (slice spacing from the sorted positions or SliceThickness, PixelSpacing).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ScoreinvError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _pydicom():
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - pydicom is a dependency
        raise ScoreinvError("reading DICOM needs pydicom (pip install pydicom)") from e
    return pydicom


def _modality_lut():
    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    return apply_modality_lut


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
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for damaged files
        raise ScoreinvError(f"{path}: cannot read DICOM header ({type(e).__name__}: {e}); expected a "
                            "DICOM file") from e
    if "Rows" not in ds or "Columns" not in ds:
        return None
    return ds


def _position(ds) -> float | None:
    try:
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,):
        return None
    return float(np.dot(np.cross(iop[:3], iop[3:]), ipp))


def series_key(ds, path: Path) -> str:
    uid = getattr(ds, "SeriesInstanceUID", None)
    return str(uid) if uid else f"file:{path}"


def sort_series(items: list[tuple[Path, object]]) -> list[tuple[Path, object]]:
    """Sort (path, header) pairs of one series along the slice axis."""
    pos = [_position(ds) for _, ds in items]
    if all(p is not None for p in pos):
        order = np.argsort(np.asarray(pos), kind="stable")
    elif all(getattr(ds, "InstanceNumber", None) is not None for _, ds in items):
        order = np.argsort(np.asarray([int(ds.InstanceNumber) for _, ds in items]), kind="stable")
    else:
        order = np.argsort(np.asarray([str(p) for p, _ in items]), kind="stable")
    return [items[i] for i in order]


def is_hu(ds) -> bool:
    return str(getattr(ds, "Modality", "")).upper() == "CT" or \
        str(getattr(ds, "RescaleType", "")).upper() == "HU"


def series_info(items: list[tuple[Path, object]]) -> dict:
    """Shape (D, H, W), spacing and flags of a sorted series, from the headers only."""
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in items}
    if len(shapes) > 1:
        raise ScoreinvError(f"DICOM series in {items[0][0].parent} mixes slice shapes {sorted(shapes)}; "
                            "expected one (Rows, Columns) for every slice of a series")
    frames = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for _, ds in items)
    rows, cols = shapes.pop()
    first = items[0][1]
    try:
        ps = [float(v) for v in first.PixelSpacing]
    except (AttributeError, TypeError, ValueError):
        ps = [1.0, 1.0]
    pos = [_position(ds) for _, ds in items]
    if len(items) > 1 and all(p is not None for p in pos):
        dz = float(np.median(np.abs(np.diff(pos)))) or 1.0
    else:
        try:
            dz = float(first.SliceThickness)
        except (AttributeError, TypeError, ValueError):
            dz = 1.0
    return {"shape": (frames, rows, cols), "spacing": (dz, ps[0], ps[1]), "hu": is_hu(first),
            "modality": str(getattr(first, "Modality", "unknown"))}


def read_series(items: list[tuple[Path, object]]) -> np.ndarray:
    """Pixel data of a sorted series -> (D, H, W) float32 (HU for CT)."""
    pydicom = _pydicom()
    apply = _modality_lut()
    slices = []
    for path, _ in items:
        try:
            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array
        except Exception as e:
            raise ScoreinvError(f"{path}: cannot read DICOM pixel data ({type(e).__name__}: {e}); expected "
                                "a complete, uncompressed or decodable DICOM image") from e
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise ScoreinvError(f"{path}: DICOM image has {ds.SamplesPerPixel} samples per pixel; expected a "
                                "grayscale (1-sample) image")
        arr = np.asarray(apply(arr, ds), dtype=np.float32)
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            arr = arr.max() + arr.min() - arr
        slices.append(arr.reshape(-1, *arr.shape[-2:]))
    shapes = {s.shape[1:] for s in slices}
    if len(shapes) > 1:
        raise ScoreinvError(f"DICOM series in {items[0][0].parent} mixes slice shapes {sorted(shapes)}; "
                            "expected one shape for every slice of a series")
    vol = np.concatenate(slices, 0)
    if not np.isfinite(vol).all():
        raise ScoreinvError(f"DICOM series in {items[0][0].parent}: pixel data hold NaN or Inf")
    return vol
