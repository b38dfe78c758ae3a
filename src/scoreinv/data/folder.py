"""Datasets of slices from files on disk: scan, split by patient/volume, normalise, resize.

- Scan: a folder is walked (sorted; hidden entries skipped); a DICOM series is one volume, a
  NIfTI/NRRD/InVesalius/HDF5/NumPy file one volume, a 2-D image a one-slice volume, read by `readers` in the
  one orientation convention of `orientation`. Files of unknown type, DICOM objects without
  an image (DICOMDIR, reports) and files whose header cannot be read are skipped, each with its
  reason (`skipped`, printed by `scoreinv data inspect` and `scoreinv simulate`); pixel data that
  cannot be read raise when the volume is read, naming the file.
- Split (deterministic, seeded): volumes are grouped (`split_by='patient'`: DICOM PatientID,
  else the first folder under the root, so a flat folder groups per file; `'volume'`: every
  volume alone); groups are ordered by a hash of (seed, group name) and cut by `fractions`
  (default 0.8/0.1/0.1; with >= 3 groups every split with a positive fraction gets >= 1; with 2
  groups: train and val). Slices of one group never straddle splits. 'all' = everything.
- Normalisation per volume: 'minmax' (v - min)/(max - min); 'window' clip(hu_to_unit(v, hu_min,
  hu_max), 0, 1) with the one HU mapping of `physics.mar_spectra`, default window [-1024, 3200]
  HU as the reference; 'auto' (default):
  window for volumes in HU (DICOM CT, InVesalius CT), min-max otherwise (MRI, PNG, NIfTI, NRRD, NumPy).
- Slices along `axis` (0 axial, 1 coronal, 2 sagittal for volumes in the display layout); for
  axes 1 and 2 the rows are flipped so that superior is up. One-slice volumes (2-D images) are
  always used as they are.
- Resize keeping the physical aspect ratio (pixel spacing when known): `fit='pad'` (default)
  scales the longer side to S and pads the shorter with 0 (= the volume minimum or hu_min),
  so no anatomy is cut; `fit='crop'` scales the shorter side to S and crops the centre.
  torch.nn.functional.interpolate, 'area' when shrinking, 'bilinear' when enlarging.
Processed volumes are kept in an LRU cache of `cache_mb` megabytes.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScoreinvError
from ..physics.mar_spectra import HU_MAX, HU_MIN, hu_to_unit
from . import dicom
from .base import (
    SliceDataset,
    check_batch_size,
    check_generator,
    check_image_size,
    check_shard,
    derive_seed,
    single_thread,
)
from .phantoms import check_window
from .inv3 import inv3_header
from .formats import hdf5_header, image_header, nifti_header, nrrd_header, numpy_header
from .readers import Skipped, VolumeRef, file_kind, skipped_line

NORMALIZE = ("auto", "minmax", "window")
FITS = ("pad", "crop")
SPLIT_BY = ("patient", "volume")


def _walk(root: Path) -> list[Path]:
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        files += [Path(d) / n for n in sorted(names) if not n.startswith(".")]
    return files


def _header(f: Path, kind: str, key: str | None, top: str, rel: Path):
    """A VolumeRef for a non-DICOM file, or the DICOM header; raises ScoreinvError if unreadable."""
    if kind == "dicom":
        ds = dicom.read_header(f)
        if ds is not None:
            dicom.check_rescale(ds, f)
        return ds
    if kind == "nifti":
        shape, spacing, affine = nifti_header(f)
        return VolumeRef(str(rel), kind, (f,), shape, False, spacing, {"group": top, "affine": affine})
    if kind == "nrrd":
        shape, spacing, affine = nrrd_header(f)
        return VolumeRef(str(rel), kind, (f,), shape, False, spacing, {"group": top, "affine": affine})
    if kind == "inv3":
        shape, spacing, hu = inv3_header(f)
        return VolumeRef(str(rel), kind, (f,), shape, hu, spacing, {"group": top})
    if kind == "hdf5":
        shape, k, cropped = hdf5_header(f, key)
        return VolumeRef(str(rel), kind, (f,), shape, False, None, {"group": top, "dataset": k, "cropped": cropped},
                         key=k)
    if kind == "image":
        return VolumeRef(str(rel), kind, (f,), image_header(f), False, None, {"group": top})
    return VolumeRef(str(rel), kind, (f,), numpy_header(f, key), False, None, {"group": top}, key=key)


def scan(path, key: str | None = None) -> tuple[list[VolumeRef], list[Skipped]]:
    """Volumes under `path` (a folder or one file) from headers only -> (refs, skipped files).

    In a folder, files of unknown type, DICOM objects without an image and files whose header
    cannot be read are skipped, each with its reason; a single file given as `path` raises instead.
    """
    root = Path(path)
    if not root.exists():
        raise ScoreinvError(f"{root}: no such file or folder")
    one = root.is_file()
    files, base = ([root], root.parent) if one else (_walk(root), root)
    refs, skipped, frames = [], [], {}
    for f in files:
        kind = file_kind(f)
        rel = f.relative_to(base)
        top = rel.parts[0] if len(rel.parts) > 1 else str(rel)
        if kind is None:
            if one:
                raise ScoreinvError(f"{f}: unsupported file type; expected DICOM (.dcm), NIfTI (.nii, .nii.gz), "
                                    "NRRD (.nrrd, .nhdr), InVesalius (.inv3), HDF5 (.h5), PNG/TIFF/JPEG/BMP or "
                                    "NumPy (.npy, .npz)")
            skipped.append(Skipped(f, "not an image file"))
            continue
        try:
            got = _header(f, kind, key, top, rel)
        except ScoreinvError as e:
            if one:
                raise
            skipped.append(Skipped(f, str(e).removeprefix(f"{f}: ")))
            continue
        if isinstance(got, VolumeRef):
            refs.append(got)
        elif got is None:                       # DICOM without an image (DICOMDIR, report, RT structure)
            if one:
                raise ScoreinvError(f"{f}: DICOM object without an image (no Rows/Columns); expected an image slice")
            skipped.append(Skipped(f, "DICOM object without an image"))
        else:
            for fr in dicom.frames_of(f, got):
                frames.setdefault(dicom.series_key(fr), []).append(fr)
    for uid, fs in frames.items():
        fs = dicom.sort_frames(fs)
        info = dicom.series_info(fs)
        paths = tuple(dict.fromkeys(fr.path for fr in fs))
        first = fs[0]
        rel = first.path.relative_to(base)
        desc = str(first.ds.get("SeriesDescription", "") or "").strip()
        name = f"{rel.parent}/{desc or 'series ' + uid.split('|')[0][-12:]}" if len(paths) > 1 else str(rel)
        patient = str(first.ds.get("PatientID", "") or "") or (rel.parts[0] if len(rel.parts) > 1 else str(rel))
        refs.append(VolumeRef(name, "dicom", paths, info["shape"], info["hu"], info["spacing"],
                              {"group": patient, "frames": fs, "series": info, "affine": info["affine"],
                               "modality": info["modality"], "series_uid": uid.split("|")[0]}))
    refs.sort(key=lambda r: r.name)
    return refs, skipped


def check_fractions(fractions, name: str = "fractions") -> tuple[float, float, float]:
    """Three split fractions (train > 0, val, test >= 0) summing to 1; `name` is what the user typed."""
    try:
        fr = tuple(float(v) for v in fractions)
    except (TypeError, ValueError):
        raise ScoreinvError(f"{name} must be three numbers (train, val, test), got {fractions!r}") from None
    if len(fr) != 3 or not all(math.isfinite(v) for v in fr) or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1) > 1e-6:
        raise ScoreinvError(f"{name} must be three non-negative numbers (train > 0) summing to 1, got {fractions!r}")
    return fr


def assign_splits(groups: list[str], seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, str]:
    """group name -> 'train' | 'val' | 'test' (deterministic, see the module docstring)."""
    fr = check_fractions(fractions)
    uniq = sorted(set(groups), key=lambda g: (derive_seed(seed, "split", g), g))
    n = len(uniq)
    if n >= 3:
        n_val = max(1, round(fr[1] * n)) if fr[1] > 0 else 0
        n_test = max(1, round(fr[2] * n)) if fr[2] > 0 else 0
        while n - n_val - n_test < 1:
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
    else:
        n_val = 1 if n == 2 and fr[1] > 0 else 0
        n_test = 1 if n == 2 and fr[1] == 0 and fr[2] > 0 else 0
    n_train = n - n_val - n_test
    out = {}
    for i, g in enumerate(uniq):
        out[g] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out


def normalise(data: np.ndarray, mode: str, hu_min: float, hu_max: float, name: str) -> np.ndarray:
    """Per-volume scaling to [0, 1] (module docstring); raises on a constant volume in minmax."""
    if mode == "window":
        return np.clip(hu_to_unit(data, hu_min, hu_max), 0, 1).astype(np.float32)
    lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        raise ScoreinvError(f"{name}: volume is constant ({lo:g}); min-max normalisation needs a range "
                            "(remove the file or use normalize='window')")
    return ((data - lo) / (hi - lo)).astype(np.float32)


def slices_along(data: np.ndarray, axis: int, spacing) -> tuple[np.ndarray, tuple[float, float]]:
    """(n, h, w) slices of a (D, H, W) volume along `axis`, and the in-plane spacing."""
    sp = tuple(spacing) if spacing else (1.0, 1.0, 1.0)
    if data.shape[0] == 1 or axis == 0:
        return data, (sp[1], sp[2])
    if axis == 1:
        return data.transpose(1, 0, 2)[:, ::-1], (sp[0], sp[2])
    return data.transpose(2, 0, 1)[:, ::-1], (sp[0], sp[1])


def resize_slices(sl: np.ndarray, size: int, spacing=(1.0, 1.0), fit: str = "pad") -> torch.Tensor:
    """(n, h, w) in [0, 1] -> (n, 1, S, S), physical aspect kept (module docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(sl, dtype=np.float32)).unsqueeze(1)
    h, w = sl.shape[1:]
    ph, pw = h * float(spacing[0]), w * float(spacing[1])
    scale = size / (max(ph, pw) if fit == "pad" else min(ph, pw))
    nh, nw = max(1, round(ph * scale)), max(1, round(pw * scale))
    if (nh, nw) != (h, w):
        mode = "area" if nh <= h and nw <= w else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kw).clamp_(0, 1)
    if fit == "pad":
        top, left = (size - nh) // 2, (size - nw) // 2
        x = F.pad(x, (left, size - nw - left, top, size - nh - top))
    else:
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    return x.contiguous()


