"""Procedural 3-D CT phantoms: ellipsoids with texture (docs/design.md §9.4).

A phantom volume is one random 2-D phantom of `phantoms.sample_phantoms` (head, chest or abdomen,
textured or plain, in HU) grown into the third dimension: every ellipse becomes an ellipsoid whose
cross-section at height z is the ellipse scaled by s(z) = sqrt(1 − ((z − z0)/c)²) (absent where
|z − z0| ≥ c), and the textures become 3-D plane waves. Coordinates follow `phantom_render`: the
slice covers [−1, 1]², z is in the same units (a pixel is 2/S wide), slice k of D lies at
z_k = (k − (D − 1)/2) Δz with Δz = z_spacing · 2/S (z_spacing: slice spacing in pixels).

Per ellipse slot (HU values and the 2-D layout are those of `phantoms`; z extents here):
- field of view, vertebra: cylinders (the same in every slice);
- body layers (outer, inner, core) and lungs: long ellipsoids centred at z = 0 with c ≥ 1.5 (head:
  c = U(0.8, 1.1), a skull that narrows) so that the nested layers scale together and stay nested;
- organs: c = a · U(1, 3); lesions (nodules in the lungs too): c = a · U(0.7, 1.3); bowel gas:
  c = a · U(0.8, 2); ribs: bands, c = U(0.02, 0.05); all centred at z0 uniform over the slab;
  an organ or lesion cut off by the slab is simply absent there;
- textures (tissue fields, grain): each in-plane wave (f_x, f_y) gains a z frequency
  f_z = |f| U(−1, 1), capped at 0.45 of the z Nyquist 1/(2 Δz), so that the slices of a volume share
  smooth 3-D texture rather than independent 2-D draws;
- vessels: each polyline drifts in-plane by (v_x, v_y) z, |v| ≤ 0.5, and exists over a z range
  z0 ± c, c = U(0.15, 0.5).
Rendering is `phantom_render.render` of one 2-D `PhantomBatch` per slice (the slices' parameters
stacked as a batch), so every slice is exactly a 2-D phantom of the same family: pixel area averages,
values in [0, 1] on the HU window of docs/design.md §7.1.

`phantom_volume` gives a seeded (D, 1, S, S) volume; `write_nifti` stores one in HU with its
affine (the layout of docs/design.md §7.2) for `scoreinv simulate --intensity hu` (`scoreinv data
phantom3d --out vol.nii.gz` does both); `Phantom3D` is a dataset of such volumes' slices (volume index
per slice, for eval's volume metrics), the built-in dataset `phantom3d` of `data.registry`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ScoreinvError, check_choice, check_int, check_range
from . import orientation
from .base import SliceDataset, check_batch_size, check_generator, check_image_size, check_shard, derive_seed
from .phantoms import (AIR, CORE, FOV, INNER, KINDS, LESIONS, LUNGS, N_VESSELS, ORGANS, OUTER, RIBS, SPINE,
                       PhantomBatch, check_window, sample_phantoms)
from .phantom_render import render

INF = float("inf")


def _z_extents(p: PhantomBatch, rng: torch.Generator, half: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, z0) per ellipse slot (K,) for the 2-D phantom p (batch of one), slab half-height `half`."""
    k = p.ellipses.shape[1]

    def u(lo, hi, n=1):
        return lo + (hi - lo) * torch.rand(n, generator=rng, dtype=torch.float64)

    a = torch.maximum(p.ellipses[0, :, 1], p.ellipses[0, :, 2]).double()
    c = torch.full((k,), INF, dtype=torch.float64)
    z0 = torch.zeros(k, dtype=torch.float64)
    head = int(p.kind[0]) == 0
    c_body = u(0.8, 1.1) if head else u(1.5, 3.0)
    for sl in (OUTER, INNER, CORE):
        c[sl] = c_body
    c[LUNGS] = u(1.5, 2.5)
    for sl, lo, hi in ((ORGANS, 1.0, 3.0), (LESIONS, 0.7, 1.3), (AIR, 0.8, 2.0)):
        n = sl.stop - sl.start
        c[sl] = a[sl] * u(lo, hi, n)
        z0[sl] = u(-half, half, n)
    n = RIBS.stop - RIBS.start
    c[RIBS], z0[RIBS] = u(0.02, 0.05, n), u(-half, half, n)
    c[FOV] = c[SPINE] = INF
    return c, z0


def _z_waves(freq: torch.Tensor, rng: torch.Generator, cap: float) -> torch.Tensor:
    """z frequencies (same shape as freq[..., 0]) for in-plane waves freq (..., 2): |f| U(−1, 1), capped."""
    mag = freq.double().norm(dim=-1)
    fz = mag * (2 * torch.rand(mag.shape, generator=rng, dtype=torch.float64) - 1)
    return fz.clamp(-cap, cap)


