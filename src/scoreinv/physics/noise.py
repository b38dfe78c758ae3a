"""Measurement noise: Poisson photon counts for CT, complex Gaussian for MRI (docs/design.md §3.1, §3.2).

CT (Beer-Lambert): a ray with line integral p (dimensionless: attenuation coefficient times
length, e.g. μ in 1/mm times a sinogram in mm) has expected count I0 e^{-p}. We draw

    counts ~ Poisson(I0 e^{-p} + scatter) + N(0, σ_e²)   (σ_e: electronic noise, in photons),

clamp counts below 1 to 1 (zero counts have no logarithm; docs/design.md §3.1), and return the
noisy line integral p̃ = -log(counts / I0). Randomness only through the given
torch.Generator; results are on the input's device.

MRI: y + σ (n_re + i n_im), n_re, n_im ~ N(0, 1) independent, so σ is the standard deviation of
the real and of the imaginary part (E|noise|² = 2σ²).
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError, check_finite, check_range, per_sample


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ScoreinvError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def _noise_level(name: str, value, ref: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample (B,) non-negative finite level, broadcast against ref."""
    v = torch.as_tensor(value, dtype=ref.real.dtype if ref.is_complex() else ref.dtype)
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != ref.shape[0]):
        raise ScoreinvError(f"{name}: expected a number or one value per sample (shape ({ref.shape[0]},)), "
                            f"got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
        raise ScoreinvError(f"{name}: expected finite values >= 0, got {value!r}")
    return per_sample(v.to(ref.device), ref)


def poisson_counts(p: torch.Tensor, i0: float, generator: torch.Generator | None = None,
                   scatter: float = 0.0, electronic_sigma: float = 0.0) -> torch.Tensor:
    """Detected photon counts for line integrals p (B, ...): Poisson(I0 e^{-p} + scatter) + N(0, σ_e²).

    Counts are real (float) and not yet clamped. The random draw happens on the CPU when a
    CPU generator is given for a tensor on another device (so seeds give the same draw).
    """
    if not torch.is_tensor(p) or p.is_complex() or not p.is_floating_point():
        raise ScoreinvError("line integrals: expected a real floating-point tensor")
    check_finite("line integrals", p)
    if p.ndim < 1:
        raise ScoreinvError("line integrals: expected a batch (B, ...), got a scalar")
    i0 = check_range("i0 (incident photons per ray)", i0, 1e-12)
    scatter = check_range("scatter (photons)", scatter, 0.0)
    _check_generator(generator)
    sigma = _noise_level("electronic_sigma", electronic_sigma, p)
    gen_dev = generator.device if generator is not None else p.device
    rate = (i0 * torch.exp(-p.to(torch.float64)) + scatter).to(gen_dev)
    counts = torch.poisson(rate, generator=generator)
    if bool((torch.as_tensor(electronic_sigma) > 0).any()):
        z = torch.randn(rate.shape, generator=generator, dtype=rate.dtype, device=gen_dev)
        counts = counts + sigma.to(gen_dev, torch.float64) * z
    return counts.to(p.device)


def add_poisson_noise(p: torch.Tensor, i0: float, generator: torch.Generator | None = None,
                      scatter: float = 0.0, electronic_sigma: float = 0.0) -> torch.Tensor:
    """Noisy line integrals -log(max(counts, 1) / I0), same shape and dtype as p (see module doc)."""
    counts = poisson_counts(p, i0, generator, scatter, electronic_sigma)
    return (-torch.log(counts.clamp_min(1.0) / float(i0))).to(p.dtype)


def add_complex_gaussian(y: torch.Tensor, sigma, generator: torch.Generator | None = None,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """y + σ (n_re + i n_im) for complex k-space y (B, ...); σ a number or per-sample (B,) tensor.

    mask: optional bool tensor broadcastable to y.shape[1:]; noise is added only where it is
    True (sampled k-space of the zero-filled measurement convention), elsewhere y is kept.
    """
    if not torch.is_tensor(y) or not y.is_complex():
        raise ScoreinvError("k-space: expected a complex tensor (B, ...)")
    check_finite("k-space", y)
    if y.ndim < 1:
        raise ScoreinvError("k-space: expected a batch (B, ...), got a scalar")
    _check_generator(generator)
    s = _noise_level("sigma", sigma, y)
    gen_dev = generator.device if generator is not None else y.device
    n = torch.randn((2,) + tuple(y.shape), generator=generator, dtype=y.real.dtype, device=gen_dev).to(y.device)
    noise = s * torch.complex(n[0], n[1])
    if mask is not None:
        m = torch.as_tensor(mask, device=y.device)
        if m.dtype != torch.bool:
            raise ScoreinvError(f"mask: expected a bool tensor, got {m.dtype}")
        try:
            ok = torch.broadcast_shapes(tuple(m.shape), tuple(y.shape[1:])) == tuple(y.shape[1:])
        except RuntimeError:
            ok = False
        if not ok:
            raise ScoreinvError(f"mask: shape {tuple(m.shape)} does not broadcast to {tuple(y.shape[1:])}")
        noise = noise * m
    return y + noise
