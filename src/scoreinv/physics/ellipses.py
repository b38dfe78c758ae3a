"""Ellipse phantoms: exact line integrals and rasterisation, and simulation without the inverse crime.

Ellipses are rows [value, a, b, x0, y0, phi]: semi-axes a (along x before rotation) and b,
centre (x0, y0), rotation phi (radians, counter-clockwise), in normalised coordinates where
the image spans [-1, 1]² with y up (the convention of the Shepp-Logan table). A batch is a
tensor (B, E, 6) (or (E, 6) for one phantom).

The line integral of an ellipse along a ray P + t d is value × chord length: in the
ellipse's frame scaled to the unit circle, the ray q(t) = Q + t D meets |q| = 1 at the roots
of |D|² t² + 2 (Q·D) t + |Q|² - 1 = 0, so the chord is 2 √((Q·D)² - |D|²(|Q|² - 1)) / |D|².
Sinograms come out in the operators' units (mm · value, `geometry`), averaged over
`subsamples` rays per bin to model the bin width, so they can be compared with (and used
instead of) the discrete operators' output: measurements of a continuous phantom, not of the
pixel grid the solver inverts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ScoreinvError, check_choice, check_int
from .geometry import FanGeometry, ParallelGeometry

_SHEPP_LOGAN = [  # value (original), value (modified, Toft), a, b, x0, y0, phi (degrees)
    (2.0, 1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.98, -0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
    (-0.02, -0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
    (-0.02, -0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
    (0.01, 0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
    (0.01, 0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
    (0.01, 0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
    (0.01, 0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
    (0.01, 0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
    (0.01, 0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
]


def shepp_logan_ellipses(modified: bool = True) -> torch.Tensor:
    """The Shepp-Logan phantom as ellipses (10, 6) float64 (modified: Toft's higher contrast)."""
    rows = [((m if modified else o), a, b, x, y, math.radians(p)) for o, m, a, b, x, y, p in _SHEPP_LOGAN]
    return torch.tensor(rows, dtype=torch.float64)


def _check_ellipses(ell) -> torch.Tensor:
    e = torch.as_tensor(ell, dtype=torch.float64)
    if e.ndim == 2:
        e = e[None]
    if e.ndim != 3 or e.shape[-1] != 6:
        raise ScoreinvError(f"ellipses: expected shape (E, 6) or (B, E, 6) of [value, a, b, x0, y0, phi], "
                            f"got {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()):
        raise ScoreinvError("ellipses: contains NaN or Inf")
    if bool((e[..., 1:3] <= 0).any()):
        raise ScoreinvError("ellipses: semi-axes a and b must be > 0")
    return e


def ellipse_line_integrals(ellipses, geometry: ParallelGeometry | FanGeometry, subsamples: int = 1) -> torch.Tensor:
    """Exact line integrals of ellipse phantoms for every ray of `geometry` -> (B, V, D) float64.

    subsamples: rays per detector bin (evenly spaced across it), averaged.
    """
    e = _check_ellipses(ellipses)
    if not isinstance(geometry, (ParallelGeometry, FanGeometry)):
        raise ScoreinvError(f"geometry: expected a ParallelGeometry or FanGeometry, got {type(geometry).__name__}")
    subsamples = check_int("subsamples", subsamples)
    scale = geometry.n * geometry.pixel_size / 2.0                      # mm per normalised unit
    out = torch.zeros(e.shape[0], geometry.n_views, geometry.n_det, dtype=torch.float64)
    for j in range(subsamples):
        pts, dirs = geometry.rays(offset=(j + 0.5) / subsamples - 0.5)
        p = torch.from_numpy(pts / scale)                                # (V, D, 2), normalised
        d = torch.from_numpy(dirs)
        for k in range(e.shape[1]):
            val, a, b, x0, y0, phi = (e[:, k, i].reshape(-1, 1, 1) for i in range(6))
            c, s = torch.cos(phi), torch.sin(phi)
            px, py = p[..., 0] - x0, p[..., 1] - y0
            qx, qy = (c * px + s * py) / a, (-s * px + c * py) / b
            dx, dy = (c * d[..., 0] + s * d[..., 1]) / a, (-s * d[..., 0] + c * d[..., 1]) / b
            aa = dx * dx + dy * dy
            bq = qx * dx + qy * dy
            disc = bq * bq - aa * (qx * qx + qy * qy - 1.0)
            out += val * 2.0 * torch.sqrt(disc.clamp_min(0.0)) / aa
    return out * (scale / subsamples)


def rasterize_ellipses(ellipses, n: int, supersample: int = 1) -> torch.Tensor:
    """Ellipse phantoms on an n x n grid -> (B, 1, n, n) float64; each pixel averages
    supersample² point samples (supersample = 1: the value at the pixel centre)."""
    e = _check_ellipses(ellipses)
    n, supersample = check_int("n", n), check_int("supersample", supersample)
    m = n * supersample
    t = (torch.arange(m, dtype=torch.float64) + 0.5) * (2.0 / m) - 1.0
    x = t[None, :].expand(m, m)
    y = -t[:, None].expand(m, m)
    img = torch.zeros(e.shape[0], m, m, dtype=torch.float64)
    for k in range(e.shape[1]):
        val, a, b, x0, y0, phi = (e[:, k, i].reshape(-1, 1, 1) for i in range(6))
        c, s = torch.cos(phi), torch.sin(phi)
        u, v = x - x0, y - y0
        inside = ((c * u + s * v) / a) ** 2 + ((-s * u + c * v) / b) ** 2 <= 1.0
        img += val * inside
    img = img.reshape(e.shape[0], n, supersample, n, supersample).mean((2, 4))
    return img[:, None]


def simulate_without_inverse_crime(image: torch.Tensor, op, upsample: int = 4, mode: str = "bicubic") -> torch.Tensor:
    """Measure `image` (B, 1, N, N) with a finer discretisation of `op`'s physical scan.

    The image is interpolated to an (upsample N)² grid ('bicubic' or 'bilinear', pixel-area
    aligned, align_corners=False) and projected by the same geometry on that grid, so the data
    do not come from the discrete model that a solver inverts. Works for ParallelBeamCT,
    FanBeamCT and FourierSliceCT (via its parallel sinogram). Cost grows as upsample²; the fine
    system matrix is built in chunks of views and not cached.
    """
    check_choice("mode", mode, ("bicubic", "bilinear"))
    upsample = check_int("upsample", upsample, 2)
    fine = getattr(op, "_simulate_fine", None)
    if fine is None:
        raise ScoreinvError(f"simulate_without_inverse_crime: {type(op).__name__} has no finer-grid model; "
                            "expected a ParallelBeamCT, FanBeamCT or FourierSliceCT")
    x = op.check_image(image)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = F.interpolate(x.to(dt), scale_factor=upsample, mode=mode, align_corners=False)
    return fine(xf, upsample)


__all__ = ["shepp_logan_ellipses", "ellipse_line_integrals", "rasterize_ellipses",
           "simulate_without_inverse_crime"]
