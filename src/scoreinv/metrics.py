"""Image-quality metrics: PSNR, SSIM, NMSE and the paper's variants (docs/design.md §4.1, §3.3).

Every PSNR/SSIM here works on images clipped to [0, 1] with data range 1, takes batches
x, ref of shape (B, 1, H, W) (real) and returns per-image values of shape (B,) (float64, on
the input's device). Variants:

- full image (`psnr`, `ssim`);
- inscribed-circle region (`psnr_circle`, `ssim_circle`): as in the reference evaluation, both
  images are multiplied by the disc inscribed in the image (zero outside) and the full-image
  metric is taken of the masked pair; PSNR therefore averages the squared error over all H*W
  pixels (the pixels outside the disc contribute zero error);
- region + histogram normalisation (`psnr_hist`, `ssim_hist`): `hist_normalise_pair` first,
  then the circle region (the reference's order);
- MAR (`psnr_mar`, `ssim_mar`): metal pixels set to zero in both images before the metric;
- CT in a fixed HU window (`psnr_hu`, `ssim_hu`, and `psnr_mar_hu`, `ssim_mar_hu`): the [0, 1]
  network scale is mapped back to HU (HU_MIN + x (HU_MAX − HU_MIN), the reference's
  [−1024, 3200] HU), clipped to the window [HU_WINDOW_MIN, HU_WINDOW_MAX] = [−1000, 1000] HU and
  rescaled to [0, 1], i.e. PSNR/SSIM with a data range of 2000 HU (docs/design.md §4.1). Numbers
  on the [0, 1] scale and in this window differ by about 20 log10(4224 / 2000) ≈ 6.5 dB for the
  same error inside the window, so both are reported, under their own names.

Volumes (docs/design.md §9.3; `volume_metrics`): a volume (S, 1, H, W), slices in order, is cut into
axial (S planes of H x W), coronal (H planes of S x W) and sagittal (W planes of S x H) planes;
`psnr_<plane>` and `ssim_<plane>` are the means over the planes of the per-plane metrics above
(PSNR is thus not the same in the three directions: a per-plane mean, as peers report; planes
reconstructed without any error, such as all-air planes outside the body once clipped to a window,
have an infinite PSNR and are left out of the PSNR mean, which is infinite only when every plane
is exact), on the voxel grid (anisotropic voxels are not resampled); SSIM of planes smaller than its 11 x 11 window
is undefined (NaN). The slice-consistency figure `zgrad_rmse` is the RMSE of the error of the
z-gradient, sqrt(mean((D_z x − D_z ref)²)) with (D_z x)_k = x_{k+1} − x_k, on the clipped images:
the inter-slice stripes that slice-by-slice reconstruction leaves (0 for an error constant in z).

SSIM is the Gaussian-window SSIM of Wang et al. (2004) with the settings of
`skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`: an 11-tap Gaussian (truncate 3.5), K1 = 0.01,
K2 = 0.03, SSIM map averaged over the pixels whose window lies inside the image. It is written
here (valid 2-D convolution in float64) because torchmetrics' SSIM with the same settings
differs from scikit-image by up to 4e-3 on 32x32 images (measured), more than our 1e-3 budget.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ScoreinvError, check_choice, check_images
from .physics.mar_spectra import HU_MAX, HU_MIN

HU_WINDOW_MIN, HU_WINDOW_MAX = -1000.0, 1000.0   # the fixed HU window of psnr_hu/ssim_hu (data range 2000 HU)

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5           # int(3.5 * 1.5 + 0.5): scikit-image's truncate = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


# --- input handling -----------------------------------------------------------------------
def _pair(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (B, 1, H, W) real pair of equal shapes; return both as float64 in [0, 1]."""
    for name, t in (("reconstruction", x), ("reference", ref)):
        if torch.is_tensor(t) and t.is_complex():
            raise ScoreinvError(f"{name}: metrics need real images; take .abs() or .real first")
    check_images("reconstruction", x)
    check_images("reference", ref)
    if x.shape != ref.shape:
        raise ScoreinvError(f"reconstruction shape {tuple(x.shape)} differs from reference shape "
                            f"{tuple(ref.shape)}; expected equal (B, 1, H, W) shapes")
    return x.double().clamp(0, 1), ref.to(x.device).double().clamp(0, 1)


