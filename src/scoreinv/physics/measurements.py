"""The measurement file: a versioned .npz holding measurements and how to rebuild their operator.

Format version 1 (numpy .npz, compressed, written atomically; no pickled objects):

| key | content |
|---|---|
| format_version | int, 1 |
| task | str: ct, mri or mar |
| operator | JSON str: {"kind": one of OPERATOR_KINDS (cartesian_mri, sense_mri, phased_mri, ct, fourier_slice_ct, mar_ct), ...parameters; CT: "geometry": {kind parallel/fan, n, pixel_size (mm), n_det, det_spacing (mm), center, fan: source_distance, detector_distance, detector}} |
| measurements | (N, *meas_shape) float32 (CT, MAR) or complex64 (MRI), one row per slice |
| image_size | int (2,): (H, W) of the images |
| noise | JSON str: {"model": "none" / "poisson" / "gaussian", "level": float, ...} |
| op_<name> | arrays the operator needs: op_mask (MRI k-space mask), op_coil_maps (SENSE), op_phase (phased_mri: the phase estimated from each slice's k-space centre, (N, H, W) radians), op_angles (CT), op_keep (MAR: sinogram entries off the metal trace, (N, V, D)) |
| ground_truth | optional (N, 1, H, W) float32 images in [0, 1] (simulated data) |
| extra_<name> | optional arrays (e.g. MAR: extra_metal_mask, extra_metal_trace, extra_artifact_image, extra_li_image, extra_sinogram) |
| source | optional JSON str: where the images came from and how they were scaled, so results can be written back: {"format": "dicom"/"nifti"/..., "units": "HU" or null, "intensity": {"mode": "hu"/"minmax"/"none", "offset", "scale"} (original value = offset + scale x image value), "resize": {...}, DICOM: "dicom": {PatientID, StudyInstanceUID, FrameOfReferenceUID, Modality, PixelSpacing (adjusted for padding/resizing), ImageOrientationPatient, SliceThickness, Rows, Columns, ...}, "slices": [{"ImagePositionPatient", ...} per slice]; NIfTI: "geometry": the same frame from the file's affine (PixelSpacing, ImageOrientationPatient, SliceThickness, SliceStep, nifti_xform_code) and "slices"} |

`load_measurements` checks the version, every required key, shapes and finiteness, and
raises ScoreinvError naming the file and what was expected; `Measurements.operator()`
rebuilds the operator (for every slice at once: per-slice masks keep their leading N axis).
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import atomic
from ..errors import ScoreinvError, check_choice
from .base import LinearOperator

FORMAT_VERSION = 1
TASKS = ("ct", "mri", "mar")
NOISE_MODELS = ("none", "poisson", "gaussian")
REQUIRED_KEYS = ("format_version", "task", "operator", "measurements", "image_size", "noise")
PER_SLICE_ARRAYS = ("keep", "phase")  # operator arrays that may carry a leading slice axis
TASK_OPERATORS = {"ct": ("ct", "fourier_slice_ct"), "mri": ("cartesian_mri", "sense_mri", "phased_mri"),
                  "mar": ("mar_ct",)}


# --- operator <-> (spec, arrays) ------------------------------------------------------------
def _build_cartesian(spec, arrays):
    from .mri import CartesianMRI
    return CartesianMRI(arrays["mask"], complex_image=bool(spec.get("complex_image", False)))


def _build_sense(spec, arrays):
    from .sense import SenseMRI
    return SenseMRI(arrays["coil_maps"], arrays["mask"], complex_image=bool(spec.get("complex_image", False)))


def _build_phased(spec, arrays):
    from .mri import PhasedMRI
    return PhasedMRI(arrays["mask"], arrays["phase"])


def _ct_geometry(spec, arrays):
    from .geometry import FanGeometry, ParallelGeometry
    g = spec["geometry"]
    if g.get("kind") == "fan":
        return FanGeometry(int(g["n"]), arrays["angles"], float(g["pixel_size"]), float(g["source_distance"]),
                           float(g["detector_distance"]), g["detector"], int(g["n_det"]), float(g["det_spacing"]),
                           tuple(g["center"]))
    return ParallelGeometry(int(g["n"]), arrays["angles"], float(g["pixel_size"]), int(g["n_det"]),
                            float(g["det_spacing"]), tuple(g["center"]))


def _build_ct(spec, arrays):
    g = _ct_geometry(spec, arrays)
    if g.kind == "parallel":
        from .ct import ParallelBeamCT
        return ParallelBeamCT(g)
    try:
        from .fanbeam import FanBeamCT
    except ImportError:
        raise ScoreinvError("this installation has no fan-beam CT operator (scoreinv.physics.fanbeam)") from None
    return FanBeamCT(g)


def _build_fourier_slice(spec, arrays):
    from .fourier_slice import FourierSliceCT
    return FourierSliceCT(_ct_geometry(spec, arrays))


def _build_mar(spec, arrays):
    from .mar import MarOperator
    return MarOperator(_build_ct(spec, arrays), arrays["keep"])


OPERATOR_KINDS = {
    "cartesian_mri": (_build_cartesian, ("mask",)),
    "sense_mri": (_build_sense, ("mask", "coil_maps")),
    "phased_mri": (_build_phased, ("mask", "phase")),
    "ct": (_build_ct, ("angles",)),
    "fourier_slice_ct": (_build_fourier_slice, ("angles",)),
    "mar_ct": (_build_mar, ("angles", "keep")),
}


def geometry_spec(g) -> dict:
    """JSON-able description of a ParallelGeometry / FanGeometry (angles go in op_angles)."""
    d = {"kind": g.kind, "n": g.n, "pixel_size": g.pixel_size, "n_det": g.n_det,
         "det_spacing": g.det_spacing, "center": list(g.center)}
    if g.kind == "fan":
        d.update(source_distance=g.source_distance, detector_distance=g.detector_distance, detector=g.detector)
    return d


def describe_operator(op: LinearOperator) -> tuple[dict, dict]:
    """(spec, arrays) that rebuild `op` through OPERATOR_KINDS; raises for unknown operators."""
    from .mri import CartesianMRI, PhasedMRI
    from .sense import SenseMRI
    if isinstance(op, PhasedMRI):
        return ({"kind": "phased_mri", "phase": "estimated from the fully sampled k-space centre"},
                {"mask": op.mask.cpu().numpy(), "phase": op.phase.detach().cpu().numpy().astype(np.float32)})
    if isinstance(op, CartesianMRI):
        return {"kind": "cartesian_mri", "complex_image": op.complex_image}, {"mask": op.mask.cpu().numpy()}
    if isinstance(op, SenseMRI):
        return ({"kind": "sense_mri", "complex_image": op.complex_image},
                {"mask": op.mask.cpu().numpy(), "coil_maps": op.maps.cpu().numpy().astype(np.complex64)})
    from .mar import MarOperator
    if isinstance(op, MarOperator):
        spec, arrays = describe_operator(op.ct)
        return ({"kind": "mar_ct", "geometry": spec["geometry"]},
                {**arrays, "keep": op.keep.cpu().numpy()})
    from .ct import SparseMatrixCT
    from .fourier_slice import FourierSliceCT
    g = getattr(op, "geometry", None)
    if isinstance(op, FourierSliceCT):
        return {"kind": "fourier_slice_ct", "geometry": geometry_spec(g)}, {"angles": np.asarray(g.angles)}
    if isinstance(op, SparseMatrixCT) and getattr(g, "kind", None) in ("parallel", "fan"):
        return {"kind": "ct", "geometry": geometry_spec(g)}, {"angles": np.asarray(g.angles, dtype=np.float64)}
    raise ScoreinvError(f"cannot store operator {type(op).__name__} in a measurement file; "
                        f"known kinds: {', '.join(OPERATOR_KINDS)}")


# --- the file -------------------------------------------------------------------------------
@dataclass
class Measurements:
    """A loaded measurement file. y: (N, *meas_shape) tensor; ground_truth: (N, 1, H, W) or None."""

    task: str
    spec: dict
    y: torch.Tensor
    image_size: tuple[int, int]
    noise: dict
    arrays: dict = field(default_factory=dict)
    ground_truth: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    path: str | None = None
    source: dict | None = None

    def operator(self, device=None) -> LinearOperator:
        """Rebuild the operator (on `device`); raises ScoreinvError if it does not fit y."""
        where = f"{self.path}: " if self.path else ""
        kind = self.spec.get("kind")
        if kind not in OPERATOR_KINDS:
            raise ScoreinvError(f"{where}unknown operator kind {kind!r}; expected one of: {', '.join(OPERATOR_KINDS)}")
        build, needed = OPERATOR_KINDS[kind]
        missing = [k for k in needed if k not in self.arrays]
        if missing:
            raise ScoreinvError(f"{where}operator {kind!r} needs array(s) {', '.join('op_' + k for k in missing)}")
        if "mask" in needed and tuple(np.shape(self.arrays["mask"])) != tuple(self.image_size):
            raise ScoreinvError(f"{where}op_mask has shape {tuple(np.shape(self.arrays['mask']))}; the k-space mask "
                                f"must fit the images: expected image_size {tuple(self.image_size)} (one sample "
                                "per pixel, DC at (H//2, W//2))")
        try:
            op = build(self.spec, self.arrays)
        except ScoreinvError as e:
            raise ScoreinvError(f"{where}{e}") from None
        except (KeyError, TypeError, ValueError) as e:   # e.g. a geometry value that is not a number
            raise ScoreinvError(f"{where}operator {kind!r}: missing or malformed parameter ({e})") from None
        if tuple(op.image_shape) != tuple(self.image_size):
            raise ScoreinvError(f"{where}operator images are {tuple(op.image_shape)} but image_size is "
                                f"{tuple(self.image_size)}")
        if tuple(self.y.shape[1:]) != tuple(op.meas_shape):
            raise ScoreinvError(f"{where}measurements have shape {tuple(self.y.shape)}; the operator expects "
                                f"(N, {', '.join(map(str, op.meas_shape))})")
        return op.to(device) if device is not None else op

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: int) -> "Measurements":
        """The file's slice `index` alone (per-slice operator masks and extras sliced too)."""
        n = len(self)
        if not 0 <= int(index) < n:
            raise ScoreinvError(f"{self.path or 'measurements'}: slice {index} out of range; expected 0 to {n - 1}")
        i = int(index)
        arrays = {k: (v[i:i + 1] if k in PER_SLICE_ARRAYS and v.ndim == 3 else v) for k, v in self.arrays.items()}
        extras = {k: (v[i:i + 1] if v.ndim >= 1 and v.shape[0] == n else v) for k, v in self.extras.items()}
        gt = self.ground_truth[i:i + 1] if self.ground_truth is not None else None
        source = self.source
        if source is not None and isinstance(source.get("slices"), list) and len(source["slices"]) == n:
            source = {**source, "slices": source["slices"][i:i + 1]}
        return Measurements(self.task, self.spec, self.y[i:i + 1], self.image_size, self.noise, arrays, gt, extras,
                            self.path, source)


