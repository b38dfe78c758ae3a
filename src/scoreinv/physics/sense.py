"""Multi-coil Cartesian MRI (SENSE): y_c = Λ ⊙ fft2c(S_c x), c = 1..C.

No cheap exact T exists (the coil maps mix the image into C > 1 k-spaces), so the solvers use
the generic conjugate-gradient `lstsq` of the base class (docs/design.md §2.6).

Also here:
- `birdcage_maps`: smooth synthetic coil sensitivities for simulation. Coil c sits on a circle
  of radius `radius` (in units of the half field of view) around the centre; its map is
  e^{i φ_c(r)} / |r − r_c| with φ_c the angle of r − r_c plus the coil's angular position
  (the common birdcage model), then normalised so Σ_c |S_c|² = 1 at every pixel.
- `estimate_coil_maps`: the simple calibration estimate: low-resolution coil images from the
  fully sampled k-space centre (Hann-windowed to limit ringing), divided by their
  root-sum-of-squares. Written by hand: ESPIRiT (sigpy, bart) is not a dependency here.
"""
from __future__ import annotations

import math

import torch

from ..errors import ScoreinvError, check_finite, check_range
from .base import LinearOperator
from .mri import as_kspace_mask, fft2c, ifft2c


def check_coil_maps(maps, shape: tuple[int, int] | None = None, name: str = "coil maps") -> torch.Tensor:
    """Validate coil maps: a finite complex (C, H, W) tensor (C >= 1) fitting `shape` if given."""
    m = torch.as_tensor(maps)
    if m.ndim != 3:
        raise ScoreinvError(f"{name}: expected shape (C, H, W), got {tuple(m.shape)}")
    if shape is not None and tuple(m.shape[-2:]) != tuple(shape):
        raise ScoreinvError(f"{name}: spatial shape {tuple(m.shape[-2:])} does not fit the k-space grid "
                            f"{tuple(shape)}; expected (C, {shape[0]}, {shape[1]})")
    if not m.is_complex():
        m = m.to(torch.complex64)
    return check_finite(name, m)