class FolderDataset(SliceDataset):
    """Slices (1, S, S) in [0, 1] from the medical images under a folder (or in one file)."""

    kind = "files"

    def __init__(self, path, split: str, image_size: int, seed: int = 0, axis: int = 0,
                 normalize: str = "auto", hu_min: float = HU_MIN, hu_max: float = HU_MAX,
                 fractions=(0.8, 0.1, 0.1), fit: str = "pad", split_by: str = "patient",
                 cache_mb: float = 4096, h5_key: str | None = None, npz_key: str | None = None):
        if split not in ("train", "val", "test", "all"):
            raise ScoreinvError(f"unknown split {split!r}; expected train, val, test or all")
        if axis not in (0, 1, 2) or isinstance(axis, bool):
            raise ScoreinvError(f"axis must be 0, 1 or 2 (of the (D, H, W) volume), got {axis!r}")
        for nm, v, ch in (("normalize", normalize, NORMALIZE), ("fit", fit, FITS), ("split_by", split_by, SPLIT_BY)):
            if v not in ch:
                raise ScoreinvError(f"unknown {nm} {v!r}; expected one of: {', '.join(ch)}")
        if h5_key is not None and npz_key is not None:
            raise ScoreinvError("give at most one of h5_key and npz_key")
        self.path, self.name = Path(path), str(path)
        self.split, self.image_size, self.seed, self.axis = split, check_image_size(image_size), int(seed), axis
        self.normalize, self.fit, self.split_by = normalize, fit, split_by
        self.hu_min, self.hu_max = check_window(hu_min, hu_max)
        self.fractions = check_fractions(fractions)
        self.cache_bytes = float(cache_mb) * 2 ** 20
        self.refs, self.skipped = scan(self.path, h5_key if h5_key is not None else npz_key)
        if not self.refs:
            raise ScoreinvError(f"{self.path}: no readable volumes found ({skipped_line(self.skipped, self.path)}); "
                                "expected DICOM, NIfTI, NRRD, HDF5, PNG/TIFF/JPEG or NumPy files")
        keys = [r.info["group"] if split_by == "patient" else r.name for r in self.refs]
        table = assign_splits(keys, self.seed, self.fractions)
        self.assignment = [table[k] for k in keys]
        self.index = [(v, s) for v, r in enumerate(self.refs) if split == "all" or self.assignment[v] == split
                      for s in range(self._n_slices(r))]
        if not self.index:
            n = len(set(keys))
            raise ScoreinvError(f"{self.path}: split {split!r} is empty ({len(self.refs)} volume(s) in {n} "
                                f"group(s), fractions {self.fractions}); use split='all' or add volumes")
        self.rank, self.world_size = 0, 1
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _n_slices(self, ref: VolumeRef) -> int:
        return ref.shape[0] if ref.shape[0] == 1 else ref.shape[self.axis]

    def _mode(self, ref: VolumeRef) -> str:
        return ("window" if ref.hu else "minmax") if self.normalize == "auto" else self.normalize

    def volume(self, v: int) -> torch.Tensor:
        """All slices of volume v, processed: (n, 1, S, S)."""
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        ref = self.refs[v]
        vol = ref.read()
        data = normalise(vol.data, self._mode(ref), self.hu_min, self.hu_max, ref.name)
        sl, sp = slices_along(data, self.axis, ref.spacing)
        with single_thread("cpu"):
            out = resize_slices(sl, self.image_size, sp, self.fit)
        self._cache[v] = out
        while len(self._cache) > 1 and sum(t.numel() * 4 for t in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return out

    def __len__(self) -> int:
        return len(self.index)

    def _item(self, i: int) -> torch.Tensor:
        v, s = self.index[i]
        return self.volume(v)[s]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        b, g = check_batch_size(batch_size), check_generator(generator)
        idx = torch.randint(len(self), (b,), generator=g, device=g.device).cpu().tolist()
        return torch.stack([self._item(i) for i in idx]).to(g.device)

    def shard(self, rank: int, world_size: int) -> "FolderDataset":
        rank, world_size = check_shard(rank, world_size)
        if self.world_size != 1:
            raise ScoreinvError(f"{self.path}: this dataset is already a shard; shard the full dataset")
        if world_size > len(self):
            raise ScoreinvError(f"{self.path} ({self.split}): cannot split {len(self)} slices over {world_size} ranks")
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.index = self.index[rank::world_size]
        new.rank, new.world_size = rank, world_size
        new._cache = OrderedDict()
        return new

    def describe(self, values: bool = False) -> dict:
        """Volumes and split sizes; `values=True` also reads every volume for its value range."""
        vols = []
        for v, r in enumerate(self.refs):
            d = {"name": r.name, "kind": r.kind, "shape": list(r.shape), "hu": r.hu, "split": self.assignment[v],
                 "group": r.info["group"], "slices": self._n_slices(r), "normalize": self._mode(r)}
            if r.spacing:
                d["spacing_mm"] = [round(float(s), 4) for s in r.spacing]
            for k in ("modality", "dataset", "cropped"):
                if k in r.info:
                    d[k] = r.info[k]
            if values:
                data = r.read().data
                d["range"] = [float(data.min()), float(data.max())]
            vols.append(d)
        sizes = {s: {"volumes": sum(a == s for a in self.assignment),
                     "slices": sum(self._n_slices(r) for r, a in zip(self.refs, self.assignment) if a == s)}
                 for s in ("train", "val", "test")}
        sizes["all"] = {"volumes": len(self.refs), "slices": sum(self._n_slices(r) for r in self.refs)}
        return {"name": str(self.path), "kind": self.kind, "split": self.split, "image_size": self.image_size,
                "images": len(self), "axis": self.axis, "normalize": self.normalize,
                "hu_window": [self.hu_min, self.hu_max], "fit": self.fit, "split_by": self.split_by,
                "fractions": list(self.fractions), "seed": self.seed, "shard": f"{self.rank}/{self.world_size}",
                "sizes": sizes, "skipped_files": [{"file": str(p), "reason": r} for p, r in self.skipped], "volumes": vols}