def slices_of(p: PhantomBatch, z: torch.Tensor, rng: torch.Generator, dz: float) -> PhantomBatch:
    """The D 2-D phantoms (a batch) that are the cross-sections at heights z (D,) of the 3-D phantom
    grown from p (one 2-D phantom) with the z extents, waves and vessel drifts drawn from rng."""
    if len(p) != 1:
        raise ScoreinvError(f"slices_of: expected one 2-D phantom, got {len(p)}")
    d = z.shape[0]
    z = z.double()
    half = float(z.abs().max()) if d > 1 else 0.0
    c, z0 = _z_extents(p, rng, max(half, dz))
    arg = ((z[:, None] - z0[None, :]) / c[None, :]) ** 2                      # (D, K)
    s = torch.sqrt((1 - arg).clamp_min(0))
    present = arg < 1
    rep = p._map(lambda t: t.expand(d, *t.shape[1:]).clone())
    ell = rep.ellipses.double()
    scale = torch.where(present, s, torch.ones_like(s))
    ell[..., 1] *= scale
    ell[..., 2] *= scale
    ell[..., 0] *= present
    rep.ellipses = ell.to(p.ellipses.dtype)
    if p.textured:
        rep.class_weights = rep.class_weights * present[:, None, :].to(rep.class_weights.dtype)
        cap = 0.45 / (2 * dz)
        fz = _z_waves(p.tex_freq[0], rng, cap)                                 # (C, M)
        rep.tex_phase = (p.tex_phase[0].double() + 2 * math.pi * fz * z[:, None, None]).to(p.tex_phase.dtype)
        gz = _z_waves(p.grain_freq[0], rng, cap)                               # (1, G)
        rep.grain_phase = (p.grain_phase[0].double() + 2 * math.pi * gz * z[:, None, None]).to(p.grain_phase.dtype)
        nv = p.vessels.shape[1]
        vessel = torch.arange(nv) % N_VESSELS                                   # segment j belongs to vessel j % V
        drift = (0.5 * (2 * torch.rand(N_VESSELS, 2, generator=rng, dtype=torch.float64) - 1))[vessel]
        vz0 = ((2 * torch.rand(N_VESSELS, generator=rng, dtype=torch.float64) - 1) * max(half, dz))[vessel]
        vc = (0.15 + 0.35 * torch.rand(N_VESSELS, generator=rng, dtype=torch.float64))[vessel]
        shift = drift[None] * z[:, None, None]                                 # (D, segments, 2)
        seg = p.vessels[0].double()[None].repeat(d, 1, 1)
        seg[..., 0:2] += shift
        seg[..., 2:4] += shift
        gone = (z[:, None] - vz0[None]).abs() >= vc[None]                      # (D, segments)
        seg[gone] = 10.0                                                       # far outside the image: no profile
        rep.vessels = seg.to(p.vessels.dtype)
    return rep


def slab_heights(depth: int, size: int, z_spacing: float = 1.0) -> tuple[torch.Tensor, float]:
    """(z (D,) of the slices, Δz) in image units: centred slab, Δz = z_spacing · 2/size."""
    dz = float(z_spacing) * 2.0 / size
    return (torch.arange(depth, dtype=torch.float64) - (depth - 1) / 2) * dz, dz


def phantom_volume(depth: int, size: int, seed: int = 0, *, textured: bool = True, z_spacing: float = 1.0,
                   kind: str | None = None, native_size: int | None = None, hu_min: float | None = None,
                   hu_max: float | None = None) -> torch.Tensor:
    """A seeded 3-D phantom (depth, 1, size, size) float32 in [0, 1] (module docstring).

    z_spacing: slice spacing in pixels (1: isotropic voxels); kind: head, chest or abdomen (default:
    drawn as the 2-D phantoms are); native_size: the resolution the textures are band-limited to
    (default size); hu_min, hu_max: the HU window (default docs/design.md §7.1)."""
    depth = check_int("phantom depth", depth, 1)
    size = check_image_size(size, "phantom size")
    z_spacing = check_range("z_spacing", z_spacing, 1e-3)
    if kind is not None:
        check_choice("kind", kind, KINDS)
    window = {} if hu_min is None and hu_max is None else dict(zip(("hu_min", "hu_max"), check_window(hu_min, hu_max)))
    g = torch.Generator().manual_seed(derive_seed(int(seed), "phantom3d"))
    for _ in range(200):
        p = sample_phantoms(1, g, textured=textured, native_size=native_size or size, **window)
        if kind is None or KINDS[int(p.kind[0])] == kind:
            break
    else:  # the kinds have probabilities 0.25-0.4: 200 misses do not happen
        raise ScoreinvError(f"phantom_volume: no {kind} phantom drawn in 200 tries")
    z, dz = slab_heights(depth, size, z_spacing)
    return render(slices_of(p, z, g, dz), size).float()


def volume_affine(depth: int, size: int, pixel_mm: float, z_spacing: float = 1.0) -> np.ndarray:
    """The RAS affine (4, 4) of a display volume (D, S, S) (docs/design.md §7.2: slices inferior ->
    superior, rows anterior -> posterior, columns right -> left), centred at the origin."""
    check_range("pixel size", pixel_mm, 1e-9)
    dz = pixel_mm * z_spacing
    a = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 3] = dz, -pixel_mm, -pixel_mm, 1.0
    a[:3, 3] = -a[:3, :3] @ (np.array([depth, size, size]) - 1) / 2
    return a