def _pixel_mask(mask, like: torch.Tensor, name: str) -> torch.Tensor:
    """A bool mask (H, W), (B, H, W) or (B, 1, H, W) broadcast to `like` (B, 1, H, W)."""
    if not torch.is_tensor(mask):
        mask = torch.as_tensor(np.asarray(mask))
    m = mask.to(like.device)
    if m.ndim == 3:
        m = m.unsqueeze(1)
    if m.ndim == 2:
        m = m.reshape(1, 1, *m.shape)
    if m.ndim != 4 or tuple(m.shape[-2:]) != tuple(like.shape[-2:]) or m.shape[0] not in (1, like.shape[0]) \
            or m.shape[1] != 1:
        raise ScoreinvError(f"{name}: shape {tuple(mask.shape)} does not fit images of shape "
                            f"{tuple(like.shape)}; expected (H, W), (B, H, W) or (B, 1, H, W)")
    if m.dtype != torch.bool:
        if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
            raise ScoreinvError(f"{name}: expected a boolean or 0/1 mask")
        m = m > 0
    return m.expand_as(like)


# --- core metrics -------------------------------------------------------------------------
def _psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)       # identical images -> +inf, as scikit-image


def _gauss_window(device) -> torch.Tensor:
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise ScoreinvError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1} "
                            f"pixels (the Gaussian window), got {h}x{w}")
    g = _gauss_window(x.device)
    gv, gh = g.reshape(1, 1, -1, 1), g.reshape(1, 1, 1, -1)

    def blur(t):                               # valid separable convolution: (B,1,H-10,W-10)
        return F.conv2d(F.conv2d(t, gv), gh)

    mx, my = blur(x), blur(ref)
    vx = blur(x * x) - mx * mx
    vy = blur(ref * ref) - my * my
    cxy = blur(x * ref) - mx * my
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2        # data range 1
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR = 10 log10(1 / MSE) on images clipped to [0, 1], data range 1. (B,1,H,W) x2 -> (B,)."""
    return _psnr(*_pair(x, ref))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Gaussian-window SSIM (Wang et al. 2004; scikit-image settings, see module docstring) on
    images clipped to [0, 1], data range 1. (B,1,H,W) x2 -> (B,)."""
    return _ssim(*_pair(x, ref))


def nmse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Normalised MSE ||x - ref||^2 / ||ref||^2 per image, on the raw (unclipped) values -> (B,)."""
    for name, t in (("reconstruction", x), ("reference", ref)):
        check_images(name, t, channels=None)
    if x.shape != ref.shape:
        raise ScoreinvError(f"reconstruction shape {tuple(x.shape)} differs from reference shape {tuple(ref.shape)}")
    def wide(t):
        return t.to(device=x.device, dtype=torch.complex128 if t.is_complex() else torch.float64)

    x, ref = wide(x), wide(ref)
    den = ref.abs().pow(2).flatten(1).sum(1)
    if bool((den == 0).any()):
        raise ScoreinvError("nmse: a reference image is all zeros; NMSE is undefined for it")
    return (x - ref).abs().pow(2).flatten(1).sum(1) / den


# --- region and histogram variants --------------------------------------------------------
def circle_mask(h: int, w: int, device=None) -> torch.Tensor:
    """Bool (H, W) mask of the disc inscribed in the image: pixel (i, j) is inside when its
    centre (i + 0.5, j + 0.5) lies within min(H, W) / 2 of the image centre (H / 2, W / 2)."""
    i = torch.arange(h, dtype=torch.float64, device=device) + 0.5 - h / 2
    j = torch.arange(w, dtype=torch.float64, device=device) + 0.5 - w / 2
    return (i[:, None] ** 2 + j[None, :] ** 2) <= (min(h, w) / 2) ** 2


def _circle(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = circle_mask(*x.shape[-2:], device=x.device).to(x.dtype)
    return x * m, ref * m


def psnr_circle(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR of the pair after zeroing everything outside the inscribed disc (see module docstring)."""
    return _psnr(*_circle(*_pair(x, ref)))


