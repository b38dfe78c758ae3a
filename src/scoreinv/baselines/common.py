"""Shared pieces of the classical baselines: the result record and input checks.

Iterative methods use 1.02 ||A|| (physics.norm.operator_norm) so that the estimate, which
approaches ||A|| from below, never makes a step too long.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ScoreinvError, check_int, check_range
from ..physics.base import LinearOperator

NORM_SAFETY = 1.02


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
    return check_int(name, iters)


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
