"""Predictor and corrector steps (Song et al. 2021, Alg. 1-2; docs/design.md §2.7).

Each step maps x (B, C, H, W) at time t (B,) to (x, x_mean). `score_fn(x, t)` is any score,
possibly with a likelihood term added. `x_eval` (optional) is where the score is evaluated:
the reference code evaluates it at the projected x (default: x itself); the paper's Eq. 7
evaluates it at the unprojected x̂_t.
"""
from __future__ import annotations

import torch

from ..sde import SDE, VESDE


def _b(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def reverse_diffusion_predictor(score_fn, sde: SDE, x, t, t_next, generator=None, x_eval=None):
    """One ancestral step of the reverse SDE from t to t_next < t.

    VE: x_mean = x + (σ_t² − σ_next²) s, x = x_mean + sqrt(σ_t² − σ_next²) z (the SMLD chain).
    VP/sub-VP: Euler–Maruyama of the reverse SDE with dt = t_next − t.
    """
    s = score_fn(x if x_eval is None else x_eval, t)
    if isinstance(sde, VESDE):
        g2 = _b(sde.sigma(t) ** 2 - sde.sigma(t_next) ** 2, x)
        x_mean = x + g2 * s
        return x_mean + torch.sqrt(g2) * randn_like(x, generator), x_mean
    dt = _b(t - t_next, x)  # positive
    drift, g = sde.sde(x, t)
    x_mean = x - drift.to(x.dtype) * dt + _b(g, x) ** 2 * s * dt
    return x_mean + _b(g, x) * torch.sqrt(dt) * randn_like(x, generator), x_mean


def langevin_corrector(score_fn, sde: SDE, x, t, snr: float, generator=None, x_eval=None):
    """One Langevin step with step size ε = 2 α (snr ‖z‖ / ‖s‖)², per sample.

    α = 1 for VE; for VP α is the DDPM per-level alpha (1 − β(t)/N).
    The reference averages the two norms over the batch; here they are per sample, so a
    batch of different measurements does not share step sizes.
    """
    s = score_fn(x if x_eval is None else x_eval, t)
    z = randn_like(x, generator)
    gn = s.flatten(1).norm(dim=1)
    zn = z.flatten(1).norm(dim=1)
    alpha = torch.ones_like(t)
    if not isinstance(sde, VESDE):
        alpha = 1 - (sde.beta_0 + t * (sde.beta_1 - sde.beta_0)) / sde.N
    eps = 2 * alpha * (snr * zn / gn.clamp_min(1e-12)) ** 2
    x_mean = x + _b(eps, x) * s
    return x_mean + torch.sqrt(2 * _b(eps, x)) * z, x_mean


def ddim_predictor(score_fn, sde: SDE, x, t, t_next, generator=None, eta: float = 0.0, x0_hook=None):
    """DDIM step (Song et al. 2021, Eq. 12, in VE form on y = x/α) with a data-consistency hook
    on the clean estimate (DDS-style).

    x̂0 = (x + β² s)/α (Tweedie); x̂0' = x0_hook(x̂0); ε̂ = (x/α − x̂0)/σ with σ = β/α;
    c = η σ' sqrt(1 − σ'²/σ²); x_next = α' [x̂0' + sqrt(σ'² − c²) ε̂ + c z].
    η = 0 is deterministic DDIM; η = 1 draws from q(x_next | x_t, x̂0) (ancestral).
    """
    s = score_fn(x, t)
    a, b = sde.marginal_coeffs(t)
    a2, b2 = sde.marginal_coeffs(t_next)
    a, b, a2, b2 = _b(a, x), _b(b, x), _b(a2, x), _b(b2, x)
    sig, sig2 = b / a, b2 / a2
    x0 = (x + b ** 2 * s) / a
    eps_hat = (x / a - x0) / sig
    x0c = x0_hook(x0, t) if x0_hook is not None else x0
    c = eta * sig2 * torch.sqrt((1 - sig2 ** 2 / sig ** 2).clamp_min(0))
    x_next = x0c + torch.sqrt((sig2 ** 2 - c ** 2).clamp_min(0)) * eps_hat
    if eta > 0:
        x_next = x_next + c * randn_like(x, generator)
    return a2 * x_next, x0c


def x0_predictor(score_fn, sde: SDE, x, t, t_next, step):
    """A restoration step on the Tweedie estimate (DDRM, DiffPIR; docs/design.md §2.11), in VE form
    on u = x/α with σ = β/α: x̂0 = (x + β² s)/α; u' = step(u, x̂0, σ, σ'); x_next = α' u'."""
    s = score_fn(x, t)
    a, b = sde.marginal_coeffs(t)
    a2, b2 = sde.marginal_coeffs(t_next)
    a, b, a2, b2 = _b(a, x), _b(b, x), _b(a2, x), _b(b2, x)
    x0 = (x + b ** 2 * s) / a
    return a2 * step(x / a, x0, b / a, b2 / a2), x0
