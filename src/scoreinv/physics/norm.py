"""||A||, the largest singular value of a linear operator, by power iteration on AᵀA.

Used by the iterative baselines (step sizes) and by the samplers' conditioning (λ and r are
normalised by ||A||², so they mean the same for any operator scale). The estimate is cached per
operator object: operators are treated as immutable once built (a changed mask needs a new
operator). Written here because the operators are matrix-free torch objects that no linear
algebra library's norm estimator takes directly.
"""
from __future__ import annotations

import weakref

import torch

from ..errors import ScoreinvError
from .base import LinearOperator, real_inner

_NORMS: "weakref.WeakKeyDictionary[LinearOperator, float]" = weakref.WeakKeyDictionary()


def _power_iteration(op: LinearOperator, batch: int, device, dtype, iters: int, tol: float) -> float:
    gen = torch.Generator().manual_seed(0)
    shape = (batch, 1, *op.image_shape)
    v = torch.randn(shape, generator=gen, dtype=dtype)
    if op.complex_image:
        v = torch.complex(v, torch.randn(shape, generator=gen, dtype=dtype))
    v = v.to(device) if device is not None else v
    v = v / real_inner(v, v).sqrt().reshape(-1, 1, 1, 1)
    est = torch.zeros(batch, dtype=torch.float64)
    for _ in range(iters):
        w = op.adjoint(op.forward(v))
        nrm = real_inner(w, w).sqrt()
        if bool((nrm == 0).any()):
            raise ScoreinvError(f"{op.name}: A^T A maps a random image to zero; the operator looks empty")
        v = w / nrm.reshape(-1, 1, 1, 1)
        new = nrm.double().cpu()
        done = bool(((new - est).abs() <= tol * new).all())
        est = new
        if done:
            break
    return float(est.max()) ** 0.5


def operator_norm(op: LinearOperator, device=None, dtype: torch.dtype = torch.float32, batch: int = 1,
                  iters: int = 200, tol: float = 1e-7) -> float:
    """||A||_2 by power iteration on A^T A (seeded start, real `dtype` images on `device`),
    cached per operator; stops when the estimate changes by less than `tol` (relative).

    An operator with per-sample parameters (one that rejects a batch of one) is estimated on a
    batch of `batch` images, and the largest per-sample norm is returned.
    """
    if not isinstance(op, LinearOperator):
        raise ScoreinvError(f"expected a scoreinv LinearOperator, got {type(op).__name__}")
    cached = _cache_get(op)
    if cached is not None:
        return cached
    try:
        norm = _power_iteration(op, 1, device, dtype, iters, tol)
    except ScoreinvError:
        if batch == 1:
            raise
        norm = _power_iteration(op, batch, device, dtype, iters, tol)
    _cache_put(op, norm)
    return norm


def _cache_get(op):
    """The cached norm of `op`, or None (also for an unhashable operator, which is never cached)."""
    try:
        return _NORMS.get(op)
    except TypeError:
        return None


def _cache_put(op, norm: float) -> None:
    if getattr(type(op), "__hash__", None) is not None:
        _NORMS[op] = norm
