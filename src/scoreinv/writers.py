"""Output writers for reconstructions: .npy, .png, .nii/.nii.gz (nibabel), .dcm (pydicom).

What an output knows of its input (units, geometry, DICOM identity) comes from the measurement
file's `source` record, through `scoreinv.source_record.meta_from_source`.

Values: reconstructions are on the image scale of the model ([0, 1]). `.npy` and `.png` keep
that scale; `.nii.gz` and `.dcm` hold original units, value = offset + scale x image value
(CT: HU; the `source` record gives offset/scale; without it CT uses the paper's window
[-1024, 3200] HU, MRI keeps [0, 1]). Standard-deviation maps use scale x std (no offset).

Geometry: pixel (r, c) of slice k lies at IPP_k + c Δc e_row + r Δr e_col (DICOM, LPS, mm).
The display volume (S, H, W), voxel (k, r, c), has the LPS affine [step, Δr e_col, Δc e_row, IPP_0];
NIfTI files store it in RAS order through `data.orientation.display_to_nifti`, the inverse of how
every reader lays a NIfTI out (docs/design.md §7.2), so a NIfTI read, reconstructed and written
comes back voxel for voxel on its own grid.

Every file is written atomically (`scoreinv.atomic`); a DICOM series folder is built in a
temporary folder beside the target and swapped into place (`atomic.atomic_dir`).
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_dir, atomic_path
from .data import orientation
from .errors import ScoreinvError
from .source_record import HU_WINDOW, IDENTITY_TAGS, OutputMeta

SUPPORTED = (".npy", ".png", ".nii.gz", ".nii", ".dcm")

def _frame(meta: OutputMeta, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(e_row, e_col, positions (n, 3), step (3,), Δr, Δc) with defaults for unknown geometry."""
    dr, dc = meta.pixel_spacing or (1.0, 1.0)
    o = np.asarray(meta.orientation if meta.orientation else [1, 0, 0, 0, 1, 0], float)
    e_row, e_col = o[:3], o[3:]
    thick = meta.slice_thickness or 1.0
    # the slice normal, unless the input stated its slice axis (NIfTI: its sign and any obliquity)
    normal = np.asarray(meta.slice_step, float) / thick if meta.slice_step else np.cross(e_row, e_col)
    if meta.positions is not None and len(meta.positions) == n:
        pos = np.asarray(meta.positions, float)
        step = (pos[-1] - pos[0]) / (n - 1) if n > 1 else normal * thick
        if n > 1 and np.linalg.norm(step) == 0:
            step = normal * thick
    else:
        step = normal * thick
        pos = np.arange(n)[:, None] * step[None]
    return e_row, e_col, pos, step, dr, dc


# --- writers ------------------------------------------------------------------------------------
def output_format(path) -> str:
    """The output format of `path` (one of SUPPORTED); raises ScoreinvError for any other."""
    low = str(path).lower()
    for ext in SUPPORTED:
        if low.endswith(ext):
            return ext
    raise ScoreinvError(f"output {str(path)!r}: unknown format; expected a name ending in one of "
                        f"{', '.join(SUPPORTED)}")


def _check_folder(t: Path) -> None:
    if t.exists() and (not t.is_dir() or any(not (q.name.startswith("IM_") and q.suffix == ".dcm")
                                             for q in t.iterdir())):
        raise ScoreinvError(f"{t}: exists and is not an earlier DICOM output folder (IM_*.dcm only); "
                            "choose another output name")


def check_output(path, n_slices: int) -> str:
    """Check before any work that `path` can take a volume of `n_slices`; returns the format."""
    ext = output_format(path)
    if ext == ".dcm" and n_slices > 1:
        _check_folder(Path(str(path)[: -len(".dcm")]))
    elif Path(path).is_dir():
        raise ScoreinvError(f"output {str(path)!r} is a folder; expected a file name")
    return ext


