"""Sparse CT system matrices (strip-area / separable-footprint model) with an exact transpose.

Why hand-written: torch has no tomographic projector, ASTRA/scikit-image are not differentiable
torch operators and have no matched adjoint on arbitrary devices. A precomputed sparse matrix
gives forward = A x and adjoint = Aᵀ y (the exact transpose) as two CSR mat-muls, on CPU or
GPU, batched, differentiable.

Model. Each pixel is a square of side h (mm). For a ray direction θ its chord-length profile
across the rays (coordinate t, mm) is the trapezoid c(t) = h² (box_a * box_b)(t), the
density of the sum of two uniforms on [-a, a] and [-b, b] with a = h|cos θ|/2,
b = h|sin θ|/2 (∫ c dt = h², plateau h / max(|cos θ|, |sin θ|)). The weight of pixel j in
bin k is the mean chord over the bin's width at the pixel,

    A[k, j] = (C(t_hi) - C(t_lo)) / (t_hi - t_lo),  C = ∫ c,

so a sinogram entry is the bin-averaged line integral (mm · value) of the pixelated image.
Parallel beam: t = s - s_j with the bin edges s (exactly the strip-area model, as ASTRA's
'strip' projector). Fan beam: the bin edges are the fan angles γ_e, mapped to the pixel as
t = L tan(γ_e - γ_j) (L the source-pixel distance, γ_j the fan angle of the pixel centre),
and the trapezoid uses the local ray direction θ_j = β - γ_j (separable-footprint
approximation, exact to first order in h / L).

The matrix is built once per geometry by vectorised torch code over chunks of pixels, stored
as CSR of Aᵀ (pixel-major, built in order) and of A (via SciPy's CSR->CSC conversion), and
cached by geometry key.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp
import torch

from .geometry import FanGeometry, ParallelGeometry

_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_CACHE_MAX_NNZ = 120_000_000  # non-zeros of A kept in all: ≈ 16 bytes each (A and Aᵀ), ≈ 1.9 GB


def _cdf(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CDF of U[-a, a] + U[-b, b] at t (a >= b >= 0), broadcastable float64 tensors.

    b is raised to at least 1e-6 a (a footprint change below 1e-6 pixel) so that the
    quadratic-spline formula never divides by zero; float64 keeps its cancellation < 1e-9.
    """
    b = torch.maximum(b, 1e-6 * a)
    p, m = a + b, a - b

    def q(u):  # max(u, 0)^2, in place on a fresh tensor
        return u.clamp_min_(0.0).square_()

    acc = q(t + p)
    acc -= q(t + m)
    acc -= q(t - m)
    acc += q(t - p)
    return acc.div_(8.0 * a * b).clamp_(0.0, 1.0)