class SenseMRI(LinearOperator):
    """Multi-coil Cartesian MRI with known coil sensitivities.

    Args:
        maps: (C, H, W) complex coil sensitivities.
        mask: (H, W) (or (W,) columns) 0/1 sampling mask, shared by all coils, DC at (H//2, W//2).
        complex_image: images complex (B, 1, H, W) if True, else real (adjoint keeps Re).

    Shapes: image (B, 1, H, W) -> measurement (B, C, H, W) complex, zero off the mask.
    """

    has_decomposition = False

    def __init__(self, maps, mask, complex_image: bool = False):
        maps = torch.as_tensor(maps)
        if maps.ndim != 3:
            raise ScoreinvError(f"coil maps: expected shape (C, H, W), got {tuple(maps.shape)}")
        self.mask = as_kspace_mask(mask, tuple(maps.shape[-2:]) if torch.as_tensor(mask).ndim == 1 else None)
        self.maps = check_coil_maps(maps, tuple(self.mask.shape))
        self.image_shape = tuple(self.mask.shape)
        self.meas_shape = (self.maps.shape[0], *self.image_shape)
        self.complex_image = bool(complex_image)
        h, w = self.image_shape
        self.name = f"SenseMRI({self.maps.shape[0]} coils, {h}x{w}, {self.mask.numel() / float(self.mask.sum()):.2f}x)"

    def _maps(self, ref: torch.Tensor) -> torch.Tensor:
        dt = torch.complex128 if ref.dtype in (torch.float64, torch.complex128) else torch.complex64
        return self.maps.to(device=ref.device, dtype=dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C, H, W) complex: Λ ⊙ fft2c(S_c x)."""
        x = self.check_image(x)
        return fft2c(self._maps(x) * x) * self.mask.to(x.device)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W): Σ_c conj(S_c) ifft2c(Λ ⊙ y_c), real part for real images."""
        y = self.check_measurement(y)
        z = (self._maps(y).conj() * ifft2c(y * self.mask.to(y.device))).sum(1, keepdim=True)
        return z if self.complex_image else z.real

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Coil-combined zero-filled reconstruction A^H y (maps normalised to Σ|S_c|² = 1)."""
        return self.adjoint(y)


def birdcage_maps(n_coils: int, shape, radius: float = 1.5, dtype=torch.complex64) -> torch.Tensor:
    """Synthetic birdcage-like coil maps, (C, H, W) complex with Σ_c |S_c|² = 1 everywhere."""
    n = int(n_coils)
    if n < 1:
        raise ScoreinvError(f"n_coils = {n_coils} must be >= 1")
    h, w = (int(s) for s in shape)
    r = check_range("radius", radius, 1.01, None)  # coils outside the field of view
    yy = (torch.arange(h, dtype=torch.float64) - h / 2 + 0.5) / (h / 2)
    xx = (torch.arange(w, dtype=torch.float64) - w / 2 + 0.5) / (w / 2)
    yy, xx = torch.meshgrid(yy, xx, indexing="ij")
    maps = []
    for c in range(n):
        a = 2 * math.pi * c / n
        dy, dx = yy - r * math.sin(a), xx - r * math.cos(a)
        dist = torch.sqrt(dx ** 2 + dy ** 2)
        phase = torch.atan2(dy, dx) + a
        maps.append(torch.polar(1.0 / dist, phase))
    s = torch.stack(maps)
    s = s / s.abs().pow(2).sum(0, keepdim=True).sqrt()
    return s.to(dtype)


def calibration_width(mask) -> int:
    """Width of the contiguous band of fully sampled columns around the k-space centre (W//2)."""
    m = as_kspace_mask(mask)
    full = m.all(0)
    c = m.shape[1] // 2
    if not bool(full[c]):
        return 0
    lo, hi = c, c
    while lo - 1 >= 0 and bool(full[lo - 1]):
        lo -= 1
    while hi + 1 < m.shape[1] and bool(full[hi + 1]):
        hi += 1
    return hi - lo + 1


def estimate_coil_maps(kspace: torch.Tensor, calib: int, threshold: float = 0.05) -> torch.Tensor:
    """Coil maps from the calibration region: low-res coil images / their root-sum-of-squares.

    Args:
        kspace: (C, H, W) or (B, C, H, W) complex multi-coil k-space (DC at centre).
        calib: width of the fully sampled central column band (see `calibration_width`); the
            central calib x calib block (clipped to H) is used, Hann-windowed.
        threshold: pixels whose RSS is below `threshold` × its maximum get zero maps.
    Returns: maps of the same shape as `kspace`.
    """
    k = torch.as_tensor(kspace)
    if k.ndim not in (3, 4) or not k.is_complex():
        raise ScoreinvError(f"kspace: expected complex (C, H, W) or (B, C, H, W), got "
                            f"{'complex' if k.is_complex() else 'real'} shape {tuple(k.shape)}")
    check_finite("kspace", k)
    h, w = k.shape[-2:]
    calib = int(calib)
    if calib < 2:
        raise ScoreinvError(f"calib = {calib}: need a fully sampled centre of at least 2 columns "
                            "to estimate coil maps")
    check_range("threshold", threshold, 0.0, 1.0)
    ch = min(calib, h)
    win = torch.zeros(h, w, dtype=k.real.dtype, device=k.device)
    wy = torch.hann_window(ch + 2, periodic=False, dtype=k.real.dtype, device=k.device)[1:-1]
    wx = torch.hann_window(calib + 2, periodic=False, dtype=k.real.dtype, device=k.device)[1:-1]
    y0, x0 = h // 2 - ch // 2, w // 2 - calib // 2
    win[y0:y0 + ch, x0:x0 + calib] = wy[:, None] * wx[None, :]
    low = ifft2c(k * win)
    rss = low.abs().pow(2).sum(-3, keepdim=True).sqrt()
    ok = rss > threshold * rss.flatten(-3).amax(-1).reshape(*rss.shape[:-3], 1, 1, 1)
    return torch.where(ok, low / rss.clamp_min(torch.finfo(rss.dtype).tiny), torch.zeros_like(low))
