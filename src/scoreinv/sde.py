"""Forward SDEs of score-based models (Song et al. 2021; docs/design.md §2.1).

Every SDE exposes the marginal x_t = alpha(t) x_0 + beta(t) z (`marginal_coeffs`), prior
sampling, drift/diffusion f(x,t), g(t), the discretisation used by the reverse-diffusion
predictor, and the reverse-time SDE / probability-flow ODE for a given score function.
Times t are (B,) tensors in [eps, 1]; images are (B, C, H, W).
"""
from __future__ import annotations

import abc
import math

import torch

from .errors import ScoreinvError


def _b(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class SDE(abc.ABC):
    N: int
    eps: float

    @abc.abstractmethod
    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), beta(t)) with x_t = alpha x_0 + beta z."""

    @abc.abstractmethod
    def sde(self, x, t):
        """Drift f(x, t) and diffusion g(t) of dx = f dt + g dw."""

    @abc.abstractmethod
    def prior_sampling(self, shape, generator=None, device="cpu", dtype=torch.float32):
        """A draw from p_1, shape `shape`."""

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean and std of p_t(x_t | x_0)."""
        a, b = self.marginal_coeffs(t)
        return _b(a, x0) * x0, b

    def sigma_eff(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level of x_t / alpha(t) (the VE-equivalent sigma)."""
        a, b = self.marginal_coeffs(t)
        return b / a

    def time_grid(self, n: int, device="cpu", dtype=torch.float64) -> torch.Tensor:
        """n times from 1 down to eps (inclusive), as the reference samplers use."""
        return torch.linspace(1.0, self.eps, n, device=device, dtype=dtype)

    def discretize(self, x, t, dt_index_n: int | None = None):
        """Discrete (f_i, G_i) of x_{i+1} = x_i + f_i + G_i z for the N-level chain."""
        n = dt_index_n or self.N
        drift, diffusion = self.sde(x, t)
        dt = 1.0 / n
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn, probability_flow: bool = False):
        """Reverse-time SDE (or probability-flow ODE) drift/diffusion for `score_fn(x, t)`."""
        fwd = self

        class Reverse:
            def sde(self, x, t):
                drift, g = fwd.sde(x, t)
                s = score_fn(x, t)
                g2 = _b(g, x) ** 2
                if probability_flow:
                    return drift - 0.5 * g2 * s, torch.zeros_like(g)
                return drift - g2 * s, g

            def discretize(self, x, t, n=None):
                f, G = fwd.discretize(x, t, n)
                s = score_fn(x, t)
                G2 = _b(G, x) ** 2
                if probability_flow:
                    return f - 0.5 * G2 * s, torch.zeros_like(G)
                return f - G2 * s, G

        return Reverse()


class VESDE(SDE):
    """Variance exploding: sigma(t) = sigma_min (sigma_max/sigma_min)^t, x_t = x_0 + sigma(t) z."""

    def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000, eps=1e-5):
        self.sigma_min, self.sigma_max, self.N, self.eps = float(sigma_min), float(sigma_max), int(N), float(eps)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal_coeffs(self, t):
        return torch.ones_like(t), self.sigma(t)

    def sde(self, x, t):
        s = self.sigma(t)
        g = s * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), g

    def prior_sampling(self, shape, generator=None, device="cpu", dtype=torch.float32):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * self.sigma_max

    def discretize(self, x, t, n=None):
        """SMLD chain: G_i = sqrt(sigma_i^2 - sigma_{i-1}^2) with sigma_{i-1} one level lower."""
        n = n or self.N
        s = self.sigma(t)
        s_prev = torch.where(t - 1.0 / n > 0, self.sigma((t - 1.0 / n).clamp_min(0)), torch.zeros_like(t))
        return torch.zeros_like(x), torch.sqrt((s ** 2 - s_prev ** 2).clamp_min(0))


class VPSDE(SDE):
    """Variance preserving: beta(t) linear, alpha(t) = exp(-int beta / 2), std = sqrt(1 - alpha^2)."""

    def __init__(self, beta_min=0.1, beta_max=20.0, N=1000, eps=1e-3):
        self.beta_0, self.beta_1, self.N, self.eps = float(beta_min), float(beta_max), int(N), float(eps)

    def _log_alpha(self, t):
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def marginal_coeffs(self, t):
        la = self._log_alpha(t)
        return torch.exp(la), torch.sqrt(-torch.expm1(2 * la))

    def sde(self, x, t):
        beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
        return -0.5 * _b(beta_t, x) * x, torch.sqrt(beta_t)

    def prior_sampling(self, shape, generator=None, device="cpu", dtype=torch.float32):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def discretize(self, x, t, n=None):
        """DDPM chain: x_{i+1} = sqrt(1 - b_i) x_i + sqrt(b_i) z with b_i = beta(t)/N."""
        n = n or self.N
        b = (self.beta_0 + t * (self.beta_1 - self.beta_0)) / n
        return (torch.sqrt(1 - _b(b, x)) - 1) * x, torch.sqrt(b)


class SubVPSDE(VPSDE):
    """sub-VP: same mean as VP, std = 1 - alpha(t)^2."""

    def marginal_coeffs(self, t):
        la = self._log_alpha(t)
        return torch.exp(la), -torch.expm1(2 * la)

    def sde(self, x, t):
        beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
        discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
        return -0.5 * _b(beta_t, x) * x, torch.sqrt(beta_t * discount)

    def discretize(self, x, t, n=None):
        return SDE.discretize(self, x, t, n)


def build_sde(name: str, sigma_min=0.01, sigma_max=50.0, beta_min=0.1, beta_max=20.0, N=1000, eps=1e-5) -> SDE:
    """Factory: 've' | 'vp' | 'subvp'."""
    if name == "ve":
        return VESDE(sigma_min, sigma_max, N, eps)
    if name == "vp":
        return VPSDE(beta_min, beta_max, N, max(eps, 1e-3))
    if name == "subvp":
        return SubVPSDE(beta_min, beta_max, N, max(eps, 1e-3))
    raise ScoreinvError(f"unknown SDE {name!r}; expected one of ['ve', 'vp', 'subvp']")
