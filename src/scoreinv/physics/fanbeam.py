"""Fan-beam CT: sparse system matrix with exact adjoint, and weighted fan-beam FBP.

Geometry conventions in `geometry` (source angle β, fan angle γ, ray ↔ parallel view
θ = β - γ at offset s = R sin γ). Sinograms (B, V, D) hold bin-averaged line integrals
(mm · value) from the separable-footprint model of `projector`.

Reconstruction (Kak & Slaney §3.4), with R = source-to-centre distance:
- equiangular: q_β = Δγ · g * (R cos γ · p_β), g[n] = (nΔγ / sin nΔγ)² h[n] / 2 (Eq. 120);
  f(x) = Σ_β Δβ q_β(γ(x)) / L(x)², L the source-to-pixel distance (Eq. 122).
- flat: rescaled to the virtual detector through the centre, s = u R / D_sd:
  q_β = ½ (1/Δs) h * (R / √(R² + s²) · p_β); f(x) = Σ_β Δβ q_β(s(x)) / U(x)², U = ℓ / R with
  ℓ the distance from the source along the central ray (Eq. 153-156).
For a full scan (views evenly over 2π) Δβ = 2π / V. For a short scan (arc ≥ π + fan angle,
evenly spaced) Parker's weights make every line count once and the result is doubled.
The back-projection is pixel-driven with linear interpolation on the detector (not the
matched adjoint; FBP is an approximate inverse either way).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ScoreinvError, check_choice, check_range
from .ct import SparseMatrixCT, _work_dtype
from .filters import FILTERS, apply_kernel, fan_kernel, padded_length, ramp_filter
from .geometry import FanGeometry, dense_angles


class FanBeamCT(SparseMatrixCT):
    """Fan-beam CT operator y = A x (flat or equiangular detector).

    Args:
        geometry: a `FanGeometry`; or give `n` (image size) and optionally `angles` (default:
            2 n source angles over [0, 2π)) and the other `FanGeometry` arguments as keywords.

    Shapes: image (B, 1, N, N) -> sinogram (B, V, D).
    """

    def __init__(self, geometry: FanGeometry | int, angles=None, **kwargs):
        if not isinstance(geometry, FanGeometry):
            n = geometry
            geometry = FanGeometry(n, dense_angles(2 * n, 2 * math.pi) if angles is None else angles, **kwargs)
        elif angles is not None or kwargs:
            raise ScoreinvError("FanBeamCT: give either a FanGeometry or (n, angles, ...), not both")
        self._setup(geometry)
        g = geometry
        self.name = f"FanBeamCT({g.n}x{g.n}, {g.n_views} views, {g.n_det} bins, {g.detector})"

    def with_angles(self, angles) -> "FanBeamCT":
        return FanBeamCT(self.geometry.with_angles(angles))

    # --- scan weights ------------------------------------------------------------------
    def _scan_weights(self, dtype, device) -> tuple[torch.Tensor, float]:
        """(per-(view, bin) weights (V, D), Δβ) for a full or a short scan."""
        g = self.geometry
        b = np.sort(np.asarray(g.angles))
        v = b.size
        step = (b[-1] - b[0]) / max(v - 1, 1)
        arc = step * v
        gam = g.fan_angles()
        gm = float(np.abs(gam).max()) + 0.5 * (abs(gam[1] - gam[0]) if gam.size > 1 else 0.0)
        if v < 2 or np.abs(np.diff(b) - step).max() > 1e-3 * max(step, 1e-12):
            raise ScoreinvError("fan-beam FBP needs source angles evenly spaced over a full (2π) or short "
                                "(≥ π + fan angle) arc; use lstsq or an iterative method for other scans")
        if arc >= 2 * math.pi - 1e-6:
            return torch.ones(v, g.n_det, dtype=dtype, device=device), 2 * math.pi / v
        if arc < math.pi + 2 * gm - step:
            raise ScoreinvError(f"fan-beam FBP: the scan covers {math.degrees(arc):.1f}° but needs at least "
                                f"{math.degrees(math.pi + 2 * gm):.1f}° (180° + fan angle)")
        # Parker weights, written for conjugate rays (β, γ) ~ (β + π - 2γ, -γ) of this geometry
        beta = (np.asarray(g.angles) - b[0])[:, None]
        gg = -gam[None, :]
        d = (arc - math.pi) / 2.0  # effective half fan angle of the scan
        w = np.ones((v, g.n_det))
        r1 = beta < 2 * (d - gg)
        r3 = beta > math.pi - 2 * gg
        with np.errstate(divide="ignore", invalid="ignore"):
            w1 = np.sin(math.pi / 4 * beta / (d - gg)) ** 2
            w3 = np.sin(math.pi / 4 * (math.pi + 2 * d - beta) / (d + gg)) ** 2
        w = np.where(r1, w1, np.where(r3, w3, w))
        w = np.nan_to_num(np.clip(w, 0.0, 1.0), nan=0.0)
        return 2.0 * torch.as_tensor(w, dtype=dtype, device=device), step

    # --- FBP ---------------------------------------------------------------------------
    def fbp(self, y: torch.Tensor, filter: str = "ramp", cutoff: float = 1.0, view_chunk: int = 16) -> torch.Tensor:
        """Weighted fan-beam FBP (B, V, D) -> (B, 1, N, N) in image-value units.

        filter: 'ramp', 'shepp-logan', 'cosine', 'hann' or 'hamming'; cutoff: fraction of Nyquist.
        """
        check_choice("filter", filter, FILTERS)
        check_range("cutoff", cutoff, 1e-6, 1.0)
        y = self.check_measurement(y)
        g = self.geometry
        dt = _work_dtype(y)
        p = y.to(dt)
        dev = p.device
        gam = torch.as_tensor(g.fan_angles(), dtype=dt, device=dev)
        sw, dbeta = self._scan_weights(dt, dev)
        r = g.source_distance
        if g.detector == "equiangular":
            kern = fan_kernel(padded_length(g.n_det), g.det_angle, torch.float64, dev)
            q = apply_kernel(p * sw * (r * torch.cos(gam)), kern, filter, cutoff) * g.det_angle
        else:
            s = (torch.arange(g.n_det, dtype=dt, device=dev) - (g.n_det - 1) / 2.0) * (g.det_spacing * r / g.detector_distance)
            q = 0.5 * ramp_filter(p * sw * (r / torch.sqrt(r * r + s * s)), g.det_spacing * r / g.detector_distance,
                                  filter, cutoff)
        return self._backproject(q, dbeta, view_chunk)

    def _backproject(self, q: torch.Tensor, dbeta: float, view_chunk: int) -> torch.Tensor:
        """Σ_β Δβ w(x, β) q_β(detector position of x), linear interpolation -> (B, 1, N, N)."""
        g = self.geometry
        dt, dev = q.dtype, q.device
        xs, ys = (torch.as_tensor(a, dtype=dt, device=dev) for a in g.pixel_centers())
        src = torch.as_tensor(g.sources(), dtype=dt, device=dev)
        beta = torch.tensor(np.array(g.angles), dtype=dt, device=dev)
        bsz, nd = q.shape[0], g.n_det
        out = torch.zeros(bsz, xs.numel(), dtype=dt, device=dev)
        off = (nd - 1) / 2.0
        for v0 in range(0, g.n_views, view_chunk):
            sl = slice(v0, v0 + view_chunk)
            b = beta[sl, None]
            vx, vy = xs[None] - src[sl, 0:1], ys[None] - src[sl, 1:2]
            ell = -vx * b.sin() + vy * b.cos()
            lat = vx * b.cos() + vy * b.sin()
            if g.detector == "equiangular":
                u = torch.atan2(lat, ell) / g.det_angle + off
                w = 1.0 / (ell * ell + lat * lat)
            else:
                u = g.detector_distance * lat / ell / g.det_spacing + off
                w = (g.source_distance / ell) ** 2
            i0 = torch.floor(u)
            frac = u - i0
            qc = q[:, sl]
            acc = 0.0
            for shift, wt in ((0, 1.0 - frac), (1, frac)):
                idx = i0 + shift
                ok = (idx >= 0) & (idx < nd)
                gathered = torch.gather(qc, 2, idx.clamp(0, nd - 1).long().expand(bsz, -1, -1))
                acc = acc + gathered * (wt * ok * w)
            out += acc.sum(1)
        return (out * dbeta).reshape(bsz, 1, g.n, g.n)
