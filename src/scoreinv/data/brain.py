"""Synthetic MRI brain slices from the MNI152 2009 template that nilearn ships (docs/design.md §3.4).

The template (1 mm, 197 x 233 x 189, skull-stripped) and its grey- and white-matter maps come
with nilearn's package data, with no download (the files behind `load_mni152_template`,
`load_mni152_gm_template`, `load_mni152_wm_template`; see load_template).
CSF = clip(brain mask - GM - WM, 0, 1), the mask being template > 0.2 (nilearn's own
brain-mask rule). A fourth channel, the residual of a least-squares fit of
the template by the three tissue maps, keeps anatomy the maps miss (deep nuclei, vessels).

One template is one brain, so each image is made diverse:
- contrast: per-tissue intensities drawn around T1-, T2-, PD- or FLAIR-like families
  (CONTRASTS), plus the residual with a family-dependent sign;
- geometry: a continuous axial position (blend of two template slices), rotation (+-15 deg),
  zoom (0.9..1.1), shift, left-right flip and a smooth random elastic displacement (coarse
  5 x 5 noise, bicubic), in one bilinear `grid_sample` (no through-plane tilt: the 3-D
  sampler costs 20x the 2-D one on CPU);
- a smooth multiplicative bias field exp(b(x, y)) and slight Rician noise;
- per-slice min-max scaling to [0, 1].

Pixel size: the template is cropped to a square of N = 193 pixels around the brain (1 mm each;
`template_maps`). An image size S > N keeps the template's native 1 mm grid: the crop sits
unresampled in the centre of an S x S canvas of S mm (at S = 256 a 256 mm field of view, the
brain about 181 x 145 pixels), so with the geometric augmentations off a slice is the template's
pixels exactly. S <= N fits the crop into the image as before (pixels of N / S mm: 3.0 mm at 64,
1.5 mm at 128), area-prefiltered when N > 2 S. `template_pixel_mm(S)` gives the pixel side.

Held-out slices are far from training slices: axial planes are drawn from slabs of template
z indices (axis 2 of the 1 mm grid, inclusive bounds; z = 0 is MNI z = -72 mm):

    train: [16, 50], [77, 90], [117, 144]     val: [59, 68]     test: [99, 108]

with gaps of 8 slices (51-58, 69-76, 91-98, 109-116) read by no split; each held-out slab lies
between two training slabs, so held-out anatomy (basal ganglia for val, the top of the lateral
ventricles for test) is bracketed by training anatomy. An image of a split reads only the two
template slices around its z, both inside the split's slab.

Orientation: rows run anterior -> posterior, columns patient right -> left (radiological).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScoreinvError
from .procedural import ProceduralDataset

SLABS = {"train": ((16, 50), (77, 90), (117, 144)), "val": ((59, 68),), "test": ((99, 108),)}
SLAB_GAP = 8
Z_LO, Z_HI = 16, 144
# per-tissue intensity (grey matter, white matter, CSF) and residual weight: (centre, +-jitter)
CONTRASTS = {
    "t1": ((0.62, 0.06), (0.90, 0.06), (0.22, 0.08), (0.75, 0.25)),
    "t2": ((0.62, 0.06), (0.42, 0.06), (0.95, 0.05), (-0.4, 0.2)),
    "pd": ((0.78, 0.05), (0.62, 0.05), (0.90, 0.08), (-0.2, 0.2)),
    "flair": ((0.72, 0.06), (0.52, 0.06), (0.10, 0.06), (-0.25, 0.15)),
}
CONTRAST_PROBS = {"t1": 0.4, "t2": 0.3, "pd": 0.15, "flair": 0.15}


TEMPLATE_FILES = ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")


def load_template(use_nilearn: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM) float32 arrays (X, Y, Z) in RAS, each scaled by its maximum.

    These are exactly what nilearn's load_mni152_template / _gm_template / _wm_template return
    at resolution 1 (the package-data files divided by their maximum). By default the files are
    read with nibabel straight from nilearn's package folder, because importing
    nilearn.datasets (and scikit-learn with it) costs seconds; `use_nilearn=True`, or files not
    found there, goes through nilearn's loaders. Neither path touches the network.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        raise ScoreinvError("the brain dataset needs nilearn (pip install nilearn), which ships the MNI152 "
                            "template")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = [folder / f for f in TEMPLATE_FILES]
    if use_nilearn or not all(p.is_file() for p in paths):
        from nilearn import datasets
        imgs = (datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
                datasets.load_mni152_wm_template(resolution=1))
        arrays = [np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs]
    else:
        import nibabel as nib
        arrays = [np.asarray(nib.load(str(p)).get_fdata(dtype=np.float32)) for p in paths]
    return tuple(a / a.max() for a in arrays)


@functools.lru_cache(maxsize=1)
def template_maps() -> np.ndarray:
    """(4, Z, N, N) float32: GM, WM, CSF, residual for z in [Z_LO, Z_HI], cropped to the brain
    and padded to a square; loaded once per process (see load_template)."""
    t1, gm, wm = load_template()
    if not (t1.shape == gm.shape == wm.shape) or t1.ndim != 3:
        raise ScoreinvError(f"MNI152 maps have unexpected shapes {t1.shape}, {gm.shape}, {wm.shape}")
    mask = (t1 > 0.2).astype(np.float32)
    gm, wm = gm * mask, wm * mask
    csf = np.clip(mask - gm - wm, 0, 1)
    inside = mask > 0
    A = np.stack([gm[inside], wm[inside], csf[inside]], 1)
    coef = np.linalg.solve(A.T @ A, A.T @ t1[inside])                     # least squares
    resid = (t1 - (coef[0] * gm + coef[1] * wm + coef[2] * csf)) * mask
    vol = np.stack([gm, wm, csf, resid])[..., Z_LO:Z_HI + 1]             # (4, X, Y, Z)
    vol = vol.transpose(0, 3, 2, 1)[:, :, ::-1, ::-1]                    # (4, Z, Y: A->P, X: R->L)
    ys, xs = np.nonzero(mask[..., Z_LO:Z_HI + 1].transpose(2, 1, 0)[:, ::-1, ::-1].any(0))
    n = int(max(np.ptp(ys), np.ptp(xs))) + 1 + 12
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    out = np.zeros((4, vol.shape[1], n, n), np.float32)
    y0, x0 = cy - n // 2, cx - n // 2
    sy = slice(max(y0, 0), min(y0 + n, vol.shape[2]))
    sx = slice(max(x0, 0), min(x0 + n, vol.shape[3]))
    out[:, :, sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0] = vol[:, :, sy, sx]
    return out


@functools.lru_cache(maxsize=4)
def _volume(size: int, device: str) -> torch.Tensor:
    """(Z, 4, N', N') with N' = min(N, 2 size): area-prefiltered in-plane against aliasing."""
    v = torch.from_numpy(template_maps())
    n = v.shape[-1]
    m = min(n, 2 * size)
    if m < n:
        v = F.interpolate(v, size=(m, m), mode="area")
    return v.transpose(0, 1).contiguous().to(device)