def write_nifti(path, vol: torch.Tensor, pixel_mm: float = 1.0, z_spacing: float = 1.0,
                hu_min: float | None = None, hu_max: float | None = None, description: str = "scoreinv phantom3d",
                overwrite: bool = True) -> str:
    """Write a phantom volume (D, 1, S, S) in [0, 1] as a NIfTI file in HU (the window of
    docs/design.md §7.1 unless given) with the affine of `volume_affine`, through `scoreinv.writers`
    (atomic); `scoreinv simulate --input PATH --intensity hu` reads it back to the same [0, 1] volume.
    overwrite=False refuses an existing file (`atomic.check_new_output`, flag --out). Returns the path."""
    from ..atomic import check_new_output
    from ..physics.mar_spectra import HU_MAX, HU_MIN
    from ..source_record import OutputMeta
    from ..writers import write_volume
    lo, hi = check_window(HU_MIN if hu_min is None else hu_min, HU_MAX if hu_max is None else hu_max)
    check_range("z_spacing", z_spacing, 1e-3)
    v = torch.as_tensor(vol)
    if v.ndim != 4 or v.shape[1] != 1 or v.shape[2] != v.shape[3]:
        raise ScoreinvError(f"write_nifti: expected a volume (D, 1, S, S), got shape {tuple(v.shape)}")
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        raise ScoreinvError(f"write_nifti: {str(path)!r}: expected a .nii or .nii.gz file name")
    check_new_output(path, overwrite=overwrite, flag="--out")
    d, s = v.shape[0], v.shape[2]
    ras = volume_affine(d, s, pixel_mm, z_spacing)
    lps = orientation.LPS @ ras                      # the writers' frame is DICOM LPS (writers docstring)
    corners = lps @ np.stack([np.arange(d), np.zeros(d), np.zeros(d), np.ones(d)])
    meta = OutputMeta(modality="CT", offset=lo, scale=hi - lo, units="HU", pixel_spacing=(pixel_mm, pixel_mm),
                      slice_thickness=pixel_mm * z_spacing, orientation=[1.0, 0, 0, 0, 1.0, 0],
                      positions=corners[:3].T.tolist(), description=description)
    write_volume(path, v[:, 0].double().numpy(), meta, kind="image")
    return str(path)


class Phantom3D(SliceDataset):
    """The slices of `volumes` seeded phantom volumes of `depth` slices each (module docstring), in
    order: image i is slice i % depth of volume i // depth; `index` lists (volume, slice) per image
    (as the real-data and folder datasets do), so eval can score volumes. Splits use disjoint seeds."""

    name = "phantom3d"

    def __init__(self, split: str, image_size: int, seed: int = 0, volumes: int = 2, depth: int = 16,
                 z_spacing: float = 1.0, textured: bool = True):
        check_choice("phantom3d split", split, ("train", "val", "test"))
        self.split, self.image_size, self.seed = split, check_image_size(image_size), int(seed)
        self.volumes, self.depth = check_int("phantom3d volumes", volumes), check_int("phantom3d depth", depth)
        self.z_spacing, self.textured = check_range("z_spacing", z_spacing, 1e-3), bool(textured)
        self.index = [(v, k) for v in range(self.volumes) for k in range(self.depth)]
        self._cache: tuple[int, torch.Tensor] | None = None

    def volume(self, v: int) -> torch.Tensor:
        """Volume v (depth, 1, S, S)."""
        if self._cache is None or self._cache[0] != v:
            self._cache = (v, phantom_volume(self.depth, self.image_size, derive_seed(self.seed, self.split, v),
                                             textured=self.textured, z_spacing=self.z_spacing))
        return self._cache[1]

    def __len__(self) -> int:
        return len(self.index)

    def _item(self, i: int) -> torch.Tensor:
        v, k = self.index[i]
        return self.volume(v)[k]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        b, g = check_batch_size(batch_size), check_generator(generator)
        pick = torch.randint(len(self), (b,), generator=g, device=g.device).cpu()
        return torch.stack([self[int(i)] for i in pick]).to(g.device)

    def shard(self, rank: int, world_size: int) -> "Phantom3D":
        """Whole volumes per rank (a volume's slices stay together)."""
        rank, world_size = check_shard(rank, world_size)
        new = Phantom3D(self.split, self.image_size, self.seed, self.volumes, self.depth, self.z_spacing,
                        self.textured)
        new.index = [(v, k) for v, k in self.index if v % world_size == rank]
        return new

    def describe(self) -> dict:
        return {"name": self.name, "kind": "procedural 3-D CT phantoms (ellipsoids with texture), HU window",
                "split": self.split, "image_size": self.image_size, "volumes": self.volumes, "depth": self.depth,
                "z_spacing": self.z_spacing, "images": len(self)}
