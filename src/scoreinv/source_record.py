"""The `source` record of a measurement file, and what an output needs to know of its input.

`scoreinv simulate` writes the record (`describe_source`): how the input images were scaled and,
for DICOM input, the geometry and identity tags needed to write results back into the same study
and frame of reference; for NIfTI input, the geometry from its affine, so that a reconstruction
overlays the input volume. `scoreinv reconstruct` reads it back as an `OutputMeta`
(`meta_from_source`) for the writers (`scoreinv.writers`, whose docstring gives the conventions).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ScoreinvError
from .physics.mar_spectra import HU_MAX, HU_MIN

HU_WINDOW = (HU_MIN, HU_MAX)  # the paper's [0, 1] <-> HU window (DESIGN.md §2.6)

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
                    dicom_headers: list | None = None) -> dict:
    """What `simulate.prepare_images(arr, ...)` did, as JSON for the measurement file's `source` key.

    arr: (N, H, W) values as read. Original value = offset + scale x image value. DICOM geometry
    follows padding and resizing: padding (p_r, p_c) moves ImagePositionPatient by
    -(p_c Δc e_row + p_r Δr e_col); resizing m -> size (scikit-image keeps the pixel corners)
    multiplies PixelSpacing by f = m / size and moves the first pixel centre by (f - 1) / 2 pixels.
    """
    mode = intensity if intensity != "auto" else ("hu" if is_hu else "minmax")
    offset, scale = {"hu": (HU_WINDOW[0], HU_WINDOW[1] - HU_WINDOW[0]),
                     "minmax": (float(arr.min()), float(arr.max() - arr.min())), "none": (0.0, 1.0)}[mode]
    low = str(path).lower()
    fmt = "dicom" if dicom_headers else ("nifti" if low.endswith((".nii", ".nii.gz")) else
                                         "numpy" if low.endswith((".npy", ".npz")) else "image")
    _, h, w = arr.shape
    m = max(h, w) if (square or size) and h != w else None
    pad = ((m - h) // 2, (m - w) // 2) if m else (0, 0)
    f = ((m or h) / size) if size else 1.0
    shape = [size, size] if size else [m or h, m or w]
    src = {"format": fmt, "units": "HU" if (is_hu and mode != "none") else None,
           "intensity": {"mode": mode, "offset": offset, "scale": scale},
           "resize": {"input_shape": [h, w], "pad": list(pad), "factor": f, "shape": shape}}
    tags = slices = None
    if dicom_headers:
        tags = _dicom_tags(dicom_headers[0], DICOM_SERIES_TAGS)
        slices = [_dicom_tags(ds, DICOM_SLICE_TAGS) for ds in dicom_headers]
    elif fmt == "nifti" and arr.shape[0] >= 1:
        tags, slices = _nifti_frame(path, arr.shape[0], h)
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


def _nifti_frame(path, n: int, h: int) -> tuple[dict, list[dict]]:
    """The DICOM-style frame (LPS) of the slices `scoreinv simulate` reads from a NIfTI file:
    pixel (r, c) of slice k is voxel (c, H-1-r, k) (module docstring), so with the file's affine A,
    Δc e_row = L A[:, 0], Δr e_col = -L A[:, 1], IPP_k = L (A[:, 3] + (H-1) A[:, 1] + k A[:, 2]),
    L = diag(-1, -1, 1). `nifti_affine` inverts this exactly when the slices are not resized."""
    import nibabel as nib
    img = nib.load(str(path))
    a = np.asarray(img.affine, float)
    lps = np.array([-1.0, -1.0, 1.0])
    col0, col1, col2 = lps * a[:3, 0], -lps * a[:3, 1], lps * a[:3, 2]
    dc, dr, dz = (float(np.linalg.norm(v)) for v in (col0, col1, col2))
    if not all(np.isfinite(v) and v > 0 for v in (dc, dr, dz)):
        raise ScoreinvError(f"{path}: the NIfTI affine has a zero-length or non-finite axis (voxel sizes "
                            f"{dc:g}, {dr:g}, {dz:g} mm); expected a non-degenerate affine")
    code = int(img.get_sform(coded=True)[1]) or int(img.get_qform(coded=True)[1])
    tags = {"PixelSpacing": [dr, dc], "ImageOrientationPatient": [*(col0 / dc), *(col1 / dr)],
            "SliceThickness": dz, "SliceStep": col2.tolist(), "nifti_xform_code": code}
    slices = [{"ImagePositionPatient": (lps * (a[:3, 3] + (h - 1) * a[:3, 1] + k * a[:3, 2])).tolist()}
              for k in range(n)]
    return tags, slices


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