def template_pixel_mm(size: int) -> float:
    """The pixel side (mm) of brain images of size S: 1 (the template's grid) for S > N, else N / S
    (module docstring; N = the crop side of `template_maps`)."""
    n = template_maps().shape[-1]
    return 1.0 if size > n else n / size


def canvas_coords(size: int, n: int, device=None) -> torch.Tensor:
    """(S,) positions, in grid_sample's normalised coordinates of an n-pixel source (align_corners
    False), of the centres of S output pixels: the source stretched over the image for S <= n, else
    the source's own grid, centred (on whole pixels: shifted by half a pixel when S − n is odd), so
    that output pixel i samples source pixel i − ⌊(S − n)/2⌋ exactly."""
    c = (2 * torch.arange(size, device=device, dtype=torch.float32) + 1) / size - 1
    if size > n:
        c = c * (size / n) + ((size - n) % 2) / n
    return c


def slab_slices(split: str) -> list[int]:
    """All template z indices a split may read (inclusive slabs)."""
    return [z for lo, hi in SLABS[split] for z in range(lo, hi + 1)]


class BrainDataset(ProceduralDataset):
    """Axial MRI-like brain slices (1, S, S) in [0, 1] synthesised from the MNI152 template.

    Options: contrasts (subset of CONTRASTS, default all), deform (scale of the geometric
    augmentations, 0 = none, default 1), noise (largest Rician noise level relative to the
    brightest tissue, default 0.02), bias (largest log-amplitude of the bias field, default
    0.25), n_train, n_val, n_test.
    """

    name = "brain"
    kind = "procedural MRI brain slices (MNI152 template)"

    def __init__(self, split: str, image_size: int, seed: int = 0, contrasts=tuple(CONTRASTS),
                 deform: float = 1.0, noise: float = 0.02, bias: float = 0.25, **kw):
        super().__init__(split, image_size, seed, **kw)
        if isinstance(contrasts, str):
            contrasts = [c.strip() for c in contrasts.split(",") if c.strip()]
        contrasts = tuple(str(c).lower() for c in contrasts)
        bad = [c for c in contrasts if c not in CONTRASTS]
        if bad or not contrasts:
            raise ScoreinvError(f"brain: unknown contrasts {bad or contrasts!r}; expected a non-empty "
                                f"subset of {', '.join(CONTRASTS)}")
        for nm, v, hi in (("deform", deform, 3.0), ("noise", noise, 0.5), ("bias", bias, 1.0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ScoreinvError(f"brain: {nm} must be a number in [0, {hi}], got {v!r}")
        self.contrasts, self.deform, self.noise, self.bias = contrasts, float(deform), float(noise), float(bias)

    def options(self) -> dict:
        return {"contrasts": list(self.contrasts), "deform": self.deform, "noise": self.noise,
                "bias": self.bias, "slabs": {k: [list(s) for s in v] for k, v in SLABS.items()},
                "slab_gap": SLAB_GAP, "template": "MNI152 2009 (nilearn package data), axial, 1 mm",
                "pixel_mm": round(template_pixel_mm(self.image_size), 4)}

    def planes(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Axial planes of a batch: template slice k0 (B,) and weight f (B,) of slice k0 + 1;
        z = k0 + f is uniform over the split's slabs and both slices lie inside one slab."""
        g, dev = generator, generator.device
        slabs = torch.tensor(SLABS[self.split], dtype=torch.float32, device=dev)
        pick = torch.multinomial(slabs[:, 1] - slabs[:, 0] + 1, batch, replacement=True, generator=g)
        lo, hi = slabs[pick, 0], slabs[pick, 1]
        z = lo + (hi - lo) * torch.rand(batch, generator=g, device=dev)
        k0 = torch.minimum(z.floor(), hi - 1)
        return k0.long(), z - k0

    def generate(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        g, dev, B, S = generator, generator.device, batch, self.image_size
        u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(shape or (B,), generator=g, device=dev)  # noqa: E731
        vol = _volume(S, str(dev))                                          # (Z, 4, N', N')
        k0, f = self.planes(B, g)
        k0, f = k0 - Z_LO, f.view(B, 1, 1, 1)
        # contrast: per-tissue weights of the family drawn for each image
        names = list(self.contrasts)
        probs = torch.tensor([CONTRAST_PROBS[n] for n in names], device=dev)
        fam = torch.multinomial(probs, B, replacement=True, generator=g)
        table = torch.tensor([CONTRASTS[n] for n in names], device=dev)     # (F, 4, 2)
        w = (table[fam, :, 0] + table[fam, :, 1] * u(-1, 1, B, 4)).view(B, 4, 1, 1)
        n = vol.shape[-1]
        coef = torch.cat([(1 - f) * w, f * w], 1).view(B, 1, 8)             # (B, 1, 2 x 4 maps)
        planes = vol.index_select(0, torch.stack([k0, k0 + 1], 1).flatten()).view(B, 8, n * n)
        src = (coef @ planes).view(B, 1, n, n)                              # (B, 1, N', N')
        # in-plane similarity transform, flip and smooth elastic displacement
        d = self.deform
        ang = u(-1, 1) * math.radians(15) * d
        zoom = 1 + u(-0.1, 0.1) * d
        shift = u(-0.05, 0.05, B, 2) * d
        flip = torch.where(torch.rand(B, generator=g, device=dev) < 0.5 * min(d, 1.0), -1.0, 1.0)
        c = canvas_coords(S, n, dev)                                        # native 1 mm grid for S > N
        yo, xo = torch.meshgrid(c, c, indexing="ij")
        cs, sn = (torch.cos(ang) / zoom).view(B, 1, 1), (torch.sin(ang) / zoom).view(B, 1, 1)
        xs = (cs * xo - sn * yo) * flip.view(B, 1, 1) + shift[:, 0].view(B, 1, 1)
        ys = sn * xo + cs * yo + shift[:, 1].view(B, 1, 1)
        disp = _smooth(torch.randn(B, 2, 5, 5, generator=g, device=dev) * (0.02 * d), S)
        grid = torch.stack([xs + disp[:, 0], ys + disp[:, 1]], -1)         # (B, S, S, 2)
        img = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        img = img.clamp_min(0)
        # bias field and Rician noise, then min-max to [0, 1]
        logb = _smooth(torch.randn(B, 1, 3, 3, generator=g, device=dev).clamp(-2, 2), S)
        img = img * torch.exp(logb * u(0, self.bias).view(B, 1, 1, 1) / 2)
        top = img.flatten(1).amax(1).clamp_min(1e-6).view(B, 1, 1, 1)
        sigma = u(0, self.noise).view(B, 1, 1, 1) * top
        n1 = torch.randn(img.shape, generator=g, device=dev)
        n2 = torch.randn(img.shape, generator=g, device=dev)
        img = torch.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
        lo_v = img.flatten(1).amin(1).view(B, 1, 1, 1)
        hi_v = img.flatten(1).amax(1).view(B, 1, 1, 1)
        return ((img - lo_v) / (hi_v - lo_v).clamp_min(1e-6)).clamp_(0, 1)


@functools.lru_cache(maxsize=16)
def _cubic_matrix(n: int, size: int, device: str) -> torch.Tensor:
    """(size, n): bicubic interpolation of n control values (corners aligned) to size samples."""
    eye = torch.eye(n, device=device).view(n, 1, n, 1)
    return F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=True).view(n, size).T.contiguous()


def _smooth(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling (B, C, n, n) -> (B, C, size, size) as two small matrix products."""
    L = _cubic_matrix(coarse.shape[-1], size, str(coarse.device))
    return L @ coarse @ L.T