def ssim_circle(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM of the pair after zeroing everything outside the inscribed disc."""
    return _ssim(*_circle(*_pair(x, ref)))


def histogram_peaks(x: torch.Tensor, bins: int = 255, split: int = 75) -> tuple[torch.Tensor, torch.Tensor]:
    """Two histogram peaks per image of a batch (B, 1, H, W) in [0, 1] -> (low, high), each (B,).

    Exactly: the values (clipped to [0, 1]) are binned into `bins` equal bins over [0, 1]
    (value v goes to bin min(floor(v * bins), bins - 1)); the low peak is the most populated of
    bins 0 .. split-1, the high peak the most populated of bins split .. bins-1 (ties: the lowest
    bin); each peak's location is the mean of the pixel values in its bin, so a two-level
    image's levels are found exactly. Defaults (255 bins, split 75) follow the reference.
    """
    if not 0 < split < bins:
        raise ScoreinvError(f"histogram split bin {split} must lie strictly between 0 and bins = {bins}")
    v = x.double().clamp(0, 1).flatten(1)
    idx = (v * bins).floor().long().clamp_max(bins - 1)
    counts = torch.zeros(v.shape[0], bins, dtype=torch.float64, device=v.device).scatter_add_(1, idx, torch.ones_like(v))
    sums = torch.zeros_like(counts).scatter_add_(1, idx, v)
    lo_bin = counts[:, :split].argmax(1)
    hi_bin = counts[:, split:].argmax(1) + split
    for name, b in (("low", lo_bin), ("high", hi_bin)):
        if bool((counts.gather(1, b[:, None]) == 0).any()):
            raise ScoreinvError(f"histogram normalisation: an image has no pixel in its {name} range "
                                f"({'below' if name == 'low' else 'above'} {split / bins:.3f}); "
                                "expected a two-peak intensity histogram")
    lo = sums.gather(1, lo_bin[:, None])[:, 0] / counts.gather(1, lo_bin[:, None])[:, 0]
    hi = sums.gather(1, hi_bin[:, None])[:, 0] / counts.gather(1, hi_bin[:, None])[:, 0]
    return lo, hi


def hist_normalise(x: torch.Tensor, bins: int = 255, split: int = 75) -> torch.Tensor:
    """Map each image's two histogram peaks (`histogram_peaks`) to 0 and 1 linearly, values
    below the low peak to 0: max((x - low) / (high - low), 0). (B,1,H,W) -> (B,1,H,W) float64."""
    lo, hi = histogram_peaks(x, bins, split)
    lo, hi = lo.reshape(-1, 1, 1, 1), hi.reshape(-1, 1, 1, 1)
    return ((x.double().clamp(0, 1) - lo) / (hi - lo)).clamp_min(0)


def hist_normalise_pair(x: torch.Tensor, ref: torch.Tensor, bins: int = 255,
                        split: int = 75) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's normalisation of a (reconstruction, reference) pair before metrics.

    Each image is `hist_normalise`d with its own peaks; then both are divided by the maximum m
    of the normalised reference (per image) and the reconstruction is clipped to [0, 1], so the
    reference spans exactly [0, 1] and data range 1 holds.
    """
    x, ref = _pair(x, ref)
    xn, rn = hist_normalise(x, bins, split), hist_normalise(ref, bins, split)
    m = rn.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    return (xn / m).clamp(0, 1), rn / m


def psnr_hist(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR after `hist_normalise_pair`, then the inscribed-circle region."""
    return _psnr(*_circle(*hist_normalise_pair(x, ref)))


def ssim_hist(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM after `hist_normalise_pair`, then the inscribed-circle region."""
    return _ssim(*_circle(*hist_normalise_pair(x, ref)))


# --- metal-artifact reduction -------------------------------------------------------------
def _zero_metal(x, ref, metal_mask):
    if metal_mask is None:
        raise ScoreinvError("MAR metrics need the metal mask (metal_mask=...), shape (H, W) or (B, 1, H, W)")
    x, ref = _pair(x, ref)
    m = _pixel_mask(metal_mask, x, "metal_mask")
    return x.masked_fill(m, 0.0), ref.masked_fill(m, 0.0)


def psnr_mar(x: torch.Tensor, ref: torch.Tensor, metal_mask=None) -> torch.Tensor:
    """PSNR with the metal pixels set to 0 in both images (docs/design.md §4.1) -> (B,)."""
    return _psnr(*_zero_metal(x, ref, metal_mask))


def ssim_mar(x: torch.Tensor, ref: torch.Tensor, metal_mask=None) -> torch.Tensor:
    """SSIM with the metal pixels set to 0 in both images -> (B,). (The reference code called
    scikit-image's defaults here, a 7x7 uniform window with data range 2; we keep the Gaussian
    settings and data range 1 of every other table.)"""
    return _ssim(*_zero_metal(x, ref, metal_mask))


def hu_window(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] network scale -> HU -> clipped to [HU_WINDOW_MIN, HU_WINDOW_MAX] -> [0, 1]."""
    hu = HU_MIN + x * (HU_MAX - HU_MIN)
    return ((hu - HU_WINDOW_MIN) / (HU_WINDOW_MAX - HU_WINDOW_MIN)).clamp(0, 1)


def _hu_pair(x, ref):
    x, ref = (check_images(n, t, channels=None) for n, t in (("reconstruction", x), ("reference", ref)))
    return hu_window(x.to(torch.float64)), hu_window(ref.to(torch.float64))


def psnr_hu(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in the HU window [−1000, 1000] (data range 2000 HU) of CT images on the [0, 1] scale."""
    return psnr(*_hu_pair(x, ref))


def ssim_hu(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM in the HU window [−1000, 1000] (data range 2000 HU) of CT images on the [0, 1] scale."""
    return ssim(*_hu_pair(x, ref))


def psnr_mar_hu(x: torch.Tensor, ref: torch.Tensor, metal_mask=None) -> torch.Tensor:
    """`psnr_hu` with metal pixels excluded (set to the window's floor in both images)."""
    x, ref = _hu_pair(x, ref)
    return psnr(*_zero_metal(x, ref, metal_mask))


def ssim_mar_hu(x: torch.Tensor, ref: torch.Tensor, metal_mask=None) -> torch.Tensor:
    """`ssim_hu` with metal pixels excluded (set to the window's floor in both images)."""
    x, ref = _hu_pair(x, ref)
    return ssim(*_zero_metal(x, ref, metal_mask))


# --- volumes ----------------------------------------------------------------------------
PLANES = ("axial", "coronal", "sagittal")
VOLUME_METRICS = tuple(f"{m}_{p}" for p in PLANES for m in ("psnr", "ssim")) + ("zgrad_rmse",)


def _volume(name: str, v: torch.Tensor) -> torch.Tensor:
    check_images(name, v)
    if v.shape[0] < 2:
        raise ScoreinvError(f"{name}: a volume needs at least 2 slices, got {v.shape[0]}")
    return v


def reformat(vol: torch.Tensor, plane: str) -> torch.Tensor:
    """The planes of a volume (S, 1, H, W) as images (P, 1, rows, columns), as a viewer shows them
    for a volume in the layout of docs/design.md §7.2 (slices inferior -> superior): axial (S, 1, H, W)
    as stored; coronal (H, 1, S, W) and sagittal (W, 1, S, H) with superior at the top (the slice
    axis reversed), sagittal with anterior on the left."""
    check_choice("plane", plane, PLANES)
    v = vol[:, 0]
    if plane == "axial":
        return vol
    if plane == "coronal":
        return v.flip(0).permute(1, 0, 2).unsqueeze(1)
    return v.flip(0).permute(2, 0, 1).unsqueeze(1)


def zgrad_rmse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """RMSE of the error of the z-gradient, sqrt(mean((D_z x − D_z ref)²)) of volumes (S, 1, H, W)
    clipped to [0, 1] (module docstring) -> scalar float64 tensor."""
    x, ref = _pair(_volume("reconstruction", x), _volume("reference", ref))
    return ((x[1:] - x[:-1]) - (ref[1:] - ref[:-1])).pow(2).mean().sqrt()


def volume_metrics(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """{psnr_axial, ssim_axial, psnr_coronal, ..., zgrad_rmse} of a volume x against ref, both
    (S, 1, H, W) with slices in order (module docstring): per-plane means (PSNR over the planes with
    some error), NaN for SSIM on planes smaller than its window."""
    x, ref = _pair(_volume("reconstruction", x), _volume("reference", ref))
    out = {}
    for plane in PLANES:
        xp, rp = reformat(x, plane), reformat(ref, plane)
        p = _psnr(xp, rp)
        finite = p[torch.isfinite(p)]
        out[f"psnr_{plane}"] = float(finite.mean()) if finite.numel() else float("inf")
        small = min(xp.shape[-2:]) < 2 * SSIM_RADIUS + 1
        out[f"ssim_{plane}"] = float("nan") if small else float(_ssim(xp, rp).mean())
    out["zgrad_rmse"] = float(zgrad_rmse(x, ref))
    return out


# --- registry and summaries ---------------------------------------------------------------
METRICS: dict[str, Callable[..., torch.Tensor]] = {
    "psnr": psnr, "ssim": ssim, "nmse": nmse,
    "psnr_circle": psnr_circle, "ssim_circle": ssim_circle,
    "psnr_hist": psnr_hist, "ssim_hist": ssim_hist,
    "psnr_mar": psnr_mar, "ssim_mar": ssim_mar,
    "psnr_hu": psnr_hu, "ssim_hu": ssim_hu, "psnr_mar_hu": psnr_mar_hu, "ssim_mar_hu": ssim_mar_hu,
}
NEEDS_METAL_MASK = frozenset({"psnr_mar", "ssim_mar", "psnr_mar_hu", "ssim_mar_hu"})
LOWER_IS_BETTER = frozenset({"nmse"})


def get_metric(name: str) -> Callable[..., torch.Tensor]:
    """The metric function called `name` (see METRICS); unknown names raise ScoreinvError."""
    check_choice("metric", name, METRICS)
    return METRICS[name]


def compute_metrics(names, x: torch.Tensor, ref: torch.Tensor, metal_mask=None) -> dict[str, torch.Tensor]:
    """{name: (B,) values} for each metric name; MAR metrics get `metal_mask`."""
    out = {}
    for name in names:
        fn = get_metric(name)
        out[name] = fn(x, ref, metal_mask=metal_mask) if name in NEEDS_METAL_MASK else fn(x, ref)
    return out


def per_image_records(names, x: torch.Tensor, ref: torch.Tensor, ids=None, metal_mask=None) -> list[dict]:
    """One dict per image: {"id": ids[i] (or i), name: float value, ...}, ready for CSV/JSON."""
    vals = compute_metrics(names, x, ref, metal_mask)
    b = x.shape[0]
    ids = list(range(b)) if ids is None else list(ids)
    if len(ids) != b:
        raise ScoreinvError(f"per_image_records: got {len(ids)} ids for a batch of {b} images")
    return [{"id": ids[i], **{k: float(v[i]) for k, v in vals.items()}} for i in range(b)]


def summarise(values, ddof: int = 0) -> tuple[float, float]:
    """(mean, standard deviation) of per-image values (the paper's "mean ± std").

    `ddof` = 0 gives the population std (numpy's default, as the reference). NaN raises; an
    infinite value (a perfect PSNR) gives mean +-inf and std +inf.
    """
    v = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ScoreinvError("summarise: no values given")
    if np.isnan(v).any():
        raise ScoreinvError("summarise: values contain NaN; a reconstruction or metric failed")
    if v.size - ddof <= 0:
        raise ScoreinvError(f"summarise: need more than ddof = {ddof} values, got {v.size}")
    if np.isinf(v).any():                     # e.g. a perfect PSNR: the spread is unbounded
        return float(v.mean()), math.inf
    return float(v.mean()), float(v.std(ddof=ddof))
