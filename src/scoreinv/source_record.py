"""The `source` record of a measurement file, and what an output needs to know of its input.

`scoreinv simulate` writes the record (`describe_source`): how the input images were scaled and,
for DICOM input, the geometry and identity tags needed to write results back into the same study
and frame of reference; for NIfTI input, the geometry from its affine, so that a reconstruction
overlays the input volume. `scoreinv reconstruct` reads it back as an `OutputMeta`
(`meta_from_source`) for the writers (`scoreinv.writers`, whose docstring gives the conventions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .data import dicom, orientation
from .data.formats import nifti_header
from .physics.mar_spectra import HU_MAX, HU_MIN

HU_WINDOW = (HU_MIN, HU_MAX)  # the paper's [0, 1] <-> HU window (docs/design.md §7.1)

# --- the source record --------------------------------------------------------------------------
DICOM_SERIES_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                     "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
                     "Modality", "SeriesInstanceUID", "SeriesNumber", "BodyPartExamined", "PixelSpacing",
                     "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices")
DICOM_SLICE_TAGS = ("ImagePositionPatient", "SliceLocation", "InstanceNumber", "SOPInstanceUID", "SOPClassUID")
IDENTITY_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                 "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "BodyPartExamined")


def _jsonable(v):
    """A pydicom value as JSON: DS/IS stay numbers, multi-values become lists, the rest str."""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return [_jsonable(e) for e in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    return str(v)


def _dicom_tags(ds, names) -> dict:
    out = {}
    for k in names:
        if k in ds and ds[k].value is not None and ds[k].value != "":
            out[k] = _jsonable(ds[k].value)
    return out


def describe_source(path: str, arr: np.ndarray, is_hu: bool, intensity: str, size: int | None, square: bool,
                    dicom_headers: list | None = None, affine=None, positions=None, kind: str | None = None) -> dict:
    """What `simulate.prepare_images(arr, ...)` did, as JSON for the measurement file's `source` key.

    arr: (N, H, W) values as read (`scoreinv.data.readers`, display layout). affine: its (4, 4)
    voxel (k, r, c) -> RAS mm transform from the reader; positions: (N, 3) LPS ImagePositionPatient
    of each slice when the reader knows them exactly (DICOM). Without an affine it is worked out
    from the DICOM headers (stored layout) or the NIfTI file at `path`. dicom_headers: the DICOM
    datasets of the N slices (identity tags), or of the series (one) when slices are not files.

    Original value = offset + scale x image value. Geometry follows padding and resizing: padding
    (p_r, p_c) moves ImagePositionPatient by -(p_c Δc e_row + p_r Δr e_col); resizing m -> size
    (scikit-image keeps the pixel corners) multiplies PixelSpacing by f = m / size and moves the
    first pixel centre by (f - 1) / 2 pixels.
    """
    mode = intensity if intensity != "auto" else ("hu" if is_hu else "minmax")
    offset, scale = {"hu": (HU_WINDOW[0], HU_WINDOW[1] - HU_WINDOW[0]),
                     "minmax": (float(arr.min()), float(arr.max() - arr.min())), "none": (0.0, 1.0)}[mode]
    low = str(path).lower()
    fmt = kind or ("dicom" if dicom_headers else ("nifti" if low.endswith((".nii", ".nii.gz")) else
                                                  "numpy" if low.endswith((".npy", ".npz")) else "image"))
    n, h, w = arr.shape
    m = max(h, w) if (square or size) and h != w else None
    pad = ((m - h) // 2, (m - w) // 2) if m else (0, 0)
    f = ((m or h) / size) if size else 1.0
    shape = [size, size] if size else [m or h, m or w]
    src = {"format": fmt, "units": "HU" if (is_hu and mode != "none") else None,
           "intensity": {"mode": mode, "offset": offset, "scale": scale},
           "resize": {"input_shape": [h, w], "pad": list(pad), "factor": f, "shape": shape}}
    if affine is None and dicom_headers:
        affine, positions = _dicom_stored_geometry(dicom_headers, n)
    elif affine is None and fmt == "nifti":
        _, _, affine = nifti_header(Path(path))
    tags = slices = None
    if dicom_headers:
        tags = _dicom_tags(dicom_headers[0], DICOM_SERIES_TAGS)
        per = dicom_headers if len(dicom_headers) == n else [None] * n
        slices = [_dicom_tags(ds, DICOM_SLICE_TAGS) if ds is not None else {} for ds in per]
    if affine is not None:
        geo, ipp = _frame_from_affine(affine, n, path)
        if positions is not None:
            ipp = [list(map(float, p)) for p in positions]
        if fmt == "nifti":
            geo["nifti_xform_code"] = _nifti_code(path)
        if tags is not None and tags.get("SliceThickness"):
            geo["SliceThickness"] = float(tags["SliceThickness"])
        tags = {**(tags or {}), **geo}
        slices = slices or [{} for _ in range(n)]
        for s, p in zip(slices, ipp):
            s["ImagePositionPatient"] = p
    if tags is not None:
        sp, iop = tags.get("PixelSpacing"), tags.get("ImageOrientationPatient")
        if isinstance(sp, list) and len(sp) == 2:
            dr, dc = float(sp[0]), float(sp[1])
            tags["PixelSpacing"] = [dr * f, dc * f]
            if isinstance(iop, list) and len(iop) == 6:
                e_row, e_col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
                shift = (-pad[1] + (f - 1) / 2) * dc * e_row + (-pad[0] + (f - 1) / 2) * dr * e_col
                for s in slices:
                    if len(s.get("ImagePositionPatient", [])) == 3:
                        s["ImagePositionPatient"] = (np.asarray(s["ImagePositionPatient"], float) + shift).tolist()
        tags["Rows"], tags["Columns"] = shape
        src["dicom" if dicom_headers else "geometry"], src["slices"] = tags, slices
    return src


def _dicom_stored_geometry(headers: list, n: int):
    """(RAS affine, LPS positions) of DICOM slices stacked as stored, or (None, None) without
    ImageOrientationPatient / ImagePositionPatient."""
    frames = [fr for i, ds in enumerate(headers) for fr in dicom.frames_of(Path(f"slice {i}"), ds)]
    if len(frames) != n:
        return None, None
    affine = dicom.stored_affine(frames)
    return (affine, [fr.position.tolist() for fr in frames]) if affine is not None else (None, None)


def _frame_from_affine(affine, n: int, where) -> tuple[dict, list]:
    """The DICOM-style geometry (LPS) of N display slices with RAS affine A (voxel (k, r, c) -> mm):
    Δc e_row = L A[:, 2], Δr e_col = L A[:, 1], step = L A[:, 0], IPP_k = L (A[:, 3] + k A[:, 0]),
    L = diag(-1, -1, 1)."""
    a = orientation.LPS @ orientation.check_affine(affine, str(where))
    step, col1, col0 = a[:3, 0], a[:3, 1], a[:3, 2]
    dz, dr, dc = (float(np.linalg.norm(v)) for v in (step, col1, col0))
    tags = {"PixelSpacing": [dr, dc], "ImageOrientationPatient": [*(col0 / dc), *(col1 / dr)],
            "SliceThickness": dz, "SliceStep": step.tolist()}
    return tags, [(a[:3, 3] + k * step).tolist() for k in range(n)]


def _nifti_code(path) -> int:
    img = nib.load(str(path))
    return int(img.get_sform(coded=True)[1]) or int(img.get_qform(coded=True)[1])


# --- what an output needs to know ---------------------------------------------------------------
@dataclass
class OutputMeta:
    """Units and geometry of an output volume of S slices (H, W).

    original value = offset + scale x image value; pixel_spacing (Δr, Δc) mm; orientation: the
    6 direction cosines (e_row, e_col); positions: (S, 3) ImagePositionPatient per slice.
    """

    modality: str = "OT"
    offset: float = 0.0
    scale: float = 1.0
    units: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    slice_step: list[float] | None = None   # (3,) LPS mm from one slice to the next, when the input says
    orientation: list[float] | None = None
    positions: list[list[float]] | None = None
    series: dict = field(default_factory=dict)  # identity tags, UIDs, source SOPInstanceUIDs
    description: str = "scoreinv reconstruction"
    from_dicom: bool = False
    nifti_code: int | None = None       # sform/qform code of a NIfTI input (0: none), kept on output

    def values(self, x: np.ndarray, kind: str = "image") -> np.ndarray:
        return (self.scale * x if kind == "std" else self.offset + self.scale * x).astype(np.float64)


def meta_from_source(source: dict | None, task: str, n_slices: int, slices: list[int] | None = None,
                     pixel_size: float | None = None, description: str = "scoreinv reconstruction") -> OutputMeta:
    """OutputMeta for `n_slices` output slices (the file's slices `slices`, default all) of a task."""
    if source and "intensity" in source:
        it = source["intensity"]
        offset, scale, units = float(it["offset"]), float(it["scale"]), source.get("units")
    elif task in ("ct", "mar"):
        offset, scale, units = HU_WINDOW[0], HU_WINDOW[1] - HU_WINDOW[0], "HU"
    else:
        offset, scale, units = 0.0, 1.0, None
    meta = OutputMeta(modality="CT" if task in ("ct", "mar") else "MR", offset=offset, scale=scale, units=units,
                      pixel_spacing=(pixel_size, pixel_size) if pixel_size else None, description=description)
    d = (source or {}).get("dicom") or (source or {}).get("geometry")
    if d:
        meta.from_dicom = "dicom" in source
        meta.nifti_code = d.get("nifti_xform_code")
        meta.modality = d.get("Modality", meta.modality)
        if d.get("PixelSpacing"):
            meta.pixel_spacing = (float(d["PixelSpacing"][0]), float(d["PixelSpacing"][1]))
        meta.slice_thickness = float(d["SliceThickness"]) if d.get("SliceThickness") else None
        meta.slice_step = [float(v) for v in d["SliceStep"]] if d.get("SliceStep") else None
        iop = d.get("ImageOrientationPatient")
        meta.orientation = [float(v) for v in iop] if iop else None
        meta.series = {k: d[k] for k in (*IDENTITY_TAGS, "FrameOfReferenceUID", "SeriesInstanceUID", "SeriesNumber")
                       if k in d}
        per = source.get("slices") or []
        idx = list(range(n_slices)) if slices is None else list(slices)
        if len(per) > max(idx, default=-1):
            chosen = [per[i] for i in idx]
            if all(len(s.get("ImagePositionPatient", [])) == 3 for s in chosen):
                meta.positions = [[float(v) for v in s["ImagePositionPatient"]] for s in chosen]
            if meta.from_dicom:
                meta.series["source_sops"] = [(s.get("SOPClassUID"), s.get("SOPInstanceUID")) for s in chosen]
    return meta
