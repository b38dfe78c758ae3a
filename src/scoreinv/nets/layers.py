"""Building blocks of NCSN++ (Song et al. 2021, score_sde): FIR resampling, BigGAN and DDPM
residual blocks, DDPM self-attention, Gaussian Fourier / sinusoidal noise embeddings.

Written here because no maintained PyTorch library ships NCSN++'s exact blocks as a
dependency-light module; the layer definitions follow the paper's description.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def variance_scaling_(w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM init: uniform fan-average variance scaling (scale 0 gives zeros, scaled to 1e-10)."""
    scale = 1e-10 if scale == 0 else scale
    fan_in = w.shape[1] * w[0, 0].numel() if w.ndim > 1 else w.shape[0]
    fan_out = w.shape[0] * w[0, 0].numel() if w.ndim > 1 else w.shape[0]
    var = scale / ((fan_in + fan_out) / 2)
    with torch.no_grad():
        return w.uniform_(-math.sqrt(3 * var), math.sqrt(3 * var))


def conv(cin, cout, k=3, init_scale=1.0, bias=True):
    c = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    variance_scaling_(c.weight, init_scale)
    if bias:
        nn.init.zeros_(c.bias)
    return c


def dense(cin, cout, init_scale=1.0):
    d = nn.Linear(cin, cout)
    variance_scaling_(d.weight, init_scale)
    nn.init.zeros_(d.bias)
    return d


def group_norm(c: int) -> nn.GroupNorm:
    """GroupNorm with min(c // 4, 32) groups (NCSN++), lowered to a divisor of c when needed."""
    g = max(1, min(c // 4, 32))
    while c % g:
        g -= 1
    return nn.GroupNorm(num_groups=g, num_channels=c, eps=1e-6)


class FIRResample(nn.Module):
    """Up- or down-sampling by 2 with a separable FIR kernel (default [1, 3, 3, 1]).

    Down: pad, depthwise conv with the normalised kernel, stride 2.
    Up: zero insertion, pad, depthwise conv with the kernel scaled by 4.
    """

    def __init__(self, kernel=(1, 3, 3, 1), up: bool = False):
        super().__init__()
        k = torch.tensor(kernel, dtype=torch.float32)
        k2 = torch.outer(k, k)
        k2 = k2 / k2.sum()
        if up:
            k2 = k2 * 4
        self.register_buffer("k", k2.flip(0, 1)[None, None], persistent=False)
        self.up = up
        n = len(kernel)
        p = n - 2
        self.pad = ((p + 1) // 2 + 1, p // 2) if up else ((p + 1) // 2, p // 2)

    def forward(self, x):
        b, c, h, w = x.shape
        if self.up:
            z = x.new_zeros(b, c, h, 2, w, 2)
            z[:, :, :, 0, :, 0] = x
            x = z.reshape(b, c, 2 * h, 2 * w)
        p0, p1 = self.pad
        x = F.pad(x, (p0, p1, p0, p1))
        k = self.k.to(x.dtype).expand(c, 1, -1, -1)
        return F.conv2d(x, k, stride=1 if self.up else 2, groups=c)


class Resample(nn.Module):
    """Up/down by 2: FIR or nearest/avg-pool, optionally followed (up) or done (down) by a conv."""

    def __init__(self, cin, cout=None, up=False, with_conv=False, fir=True, kernel=(1, 3, 3, 1)):
        super().__init__()
        cout = cout or cin
        self.up, self.fir = up, fir
        self.rs = FIRResample(kernel, up=up) if fir else None
        self.conv = conv(cin, cout, 3) if with_conv else None

    def forward(self, x):
        if self.fir:
            x = self.rs(x)
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest") if self.up else F.avg_pool2d(x, 2)
        return self.conv(x) if self.conv is not None else x


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of log sigma: [sin(2π W s), cos(2π W s)], W ~ N(0, scale²) fixed."""

    def __init__(self, size: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("W", torch.randn(size) * scale)

    def forward(self, s):
        proj = s[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """DDPM/transformer positional embedding of (B,) values -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_positions) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    e = t.float()[:, None] * freqs[None]
    e = torch.cat([torch.sin(e), torch.cos(e)], dim=1)
    return F.pad(e, (0, 1)) if dim % 2 else e


class AttnBlock(nn.Module):
    """DDPM channel-wise self-attention over all positions, with a residual connection."""

    def __init__(self, c, skip_rescale=True, init_scale=0.0):
        super().__init__()
        self.norm = group_norm(c)
        self.qkv = conv(c, 3 * c, 1)
        self.out = conv(c, c, 1, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                           v.transpose(1, 2)[:, None])[:, 0]
        hout = self.out(a.transpose(1, 2).reshape(b, c, h, w))
        return (x + hout) / math.sqrt(2.0) if self.skip_rescale else x + hout


class ResBlock(nn.Module):
    """Residual block with noise-embedding injection.

    `biggan=True`: BigGAN-style block that can resample inside (up/down) with FIR;
    otherwise the DDPM block (no resampling). Output (x + h)/sqrt(2) with skip rescale.
    """

    def __init__(self, cin, cout, temb_dim, dropout=0.0, up=False, down=False, fir=True,
                 kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.0, biggan=True):
        super().__init__()
        self.norm0 = group_norm(cin)
        self.conv0 = conv(cin, cout, 3)
        self.temb = dense(temb_dim, cout) if temb_dim else None
        self.norm1 = group_norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv1 = conv(cout, cout, 3, init_scale=init_scale)
        self.resample = None
        if biggan and (up or down):
            self.resample = Resample(cin, up=up, fir=fir, kernel=kernel)
        self.skip = conv(cin, cout, 1) if (cin != cout or up or down) else None
        self.skip_rescale = skip_rescale

    def forward(self, x, temb=None):
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h)
        if self.temb is not None and temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h
