"""Conditioning a score-based prior on measurements y = A x (+ noise).

- `Projection`: the paper's Eq. 9 (docs/design.md §2.5). Draw ŷ_t = α(t) y + β(t) A z, then
      x' = T⁻¹[ λ Λ P⁻¹(Λ) ŷ_t + (1 − λ) Λ T x + (I − Λ) T x ]
  for operators with the A = P(Λ)T decomposition; otherwise
      x' = argmin ‖A x' − ŷ_t‖² + ((1 − λ)/λ) ‖A‖² ‖x' − x‖²  by conjugate gradient (DDS-style;
  the ‖A‖² factor makes λ mean the same for operators of any scale, as in the exact path).
  λ = 1 is a hard projection (A x' = ŷ_t). Measurement noise: λ < 1 blends the measurement
  with the current estimate, which is the noise-aware choice (tuned per noise level).
- `LikelihoodScore`: s(x, t) + Aᵀ(ŷ − A x) / ((r σ(t))² ‖A‖²): the Score SDE baseline (ŷ = ŷ_t) and
  annealed Langevin of Jalal et al. (ŷ = y). ‖A‖ = 1 for the paper's unitary T (MRI, Fourier-slice
  CT); dividing by ‖A‖² keeps r meaningful for operators of other scales (spatial Radon, MAR).
- `DPSScore`: diffusion posterior sampling (Chung et al. 2023): s(x, t) − (ζ/g²) ∇ₓ‖y − A D(x)‖
  = s − ζ/(2 g² ‖r‖) ∇ₓ‖r‖² with r = y − A D(x), i.e. the DPS step folded into the score of an
  ancestral predictor. Chung et al. write the step as ζ'/‖r‖ ∇‖r‖², so our ζ is 2ζ' (the tuned
  presets are in our ζ).
"""
from __future__ import annotations

import torch

from ..errors import check_range
from ..physics.norm import operator_norm


def _b(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.real.dtype if x.is_complex() else x.dtype)


def _yb(v, y):
    return v.reshape(-1, *([1] * (y.ndim - 1))).to(y.real.dtype if y.is_complex() else y.dtype)


def noisy_measurement(op, y, sde, x, t, generator=None, noisy: bool = True):
    """ŷ_t = α(t) y + β(t) A z, z ~ N(0, I) image-shaped and fresh per call (Eq. 9); α(t) y if not noisy."""
    a, b = sde.marginal_coeffs(t)
    y_t = _yb(a, y) * y
    if noisy:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y_t = y_t + _yb(b, y) * op.forward(z)
    return y_t


def norm2(op, x) -> float:
    """‖A‖² by power iteration, cached per operator (estimated on x's device, dtype and batch)."""
    return operator_norm(op, x.device, x.dtype, batch=x.shape[0]) ** 2


class Projection:
    """Hook x -> x' (B, 1, H, W): projection onto {A x = ŷ_t} blended by λ."""

    def __init__(self, op, y, sde, lam: float = 1.0, generator=None, noisy: bool = True, cg_iters: int = 10):
        self.op, self.y, self.sde, self.generator, self.noisy, self.cg_iters = op, y, sde, generator, noisy, cg_iters
        self.lam = check_range("lambda", lam, 0.0, 1.0)

    def project(self, x, y_t, lam=None):
        lam = self.lam if lam is None else lam
        if lam == 0.0:
            return x
        op = self.op
        if op.has_decomposition:
            z = op.T(x)
            z = z + lam * (op.embed(y_t) - op.restrict(z))
            return op.T_inv(z)
        reg = (1 - lam) / lam * norm2(op, x) if lam < 1.0 else 0.0
        return op.lstsq(y_t, x, reg=reg, iters=self.cg_iters)

    def __call__(self, x, t):
        return self.project(x, noisy_measurement(self.op, self.y, self.sde, x, t, self.generator, self.noisy))

    def hard(self, x, t=None):
        """Final λ = 1 projection with the noise-free y."""
        return self.project(x, self.y, lam=1.0)


class LikelihoodScore:
    """score(x, t) + Aᵀ(ŷ − A x)/(r² σ(t)² ‖A‖²); ŷ = ŷ_t (noisy_y=True, Score SDE) or y (ALD)."""

    def __init__(self, score_fn, op, y, sde, r: float, generator=None, noisy_y: bool = True):
        self.score_fn, self.op, self.y, self.sde, self.generator, self.noisy_y = score_fn, op, y, sde, generator, noisy_y
        self.r = check_range("r (projection_sigma_rate)", r, 1e-6)

    def __call__(self, x, t):
        y = noisy_measurement(self.op, self.y, self.sde, x, t, self.generator, self.noisy_y)
        _, b = self.sde.marginal_coeffs(t)
        grad = self.op.adjoint(y - self.op.forward(x)) / _b((self.r * b) ** 2 * norm2(self.op, x), x)
        return self.score_fn(x, t) + grad


class DPSScore:
    """DPS folded into the score for an ancestral VE predictor from t to the next level."""

    def __init__(self, model, op, y, times: torch.Tensor, zeta: float = 1.0):
        self.model, self.op, self.y, self.times = model, op, y, times
        self.zeta = check_range("zeta", zeta, 0.0)

    def _g2(self, t):
        """σ_t² − σ_next² of the ancestral VE step that follows (the DPS step is −ζ∇, so the score gets −ζ∇/g²)."""
        i = int(torch.argmin((self.times - t[0].to(self.times)).abs()))
        t_next = self.times[i + 1] if i + 1 < len(self.times) else torch.zeros_like(self.times[i])
        sig = self.model.sde.sigma
        return float(sig(self.times[i]) ** 2 - (sig(t_next) ** 2 if i + 1 < len(self.times) else 0.0))

    def __call__(self, x, t):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.model.score(xg, t)
            a, b = self.model.sde.marginal_coeffs(t)
            x0 = (xg + _b(b ** 2, xg) * s) / _b(a, xg)
            res = (self.y - self.op.forward(x0))
            norm = res.abs().flatten(1).pow(2).sum(1).sqrt()
            (grad,) = torch.autograd.grad(norm.sum(), xg)
        return s.detach() - self.zeta * grad / self._g2(t)
