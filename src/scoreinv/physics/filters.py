"""Reconstruction filters of filtered back-projection (Kak & Slaney, ch. 3).

The ramp filter is the band-limited Ram-Lak kernel sampled in space (their Eq. 61),
h[0] = 1/4, h[n] = -1/(π n)² for odd n, 0 for even n (unit sample spacing), applied by a
zero-padded FFT (no wrap-around), so its response is exact at DC. Windows multiply its
frequency response as functions of f in cycles per sample (0 ≤ f ≤ 1/2), optionally stretched
to a `cutoff` fraction of the Nyquist frequency:

    shepp-logan sinc(f'), cosine cos(π f'), hann (1 + cos 2π f')/2, hamming 0.54 + 0.46 cos 2π f',

with f' = f / cutoff and the response set to zero above f = cutoff / 2. Same windows as
scikit-image's `iradon`. The equiangular fan-beam kernel is the ramp kernel's fan form
g[n] = (n α / sin n α)² h[n] / 2 (Kak & Slaney Eq. 120).
Written here (not taken from scikit-image) because it must run on batched torch tensors.
"""
from __future__ import annotations

import math

import torch

from ..errors import check_choice, check_range

FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "hamming")


def padded_length(n: int) -> int:
    """FFT length used to filter n samples without wrap-around: max(64, next power of 2 ≥ 2n)."""
    return max(64, 1 << int(math.ceil(math.log2(2 * n))))


def window(f: torch.Tensor, name: str, cutoff: float = 1.0) -> torch.Tensor:
    """Frequency window at f (cycles/sample, in [0, 1/2]); zero above cutoff/2."""
    check_choice("filter", name, FILTERS)
    cutoff = check_range("cutoff", cutoff, 1e-6, 1.0)
    fp = f / cutoff
    if name == "ramp":
        w = torch.ones_like(f)
    elif name == "shepp-logan":
        w = torch.sinc(fp)
    elif name == "cosine":
        w = torch.cos(math.pi * fp)
    elif name == "hann":
        w = 0.5 * (1.0 + torch.cos(2 * math.pi * fp))
    else:
        w = 0.54 + 0.46 * torch.cos(2 * math.pi * fp)
    return torch.where(f <= 0.5 * cutoff + 1e-12, w, torch.zeros_like(w))


def _signed_offsets(p: int, dtype, device) -> torch.Tensor:
    n = torch.arange(p, dtype=dtype, device=device)
    return torch.where(n < p // 2, n, n - p)


def ramlak_kernel(p: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Circular Ram-Lak kernel of length p (unit spacing), index n ↔ offset n (mod p)."""
    n = _signed_offsets(p, dtype, device)
    odd = (n.abs() % 2) == 1
    denom = torch.where(odd, (math.pi * n) ** 2, torch.ones_like(n))
    h = torch.where(odd, -1.0 / denom, torch.zeros_like(n))
    h[0] = 0.25
    return h


def fan_kernel(p: int, dalpha: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Equiangular fan-beam kernel g[n] (Kak & Slaney Eq. 120) for angular spacing dalpha, length p."""
    n = _signed_offsets(p, dtype, device)
    odd = (n.abs() % 2) == 1
    s = torch.sin(n * dalpha)
    g = torch.where(odd, -1.0 / (2 * math.pi ** 2 * torch.where(odd, s * s, torch.ones_like(s))),
                    torch.zeros_like(n))
    g[0] = 1.0 / (8 * dalpha ** 2)
    return g


def apply_kernel(p: torch.Tensor, kernel: torch.Tensor, name: str = "ramp", cutoff: float = 1.0) -> torch.Tensor:
    """Convolve rows of p (..., D) with a circular kernel (P,) (P ≥ 2D), windowed; returns (..., D).

    Computes Σ_n kernel[n] p[k - n] by zero-padded FFT, the window applied to the kernel's
    response.
    """
    d, plen = p.shape[-1], kernel.shape[0]
    resp = torch.fft.rfft(kernel).real
    f = torch.fft.rfftfreq(plen, dtype=kernel.dtype, device=kernel.device)
    resp = (resp * window(f, name, cutoff)).to(p.dtype)
    q = torch.fft.irfft(torch.fft.rfft(p, n=plen) * resp, n=plen)
    return q[..., :d]


def ramp_filter(p: torch.Tensor, spacing: float, name: str = "ramp", cutoff: float = 1.0) -> torch.Tensor:
    """Ramp-filter projections p (..., D) sampled every `spacing` mm: q = (1/spacing) h * p.

    q approximates the inverse Fourier transform of |ρ| P(ρ) (ρ in cycles/mm), so that
    f = ∫_0^π q_θ(x·e_θ) dθ (Kak & Slaney Eq. 45).
    """
    plen = padded_length(p.shape[-1])
    h = ramlak_kernel(plen, torch.float64, p.device)
    return apply_kernel(p, h, name, cutoff) / spacing
