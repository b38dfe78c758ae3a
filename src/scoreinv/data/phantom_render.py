"""Rendering of procedural CT phantoms at any resolution (batched torch, device follows input).

Coordinates: the image covers the square [-1, 1]^2; x grows with the column index (left to
right), y grows upwards (row 0 is the top, y = +1), pixel (i, j) has its centre at
x = -1 + (2j + 1)/S, y = 1 - (2i + 1)/S. An ellipse (value, a, b, x0, y0, phi) is the set
q(x, y) <= 1 with

    u = (x - x0) cos(phi) + (y - y0) sin(phi),   v = -(x - x0) sin(phi) + (y - y0) cos(phi),
    q = u^2 / a^2 + v^2 / b^2,

phi counter-clockwise from the +x axis (the Shepp-Logan / Kak-Slaney convention). A plain
phantom is the sum of value * indicator over its ellipses: the same list gives exact line
integrals (chord length times value, summed).

Why hand-written: no library renders batched, anti-aliased ellipse phantoms with textures on
the GPU. Each pixel value is the pixel *area average* of the continuous object, approximated
at edges by a one-pixel linear ramp of the signed distance d to the boundary,
cov = clamp(1/2 - d / h, 0, 1), h the pixel width, d = (sqrt(q) - 1) sqrt(q) 2 / |grad q|
(exact for circles and along an ellipse's axes). For ellipses thinner than a pixel (minor
axis 2b < h) the coverage is scaled by 4 (2b) h / (2b + h)^2 so that its integral across the
ellipse stays 2b. So render(p, 4S) area-downsampled by 4 is close
to render(p, S), and no two resolutions are an "inverse crime" pair.

Both quadratic forms (q and |grad q|^2 / 4) are linear in the features
[x^2, xy, y^2, x, y, 1], so they are evaluated for all ellipses at once by a matrix product;
sums of sinusoids are separable in x and y and become a (S x 2M) @ (2M x S) product.
"""
from __future__ import annotations

import math

import torch

from ..errors import check_int


def pixel_centres(size: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(x of the columns (S,), y of the rows (S,)) in [-1, 1], y decreasing downwards."""
    c = (2 * torch.arange(size, device=device, dtype=dtype) + 1) / size - 1
    return c, -c


def quadratic_features(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(6, S*S): [x^2, xy, y^2, x, y, 1] at the pixel centres, row-major."""
    xs, ys = pixel_centres(size, device, dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)])


def ellipse_quadratic(ell: torch.Tensor, power: int = 1) -> torch.Tensor:
    """Coefficients (..., 6) of (p - c)^T M^power (p - c), M = R diag(a^-2, b^-2) R^T, in the
    features of quadratic_features: power 1 gives q, power 2 gives |grad q|^2 / 4."""
    a, b, x0, y0, phi = ell[..., 1], ell[..., 2], ell[..., 3], ell[..., 4], ell[..., 5]
    c, s = torch.cos(phi), torch.sin(phi)
    ia, ib = a ** (-2 * power), b ** (-2 * power)
    A = c * c * ia + s * s * ib
    Bxy = 2 * c * s * (ia - ib)
    C = s * s * ia + c * c * ib
    return torch.stack([A, Bxy, C, -2 * A * x0 - Bxy * y0, -Bxy * x0 - 2 * C * y0,
                        A * x0 * x0 + Bxy * x0 * y0 + C * y0 * y0], -1)


