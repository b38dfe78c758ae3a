"""Shared pieces of the classical baselines: the result record, input checks and ||A||.

The operator norm ||A|| (largest singular value) comes from power iteration on A^T A and is
cached per operator object (operators are treated as immutable once built: a changed mask
needs a new operator). Iterative methods use 1.02 ||A|| so that the estimate, which
approaches ||A|| from below, never makes a step too long.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..errors import ScoreinvError, check_range
from ..physics.base import LinearOperator, real_inner

NORM_SAFETY = 1.02
_NORMS: "weakref.WeakKeyDictionary[LinearOperator, float]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Recon:
    """A baseline's output: images x (B, 1, H, W), the iterations run (0 for direct methods),
    the method name and the regularisation weight used (None if the method has none)."""
    x: torch.Tensor
    iters: int
    method: str
    weight: float | None = None


def check_operator(op) -> LinearOperator:
    if not isinstance(op, LinearOperator):
        raise ScoreinvError(f"expected a scoreinv LinearOperator, got {type(op).__name__}")
    return op


def check_iters(iters, name: str = "iters") -> int:
    if isinstance(iters, bool) or int(iters) != iters or int(iters) < 1:
        raise ScoreinvError(f"{name} = {iters!r}; expected a positive integer")
    return int(iters)


def image_dtype(op: LinearOperator, y: torch.Tensor) -> torch.dtype:
    """The image dtype matching measurement y: complex for complex-image operators."""
    real = y.real.dtype if y.is_complex() else y.dtype
    if not real.is_floating_point:
        real = torch.float32
    if op.complex_image:
        return torch.complex128 if real == torch.float64 else torch.complex64
    return real


def start_image(op: LinearOperator, y: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
    """x0 checked against op (and broadcast to y's batch), or zeros: (B, 1, H, W)."""
    b = y.shape[0]
    if x0 is None:
        return torch.zeros(b, 1, *op.image_shape, dtype=image_dtype(op, y), device=y.device)
    x0 = op.check_image(x0, "x0")
    if x0.shape[0] not in (1, b):
        raise ScoreinvError(f"x0: batch size {x0.shape[0]} does not match the {b} measurements")
    return x0.to(y.device).expand(b, -1, -1, -1).clone()


def check_box(op: LinearOperator, box) -> tuple[float, float] | None:
    if box is None:
        return None
    if op.complex_image:
        raise ScoreinvError("box constraint given for a complex-image operator; use box=None")
    try:
        lo, hi = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ScoreinvError(f"box = {box!r}; expected (low, high) or None") from None
    if not lo < hi:
        raise ScoreinvError(f"box = {box!r}; expected low < high")
    return lo, hi


def check_weight(weight) -> float:
    if weight is None:
        raise ScoreinvError("this method needs a regularisation weight; pick one on validation "
                            "data with scoreinv.baselines.choose_weight")
    return check_range("weight", weight, lo=0.0)


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
    check_operator(op)
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
