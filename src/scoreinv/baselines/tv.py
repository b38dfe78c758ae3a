"""Isotropic total-variation reconstruction by PDHG (Chambolle & Pock 2011, Alg. 1).

Problem (weights are relative to the operator norm, so one grid fits CT and MRI alike):

    min_x  1/(2 ||A||^2) ||A x - y||^2 + weight * TV(x)  [+ indicator of box lo <= x <= hi]

with TV(x) = sum_ij sqrt(|D_h x|^2 + |D_w x|^2) (forward differences, Neumann boundary).
Writing Â = A / ||A||, ŷ = y / ||A||, K = [Â; D], ||K||^2 <= 1 + 8, and the steps are
tau = 0.99 r / 3, sigma = 0.99 / (3 r) (tau sigma ||K||^2 < 1) with r = `step_ratio`; r = 10
converged 3-10x faster than r = 1 on sparse-view CT and masked-FFT MRI (measured). Dual updates: p <- (p + sigma (Â x̄ - ŷ)) / (1 + sigma) (the prox of
the conjugate of 1/2 ||. - ŷ||^2), q <- projection of q + sigma D x̄ onto {|q_ij| <= weight};
primal x <- clip(x - tau (Â^T p - div q)), x̄ = 2 x_new - x. Complex images (complex MRI)
use |.| of the complex gradient; the box is then not allowed.
"""
from __future__ import annotations

import torch

from ..errors import check_range
from ..physics.base import LinearOperator
from ..physics.norm import operator_norm
from .common import NORM_SAFETY, Recon, check_box, check_iters, check_operator, check_weight, start_image


def grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary: (B, C, H, W) -> (B, C, 2, H, W)."""
    g = torch.zeros(*x.shape[:2], 2, *x.shape[2:], dtype=x.dtype, device=x.device)
    g[:, :, 0, :-1] = x[:, :, 1:] - x[:, :, :-1]
    g[:, :, 1, :, :-1] = x[..., 1:] - x[..., :-1]
    return g


def div(q: torch.Tensor) -> torch.Tensor:
    """Discrete divergence, the negative adjoint of `grad`: (B, C, 2, H, W) -> (B, C, H, W)."""
    qh, qw = q[:, :, 0], q[:, :, 1]
    d = torch.zeros_like(qh)
    d[:, :, :-1] += qh[:, :, :-1]
    d[:, :, 1:] -= qh[:, :, :-1]
    d[..., :-1] += qw[..., :-1]
    d[..., 1:] -= qw[..., :-1]
    return d


def tv_value(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per image: (B, C, H, W) -> (B,)."""
    g = grad(x)
    return g.abs().pow(2).sum(2).sqrt().flatten(1).sum(1)


def tv_recon(op: LinearOperator, y: torch.Tensor, weight: float | None = None, iters: int = 300,
             x0: torch.Tensor | None = None, box=None, tol: float = 0.0, step_ratio: float = 10.0) -> Recon:
    """TV-regularised reconstruction (module docstring). (B, *meas) -> Recon, x (B, 1, H, W).

    `box` = (lo, hi) constrains values (e.g. (0, 1)); `tol` > 0 stops once every image's
    relative change ||x_k+1 - x_k|| / ||x_k+1|| falls below it.
    """
    check_operator(op)
    y = op.check_measurement(y)
    weight = check_weight(weight)
    iters = check_iters(iters)
    tol = check_range("tol", tol, 0.0)
    box = check_box(op, box)
    a = NORM_SAFETY * operator_norm(op, y.device, y.real.dtype if y.is_complex() else y.dtype, y.shape[0])
    yn = y / a
    x = start_image(op, y, x0)
    if box is not None:
        x = x.clamp(*box)
    xbar = x.clone()
    p = torch.zeros_like(y)
    q = torch.zeros(*x.shape[:2], 2, *x.shape[2:], dtype=x.dtype, device=x.device)
    step_ratio = check_range("step_ratio", step_ratio, 1e-6)
    tau, sigma = 0.99 * step_ratio / 3.0, 0.99 / (3.0 * step_ratio)
    done = 0
    for k in range(iters):
        p = (p + sigma * (op.forward(xbar) / a - yn)) / (1.0 + sigma)
        q = q + sigma * grad(xbar)
        if weight > 0:
            mag = q.abs().pow(2).sum(2, keepdim=True).sqrt()
            q = q / (mag / weight).clamp_min(1.0)
        else:
            q = torch.zeros_like(q)
        x_new = x - tau * (op.adjoint(p) / a - div(q))
        if box is not None:
            x_new = x_new.clamp(*box)
        xbar = 2 * x_new - x
        done = k + 1
        if tol > 0:
            change = (x_new - x).abs().flatten(1).norm(dim=1) / x_new.abs().flatten(1).norm(dim=1).clamp_min(1e-12)
            x = x_new
            if bool((change <= tol).all()):
                break
        else:
            x = x_new
    return Recon(x, done, "tv", weight)