def _halfwidths(theta: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    c = (h * 0.5) * theta.cos().abs()
    s = (h * 0.5) * theta.sin().abs()
    return torch.maximum(c, s), torch.minimum(c, s)


def _candidates(k_lo: torch.Tensor, k_hi: torch.Tensor) -> torch.Tensor:
    kk = int((k_hi - k_lo).max().item()) + 1
    return k_lo[..., None] + torch.arange(kk, dtype=k_lo.dtype)


def _parallel_chunk(g: ParallelGeometry, x, y, th):
    """Pixels (x, y) (P,), all views: bin edges t (P, V, K+1), a, b, widths, bins k (P, V, K)."""
    h, ds, nd = g.pixel_size, g.det_spacing, g.n_det
    c = torch.as_tensor(g.rotation_center_mm)
    a, b = _halfwidths(th, h)                                          # (V,)
    sc = (x[:, None] - c[0]) * th.cos()[None] + (y[:, None] - c[1]) * th.sin()[None]  # (P, V)
    off = (nd - 1) / 2.0
    u = sc / ds + off
    k_lo = torch.floor(u - (a + b) / ds + 0.5)
    k_hi = torch.floor(u + (a + b) / ds + 0.5)
    k = _candidates(k_lo, k_hi)                                         # (P, V, K)
    t0 = (k_lo - off - 0.5) * ds - sc                                   # first edge, (P, V)
    t = t0[..., None] + torch.arange(k.shape[-1] + 1, dtype=t0.dtype) * ds  # edges (P, V, K+1)
    return t, a[None, :, None], b[None, :, None], ds, k, k_hi


def _fan_chunk(g: FanGeometry, x, y, beta):
    """Fan-beam analogue of `_parallel_chunk` (edges mapped as t = L tan(γ_e - γ_j))."""
    h, nd = g.pixel_size, g.n_det
    src = torch.as_tensor(g.sources())                                 # (V, 2)
    vx = x[:, None] - src[None, :, 0]
    vy = y[:, None] - src[None, :, 1]
    ell = -vx * beta.sin() + vy * beta.cos()                           # along e_c
    lat = vx * beta.cos() + vy * beta.sin()                            # along e_u
    dist = torch.sqrt(ell * ell + lat * lat)
    gam = torch.atan2(lat, ell)                                        # (P, V)
    a, b = _halfwidths(beta[None, :] - gam, h)
    delta = torch.atan((a + b) / dist)
    off = (nd - 1) / 2.0
    if g.detector == "equiangular":
        def index(gm):
            return gm / g.det_angle + off

        def edge(kf):
            return (kf - off) * g.det_angle
    else:
        def index(gm):
            return g.detector_distance * torch.tan(gm) / g.det_spacing + off

        def edge(kf):
            return torch.atan((kf - off) * g.det_spacing / g.detector_distance)
    k_lo = torch.floor(index(gam - delta) + 0.5)
    k_hi = torch.floor(index(gam + delta) + 0.5)
    k = _candidates(k_lo, k_hi)
    ke = torch.cat([k, k[..., -1:] + 1.0], -1) - 0.5
    t = dist[..., None] * torch.tan((edge(ke) - gam[..., None]).clamp(-1.4, 1.4))
    return t, a[..., None], b[..., None], t.diff(dim=-1), k, k_hi


def _build(g, chunk_pixels: int = 2048) -> tuple[sp.csr_matrix, int]:
    """Aᵀ as a SciPy CSR matrix (N² x V·D), float32, int32 indices."""
    xs, ys = g.pixel_centers()
    xs, ys = torch.from_numpy(xs.copy()), torch.from_numpy(ys.copy())
    ang = torch.from_numpy(np.asarray(g.angles, dtype=np.float64).copy())
    nv, nd = g.n_views, g.n_det
    step = max(1, chunk_pixels * 180 // max(nv, 1))
    fn = _parallel_chunk if isinstance(g, ParallelGeometry) else _fan_chunk
    counts, cols, vals = [], [], []
    view_off = (torch.arange(nv, dtype=torch.float64) * nd)[None, :, None]
    for p0 in range(0, xs.numel(), step):
        t, a, b, width, k, k_hi = fn(g, xs[p0:p0 + step], ys[p0:p0 + step], ang)
        w = _cdf(t, a, b).diff(dim=-1).mul_(g.pixel_size ** 2).div_(width)   # mean chord, mm
        # bins past the footprint get exactly zero weight; drop them and those off the detector
        valid = (w > 1e-9 * g.pixel_size) & ((k - (nd - 1) / 2.0).abs_() < nd / 2.0)
        counts.append(valid.flatten(1).sum(1))
        cols.append(k.add_(view_off)[valid].to(torch.int32))
        vals.append(w[valid].to(torch.float32))
    indptr = torch.zeros(xs.numel() + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.cat(counts), 0)
    nnz = int(indptr[-1])
    if nnz >= 2 ** 31:
        raise MemoryError(f"system matrix too large ({nnz} non-zeros) for int32 indices")
    at = sp.csr_matrix((torch.cat(vals).numpy(), torch.cat(cols).numpy(), indptr.to(torch.int32).numpy()),
                       shape=(xs.numel(), nv * nd))
    return at, nnz


def _to_torch_csr(m: sp.csr_matrix) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)),
                                       torch.from_numpy(m.indices.astype(np.int32)),
                                       torch.from_numpy(m.data.astype(np.float32)), size=m.shape,
                                       check_invariants=False)


def system_matrices(g, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Aᵀ) as torch CSR float32 tensors on the CPU, A of shape (V·D, N²).

    Rows of A are ordered view-major (row = view * D + bin); columns are pixels, row-major.
    With cache=True the pair is kept (keyed by geometry, least recently used dropped first).
    """
    key = g.key
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    at, nnz = _build(g)
    a = at.tocsc()  # CSC of Aᵀ == CSR of A
    a = sp.csr_matrix((a.data, a.indices, a.indptr), shape=(at.shape[1], at.shape[0]))
    pair = (_to_torch_csr(a), _to_torch_csr(at))
    if not cache:
        return pair
    _CACHE[key] = pair
    total = sum(p[0].values().numel() for p in _CACHE.values())
    while total > _CACHE_MAX_NNZ and len(_CACHE) > 1:
        _, old = _CACHE.popitem(last=False)
        total -= old[0].values().numel()
    return pair


def clear_cache() -> None:
    """Drop every cached system matrix."""
    _CACHE.clear()


class _SparseApply(torch.autograd.Function):
    """y = M x for a CSR matrix M with known transpose Mt; gradient Mt g (x: (n, B))."""

    @staticmethod
    def forward(ctx, x, m, mt):
        ctx.mt = mt
        return torch.sparse.mm(m, x) if x.shape[1] > 1 else torch.mv(m, x[:, 0])[:, None]

    @staticmethod
    def backward(ctx, g):
        mt = ctx.mt
        g = g.contiguous()
        gx = torch.sparse.mm(mt, g) if g.shape[1] > 1 else torch.mv(mt, g[:, 0])[:, None]
        return gx, None, None


def sparse_apply(m: torch.Tensor, mt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """M @ x for x of shape (n, B) (differentiable; the gradient uses the stored transpose)."""
    return _SparseApply.apply(x.contiguous(), m, mt)


class MatrixCache:
    """Per-operator copies of (A, Aᵀ) on each device and dtype used."""

    def __init__(self, geometry, cache: bool = True):
        self.geometry = geometry
        self.cache = cache
        self._copies: dict = {}

    def get(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (ref.device, ref.dtype)
        if key not in self._copies:
            a, at = system_matrices(self.geometry, self.cache)
            if ref.dtype != torch.float32:
                a, at = a.to(ref.dtype), at.to(ref.dtype)
            self._copies[key] = (a.to(ref.device), at.to(ref.device))
        return self._copies[key]

    @property
    def nnz(self) -> int:
        return int(system_matrices(self.geometry, self.cache)[0].values().numel())


__all__ = ["system_matrices", "sparse_apply", "clear_cache", "MatrixCache"]