def _quad(co: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Evaluate co . [x^2, xy, y^2, x, y, 1] on a grid: co (..., 6), x (..., 1, P), y (..., P, 1)."""
    c = co.unsqueeze(-1).unsqueeze(-1)
    col = c[..., 0, :, :] * x * x + c[..., 3, :, :] * x
    row = c[..., 2, :, :] * y * y + c[..., 4, :, :] * y + c[..., 5, :, :]
    return (row + col).addcmul_(c[..., 1, :, :], x * y)


def _coverage(ell: torch.Tensor, x: torch.Tensor, y: torch.Tensor, h: float, antialias: bool) -> torch.Tensor:
    """Pixel coverage of ellipses ell (..., 6) on the grid x (..., 1, P), y (..., P, 1).

    Anti-aliased: cov = clamp(1/2 - d / h, 0, 1), h the pixel width and
    d = (sqrt(q) - 1) sqrt(q) * 2 / |grad q| the signed distance to the boundary (exact for
    circles and along the axes of an ellipse, first-order elsewhere).
    """
    q = _quad(ellipse_quadratic(ell), x, y)
    if not antialias:
        return (q <= 1).to(ell.dtype)
    g = _quad(ellipse_quadratic(ell, 2), x, y).clamp_min_(1e-30).rsqrt_()   # 2 / |grad q|
    q = q.clamp_min_(1e-12)
    cov = q.sqrt().sub_(q).mul_(g).mul_(1.0 / h).add_(0.5).clamp_(0, 1)
    # thinner than a pixel: the ramp integrates to (2b + h)^2 / 4h across, not 2b; rescale
    w = 2 * torch.minimum(ell[..., 1], ell[..., 2])
    kappa = torch.where(w < h, 4 * w * h / (w + h) ** 2, torch.ones_like(w))
    if bool((kappa < 1).any()):
        cov.mul_(kappa.reshape(*kappa.shape, *([1] * (cov.ndim - kappa.ndim))))
    return cov


def ellipse_coverage(ell: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Fraction of each pixel inside each ellipse: ell (B, K, 6) -> (B, K, S*S) in [0, 1]."""
    xs, ys = pixel_centres(size, ell.device, ell.dtype)
    cov = _coverage(ell, xs.view(1, 1, 1, -1), ys.view(1, 1, -1, 1), 2.0 / size, antialias)
    return cov.reshape(*ell.shape[:2], size * size)


def _patches(lo_x: torch.Tensor, hi_y: torch.Tensor, extent: float, size: int):
    """Square pixel patches covering [lo_x, lo_x + extent] x [hi_y - extent, hi_y] (image units)
    for objects of shape (*L) -> x (*L, 1, P), y (*L, P, 1), pixel index (*L, P*P), valid (*L, P, P)."""
    h = 2.0 / size
    P = min(size, int(math.ceil(extent / h)) + 2)
    j0 = torch.floor((lo_x + 1) / h - 0.5).long()
    i0 = torch.floor((1 - hi_y) / h - 0.5).long()
    ar = torch.arange(P, device=lo_x.device)
    j = j0.unsqueeze(-1) + ar                                               # (B, n, P)
    i = i0.unsqueeze(-1) + ar
    x = (-1 + (2 * j + 1) * h / 2).to(lo_x.dtype).unsqueeze(-2)
    y = (1 - (2 * i + 1) * h / 2).to(lo_x.dtype).unsqueeze(-1)
    valid = ((j >= 0) & (j < size)).unsqueeze(-2) & ((i >= 0) & (i < size)).unsqueeze(-1)
    idx = (i.clamp(0, size - 1).unsqueeze(-1) * size + j.clamp(0, size - 1).unsqueeze(-2))
    return x, y, idx.flatten(-2), valid


def sinusoid_field(freq: torch.Tensor, phase: torch.Tensor, amp: torch.Tensor, size: int) -> torch.Tensor:
    """sum_m amp_m cos(2 pi (fx_m x + fy_m y) + phase_m) on the pixel grid.

    freq (..., M, 2) in cycles per unit length, phase (..., M), amp (..., M) -> (..., S, S).
    """
    xs, ys = pixel_centres(size, freq.device, freq.dtype)
    ax = 2 * math.pi * freq[..., 0].unsqueeze(-2) * xs.unsqueeze(-1) + phase.unsqueeze(-2)  # (..., S, M)
    ay = 2 * math.pi * freq[..., 1].unsqueeze(-2) * ys.unsqueeze(-1)                         # (..., S, M)
    amp = amp.unsqueeze(-2)
    left = torch.cat([torch.cos(ay) * amp, -torch.sin(ay) * amp], -1)                        # rows
    right = torch.cat([torch.cos(ax), torch.sin(ax)], -1)                                    # columns
    return left @ right.transpose(-1, -2)


def segment_profile(seg: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """max over segments of exp(-d^2 / (2 sigma^2)), d the distance to the segment.

    seg (B, V, 4) = (x1, y1, x2, y2), sigma (B, V) -> (B, S*S). Evaluated on patches around
    each segment (4 sigma margin; beyond it the profile is below 4e-4).
    """
    B = seg.shape[0]
    x1, y1, x2, y2 = (t.unsqueeze(-1).unsqueeze(-1) for t in seg.unbind(-1))
    m = 4 * sigma
    lo = torch.minimum(seg[..., 0], seg[..., 2]) - m
    hi = torch.maximum(seg[..., 1], seg[..., 3]) + m
    ext = torch.maximum((seg[..., 0] - seg[..., 2]).abs(), (seg[..., 1] - seg[..., 3]).abs()) + 2 * m
    x, y, idx, valid = _patches(lo, hi, float(ext.max()), size)
    idx = idx.flatten(1)
    ex, ey = x2 - x1, y2 - y1
    L2 = (ex * ex + ey * ey).clamp_min(1e-12)
    dx, dy = x - x1, y - y1
    t = ((dx * ex + dy * ey) / L2).clamp_(0, 1)
    d2 = (dx - t * ex) ** 2 + (dy - t * ey) ** 2
    prof = (d2 * (-0.5 / sigma ** 2).unsqueeze(-1).unsqueeze(-1)).clamp_min_(-60).exp_() * valid
    out = torch.zeros(B, size * size, device=seg.device, dtype=seg.dtype)
    return out.scatter_reduce_(1, idx, prof.flatten(1), reduce="amax")


SMALL_EXTENT = 0.6   # ellipses whose bounding square is at most this wide are drawn on patches


def _class_pairs(W: torch.Tensor, b: torch.Tensor, k: torch.Tensor):
    """Non-zero class weights of the listed ellipses: (row into the list, flat (b, c) index, w)."""
    Wl = W[b, :, k]                                                   # (N, C)
    n, c = Wl.nonzero(as_tuple=True)
    return n, b[n] * W.shape[1] + c, Wl[n, c]


def render(params, size: int, antialias: bool = True) -> torch.Tensor:
    """Render a PhantomBatch at `size` x `size` -> (B, 1, S, S) float32 in [0, 1].

    The object is continuous: render(params, 4 S) area-averaged by 4 approximates
    render(params, S) (textures are band-limited to the params' native size). Only ellipses
    that contribute (non-zero value or class weight) are evaluated, the small ones on patches.
    """
    size = check_int("render: size", size, 4, 8192)
    ell = params.ellipses
    B, dev, h, P = ell.shape[0], ell.device, 2.0 / size, size * size
    W = params.class_weights if params.textured else None
    active = ell[..., 0] != 0
    if W is not None:
        active |= (W != 0).any(1)
    rho = torch.maximum(ell[..., 1], ell[..., 2])
    small = 2 * rho + 2 * h <= SMALL_EXTENT
    img = torch.zeros(B * P, device=dev, dtype=ell.dtype)
    C = W.shape[1] if W is not None else 0
    masks = torch.zeros(B * C * P, device=dev, dtype=ell.dtype)
    xs, ys = pixel_centres(size, dev, ell.dtype)
    b, k = (active & ~small).nonzero(as_tuple=True)
    if len(b):
        e = ell[b, k]                                                  # (N, 6)
        cov = _coverage(e, xs.view(1, 1, -1), ys.view(1, -1, 1), h, antialias).reshape(len(b), P)
        img.view(B, P).index_add_(0, b, cov * e[:, :1])
        if W is not None:
            n, bc, w = _class_pairs(W, b, k)
            masks.view(B * C, P).index_add_(0, bc, cov[n] * w.unsqueeze(1))
    b, k = (active & small).nonzero(as_tuple=True)
    if len(b):
        e = ell[b, k]
        r = rho[b, k] + h
        x, y, idx, valid = _patches(e[:, 3] - r, e[:, 4] + r, float(2 * r.max()), size)
        cov = (_coverage(e, x, y, h, antialias) * valid).flatten(1)   # (N, p*p)
        img.index_add_(0, (idx + (b * P).unsqueeze(1)).flatten(), (cov * e[:, :1]).flatten())
        if W is not None:
            n, bc, w = _class_pairs(W, b, k)
            masks.index_add_(0, (idx[n] + (bc * P).unsqueeze(1)).flatten(), (cov[n] * w.unsqueeze(1)).flatten())
    img = img.view(B, P)
    if W is not None:
        masks = masks.view(B, C, P).clamp_(0, 1)
        field = sinusoid_field(params.tex_freq, params.tex_phase, params.tex_amp, size).reshape(B, C, P)
        gf = params.grain_phase
        grain = sinusoid_field(params.grain_freq, gf, torch.full_like(gf, math.sqrt(2.0 / gf.shape[-1])), size)
        field.addcmul_(grain.reshape(B, 1, P), params.grain_amp.unsqueeze(-1))         # (B, C, P)
        vessel = segment_profile(params.vessels, params.vessel_sigma, size)        # (B, P)
        field.addcmul_(vessel.unsqueeze(1), params.vessel_amp.unsqueeze(-1))
        img += (masks * field).sum(1)
    return img.clamp_(0, 1).reshape(B, 1, size, size)