def save_measurements(path, task: str, operator: LinearOperator | None, y: torch.Tensor, noise: dict,
                      ground_truth: torch.Tensor | None = None, extras: dict | None = None,
                      spec: dict | None = None, arrays: dict | None = None, source: dict | None = None) -> None:
    """Write a measurement file atomically (format above).

    Give `operator` (described through `describe_operator`) or `spec` + `arrays` directly.
    y: (N, *meas_shape); noise: {"model": ..., "level": ...}; ground_truth: (N, 1, H, W);
    source: optional JSON-able description of the input images (key `source` above).
    """
    check_choice("task", task, TASKS)
    if operator is not None:
        spec, arrays = describe_operator(operator)
        image_size = tuple(operator.image_shape)
        operator.check_measurement(y, "measurements")
    elif spec is None or arrays is None:
        raise ScoreinvError("save_measurements: give an operator, or spec and arrays")
    else:
        image_size = tuple(ground_truth.shape[-2:]) if ground_truth is not None else tuple(spec["image_size"])
    noise = dict(noise)
    check_contents(path, task, spec, noise, y.detach().cpu().numpy())
    out = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "task": np.array(task),
        "operator": np.array(json.dumps(spec)),
        "measurements": y.detach().cpu().numpy(),
        "image_size": np.array(image_size, dtype=np.int64),
        "noise": np.array(json.dumps(noise)),
    }
    for k, v in arrays.items():
        out[f"op_{k}"] = np.asarray(v.detach().cpu().numpy() if torch.is_tensor(v) else v)
    if ground_truth is not None:
        if tuple(ground_truth.shape) != (y.shape[0], 1, *image_size):
            raise ScoreinvError(f"ground_truth: expected shape {(y.shape[0], 1, *image_size)}, "
                                f"got {tuple(ground_truth.shape)}")
        out["ground_truth"] = ground_truth.detach().cpu().numpy().astype(np.float32)
    if source is not None:
        try:
            out["source"] = np.array(json.dumps(source))
        except (TypeError, ValueError) as e:
            raise ScoreinvError(f"source: expected a JSON-able dict ({e})") from None
    for k, v in (extras or {}).items():
        out[f"extra_{k}"] = np.asarray(v.detach().cpu().numpy() if torch.is_tensor(v) else v)
    atomic.savez(path, **out)


