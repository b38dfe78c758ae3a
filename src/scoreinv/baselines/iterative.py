"""Direct and Krylov/row-action baselines: FBP, zero-filling, SIRT, CGLS (generic over A).

- FBP delegates to the CT operator's own `fbp(y, filter=...)`.
- zero-filled MRI = A^T y (Re(T^{-1} Λ y) for the orthonormal masked FFT).
- SIRT (Gilbert 1972; e.g. Kak & Slaney §7.4): x <- x + C A^T R (y - A x), R = diag(1 / A 1),
  C = diag(1 / A^T 1), optionally projected onto x >= 0. Needs a nonnegative operator (CT).
- CGLS (Hestenes-Stiefel CG on A^T A x = A^T y without forming A^T A; Björck 1996 §7.4),
  batched with per-image step sizes; the iteration count is the regulariser.
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError, check_range
from ..physics.base import LinearOperator, real_inner
from .common import Recon, check_iters, check_operator, image_dtype, start_image


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def fbp(op: LinearOperator, y: torch.Tensor, filter: str = "ramp") -> Recon:
    """Filtered back-projection by the operator's own `fbp` (CT operators). (B, *meas) -> Recon."""
    check_operator(op)
    if not callable(getattr(op, "fbp", None)):
        raise ScoreinvError(f"fbp: {op.name} has no filtered back-projection; expected a CT operator")
    y = op.check_measurement(y)
    return Recon(op.fbp(y, filter=filter), 0, "fbp")


def zero_filled(op: LinearOperator, y: torch.Tensor) -> Recon:
    """A^T y; for MRI's orthonormal masked FFT this is the zero-filled reconstruction (real part
    for real images). For other operators it is the plain back-projection."""
    check_operator(op)
    return Recon(op.adjoint(op.check_measurement(y)), 0, "zero_filled")


def sirt(op: LinearOperator, y: torch.Tensor, iters: int = 100, x0: torch.Tensor | None = None,
         nonneg: bool = True, relax: float = 1.0) -> Recon:
    """SIRT for a nonnegative operator (CT). (B, *meas) -> Recon with x (B, 1, H, W).

    Rows (columns) of A with zero sum get weight 0. For a consistent system SIRT converges to a
    solution of A x = y (the least-squares solution when A has full column rank); `relax` in
    (0, 2) scales the step.
    """
    check_operator(op)
    y = op.check_measurement(y)
    iters = check_iters(iters)
    relax = check_range("relax", relax, 0.0, 2.0)
    if y.is_complex() or op.complex_image:
        raise ScoreinvError(f"sirt needs a real nonnegative operator such as CT; {op.name} is complex. "
                            "Use cgls or tv instead")
    ones = torch.ones(1, 1, *op.image_shape, dtype=image_dtype(op, y), device=y.device)
    row = op.forward(ones)
    col = op.adjoint(torch.ones_like(y[:1]))
    for name, s in (("row", row), ("column", col)):
        if bool((s < -1e-6 * s.abs().max()).any()):
            raise ScoreinvError(f"sirt: {op.name} has negative {name} sums; SIRT needs a nonnegative "
                                "operator (CT). Use cgls or tv instead")
    eps = 1e-8
    r_w = torch.where(row > eps * row.max(), 1.0 / row.clamp_min(1e-30), torch.zeros_like(row))
    c_w = torch.where(col > eps * col.max(), 1.0 / col.clamp_min(1e-30), torch.zeros_like(col))
    x = start_image(op, y, x0)
    if nonneg:
        x = x.clamp_min(0)
    for _ in range(iters):
        x = x + relax * c_w * op.adjoint(r_w * (y - op.forward(x)))
        if nonneg:
            x = x.clamp_min(0)
    return Recon(x, iters, "sirt")


def cgls(op: LinearOperator, y: torch.Tensor, iters: int = 50, x0: torch.Tensor | None = None,
         tol: float = 1e-6) -> Recon:
    """CGLS: minimise ||A x - y||^2 by CG on the normal equations. (B, *meas) -> Recon.

    Stops early once every image has ||A^T (y - A x)|| <= tol * ||A^T (y - A x0)||; `iters` of
    the result is the number of iterations run. Inner products are real (complex data OK).
    """
    check_operator(op)
    y = op.check_measurement(y)
    iters = check_iters(iters)
    tol = check_range("tol", tol, 0.0)
    x = start_image(op, y, x0)
    r = y - op.forward(x)
    s = op.adjoint(r)
    p = s.clone()
    gamma = real_inner(s, s)
    stop = (tol ** 2) * gamma
    done = 0
    for k in range(iters):
        if bool((gamma <= stop).all()):
            break
        q = op.forward(p)
        qq = real_inner(q, q)
        alpha = torch.where(qq > 0, gamma / qq.clamp_min(1e-300), torch.zeros_like(gamma))
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * q
        s = op.adjoint(r)
        gamma_new = real_inner(s, s)
        beta = torch.where(gamma > 0, gamma_new / gamma.clamp_min(1e-300), torch.zeros_like(gamma))
        p = s + _bcast(beta, p) * p
        gamma = gamma_new
        done = k + 1
    return Recon(x, done, "cgls")