def std_path(path) -> str:
    """recon.nii.gz -> recon_std.nii.gz (the pixel-wise standard deviation beside the mean)."""
    ext = output_format(path)
    p = str(path)
    return p[: len(p) - len(ext)] + "_std" + p[len(p) - len(ext):]


def write_volume(path, vol: np.ndarray, meta: OutputMeta | None = None, kind: str = "image") -> list[str]:
    """Write `vol` (S, H, W) image-scale values to `path`; returns the files/folders written.

    kind: "image" (a reconstruction) or "std" (a standard-deviation map: no offset, own display range).
    """
    ext = output_format(path)
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or not np.isfinite(vol).all():
        raise ScoreinvError(f"write_volume: expected a finite (S, H, W) volume, got shape {vol.shape}")
    if kind not in ("image", "std"):
        raise ScoreinvError(f"write_volume: unknown kind {kind!r}; expected 'image' or 'std'")
    meta = meta or OutputMeta()
    if ext == ".npy":
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, vol[0] if vol.shape[0] == 1 else vol)
        return [str(path)]
    if ext == ".png":
        return [_write_png(path, vol, kind)]
    if ext in (".nii", ".nii.gz"):
        return [_write_nifti(path, vol, meta, kind, ext)]
    return [_write_dicom(path, vol, meta, kind)]


def _write_png(path, vol: np.ndarray, kind: str) -> str:
    import torch

    from .imaging import grid_array, save_png
    x = torch.from_numpy(vol[:, None])
    if kind == "std":  # its own range, 0 .. max
        x = x / max(float(x.max()), 1e-12)
    save_png(grid_array(x, pad=0 if vol.shape[0] == 1 else 2), path, cmap="magma" if kind == "std" else "gray")
    return str(path)


def check_even_slices(meta: OutputMeta, n: int, path) -> None:
    """Refuse a NIfTI output whose n slice positions are not evenly spaced (a --slices selection, a
    gap in the series): one affine has one slice step, so the middle slices would be misplaced."""
    if meta.positions is None or len(meta.positions) != n or n < 3:
        return
    pos = np.asarray(meta.positions, float)
    step = (pos[-1] - pos[0]) / (n - 1)
    if np.abs(np.diff(pos, axis=0) - step).max() > 0.01 * max(float(np.linalg.norm(step)), 1e-6):
        raise ScoreinvError(f"{path}: the {n} slices are not evenly spaced (a --slices selection or a gap in the "
                            "series), which one NIfTI affine cannot hold; write .dcm (per-slice positions) or "
                            "reconstruct contiguous slices")


def nifti_affine(meta: OutputMeta, n: int, h: int) -> np.ndarray:
    """The RAS affine (4, 4) of the display volume (S, H, W), voxel (k, r, c) (module docstring)."""
    e_row, e_col, pos, step, dr, dc = _frame(meta, n)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = step, dr * e_col, dc * e_row, pos[0]
    return orientation.LPS @ a  # DICOM LPS -> NIfTI RAS


def _write_nifti(path, vol: np.ndarray, meta: OutputMeta, kind: str, ext: str) -> str:
    check_even_slices(meta, vol.shape[0], path)
    img = orientation.display_to_nifti(meta.values(vol, kind).astype(np.float32),
                                       nifti_affine(meta, vol.shape[0], vol.shape[1]))
    # scanner coordinates when the geometry came from DICOM; a NIfTI input's own code; else aligned
    code = 1 if meta.from_dicom else (meta.nifti_code or 2)
    img.set_sform(img.affine, code=code)
    img.set_qform(img.affine, code=code)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = (meta.description + (f" [{meta.units}]" if meta.units else ""))[:79].encode()
    with atomic_path(path, suffix=ext) as tmp:
        nib.save(img, str(tmp))
    return str(path)


SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _rescale(v: np.ndarray, hu: bool) -> tuple[float, float]:
    """(slope, intercept) for unsigned 16-bit storage: integer HU (slope 1) for CT, else 4096 levels."""
    lo, hi = float(v.min()), float(v.max())
    if hu:
        inter = min(HU_WINDOW[0], float(np.floor(lo)))
        return max(1.0, (hi - inter) / 65535.0), inter
    inter = min(0.0, float(np.floor(lo)))
    return ((hi - inter) / 4095.0 if hi > inter else 1.0), inter


def _write_dicom(path, vol: np.ndarray, meta: OutputMeta, kind: str) -> str:
    """One file for one slice; otherwise a folder `name/` with IM_0001.dcm ... (one series)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    n, h, w = vol.shape
    v = meta.values(vol, kind)
    hu = meta.units == "HU" and kind == "image"
    slope, inter = _rescale(v, hu)
    stored = np.clip(np.rint((v - inter) / slope), 0, 65535).astype(np.uint16)
    e_row, e_col, pos, _, dr, dc = _frame(meta, n)
    normal = np.cross(e_row, e_col)
    s = meta.series
    sop_class = SOP_CLASSES.get(meta.modality, SECONDARY_CAPTURE)
    study_uid, frame_uid = s.get("StudyInstanceUID") or generate_uid(), s.get("FrameOfReferenceUID") or generate_uid()
    series_uid = generate_uid()
    now = datetime.datetime.now()
    lo_w, hi_w = np.percentile(v, [1, 99]) if kind == "image" else (0.0, float(v.max()))
    sources = s.get("source_sops") or [None] * n

    def slice_ds(k: int) -> Dataset:
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        fm.TransferSyntaxUID, fm.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = fm
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, fm.MediaStorageSOPInstanceUID
        for tag in IDENTITY_TAGS:
            if tag in s:
                setattr(ds, tag, s[tag])
        ds.PatientID = s.get("PatientID", "scoreinv")
        ds.PatientName = s.get("PatientName", "")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = meta.modality
        ds.SeriesNumber = int(s.get("SeriesNumber", 0) or 0) + (2000 if kind == "std" else 1000)
        ds.SeriesDescription = (meta.description + (" (std)" if kind == "std" else ""))[:64]
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.DerivationDescription = (meta.description + (", pixel-wise posterior standard deviation"
                                                        if kind == "std" else ""))[:1024]
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(f"{c:.6g}") for c in pos[k]]
        ds.ImageOrientationPatient = [float(f"{c:.6g}") for c in (*e_row, *e_col)]
        ds.PixelSpacing = [float(f"{dr:.6g}"), float(f"{dc:.6g}")]
        if meta.slice_thickness:
            ds.SliceThickness = float(f"{meta.slice_thickness:.6g}")
        ds.SliceLocation = float(f"{float(pos[k] @ normal):.6g}")
        if sources[k] and sources[k][1]:
            ref = Dataset()
            ref.ReferencedSOPClassUID = sources[k][0] or sop_class
            ref.ReferencedSOPInstanceUID = sources[k][1]
            ds.SourceImageSequence = [ref]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = h, w
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = float(f"{slope:.10g}"), float(f"{inter:.10g}")
        ds.RescaleType = "HU" if hu else "US"
        ds.WindowCenter = float(f"{(lo_w + hi_w) / 2:.6g}")
        ds.WindowWidth = float(f"{max(hi_w - lo_w, 1e-6):.6g}")
        ds.PixelData = stored[k].tobytes()
        return ds

    if n == 1:
        with atomic_path(path, suffix=".dcm") as tmp:
            slice_ds(0).save_as(tmp, enforce_file_format=True)
        return str(path)
    folder = Path(str(path)[: -len(".dcm")])
    with atomic_dir(folder, check=_check_folder) as tmp:
        for k in range(n):
            slice_ds(k).save_as(tmp / f"IM_{k + 1:04d}.dcm", enforce_file_format=True)
    return str(folder) + os.sep