def _str(z, key, path) -> str:
    v = z[key]
    if v.dtype.kind != "U" or v.ndim != 0:
        raise ScoreinvError(f"{path}: key {key!r} should be a string, got {v.dtype} shape {v.shape}")
    return str(v)


def _json(z, key, path) -> dict:
    try:
        d = json.loads(_str(z, key, path))
    except json.JSONDecodeError as e:
        raise ScoreinvError(f"{path}: key {key!r} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ScoreinvError(f"{path}: key {key!r} should be a JSON object")
    return d


def check_contents(path, task: str, spec: dict, noise: dict, y: np.ndarray) -> None:
    """What the format's keys must agree on: the operator kind belongs to the task
    (TASK_OPERATORS), MRI k-space is complex and CT/MAR sinograms are real (Fourier-slice CT data
    are complex lines of the sinogram's transform), and the noise record
    names a known model with a finite level >= 0. Raises ScoreinvError naming the file."""
    kind = spec.get("kind")
    if kind not in TASK_OPERATORS[task]:
        raise ScoreinvError(f"{path}: task {task!r} does not match its operator kind {kind!r}; expected "
                            f"{' or '.join(TASK_OPERATORS[task])}")
    if task == "mri" and y.dtype.kind != "c":
        raise ScoreinvError(f"{path}: MRI measurements must be complex k-space, got real {y.dtype}")
    if kind in ("ct", "mar_ct") and y.dtype.kind == "c":
        raise ScoreinvError(f"{path}: {task.upper()} measurements must be real sinograms, got complex {y.dtype}")
    model = noise.get("model", "none")
    if model not in NOISE_MODELS:
        raise ScoreinvError(f"{path}: unknown noise model {model!r}; expected one of {', '.join(NOISE_MODELS)}")
    if model != "none" and "level" not in noise:
        raise ScoreinvError(f"{path}: noise model {model!r} without a level; expected a noise record "
                            "{\"model\": ..., \"level\": number >= 0}")
    level = noise.get("level", 0.0)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not np.isfinite(level) or level < 0:
        raise ScoreinvError(f"{path}: noise level {level!r}; expected a finite number >= 0")


def load_measurements(path) -> Measurements:
    """Read a measurement file written by `save_measurements` (format version 1)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoreinvError(f"{path}: no such measurement file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise ScoreinvError(f"{path}: not a scoreinv measurement file: missing key(s) "
                                    f"{', '.join(missing)} (expected {', '.join(REQUIRED_KEYS)})")
            ver = z["format_version"]
            if ver.ndim != 0 or ver.dtype.kind not in "iu" or int(ver) != FORMAT_VERSION:
                raise ScoreinvError(f"{path}: measurement format version {ver.tolist()!r} is not supported; "
                                    f"expected {FORMAT_VERSION}")
            task = _str(z, "task", path)
            if task not in TASKS:
                raise ScoreinvError(f"{path}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
            spec, noise = _json(z, "operator", path), _json(z, "noise", path)
            size = z["image_size"]
            if size.shape != (2,) or size.dtype.kind not in "iu" or (size < 1).any():
                raise ScoreinvError(f"{path}: image_size should be two positive integers, got {size.tolist()!r}")
            y = z["measurements"]
            if y.ndim < 2 or y.dtype.kind not in "fc":
                raise ScoreinvError(f"{path}: measurements should be a float/complex array (N, ...), "
                                    f"got {y.dtype} shape {y.shape}")
            if not np.isfinite(y).all():
                raise ScoreinvError(f"{path}: measurements contain NaN or Inf")
            check_contents(path, task, spec, noise, y)
            arrays = {k[3:]: z[k] for k in keys if k.startswith("op_")}
            extras = {k[6:]: z[k] for k in keys if k.startswith("extra_")}
            gt = None
            if "ground_truth" in keys:
                gt = torch.from_numpy(z["ground_truth"])
                if tuple(gt.shape) != (y.shape[0], 1, int(size[0]), int(size[1])):
                    raise ScoreinvError(f"{path}: ground_truth has shape {tuple(gt.shape)}; expected "
                                        f"{(y.shape[0], 1, int(size[0]), int(size[1]))}")
                if not gt.is_floating_point() or not torch.isfinite(gt).all():
                    raise ScoreinvError(f"{path}: ground_truth should hold finite float images")
            source = _json(z, "source", path) if "source" in keys else None
            y = torch.from_numpy(y)
    except ScoreinvError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ScoreinvError(f"{path}: unreadable or truncated measurement file ({type(e).__name__}: {e}); "
                            "expected a .npz written by `scoreinv simulate`") from None
    return Measurements(task=task, spec=spec, y=y, image_size=(int(size[0]), int(size[1])), noise=noise,
                        arrays=arrays, ground_truth=gt, extras=extras, path=path, source=source)
