"""The linear-operator interface every solver uses (docs/design.md §2.4).

Conventions
- Images: real tensors of shape (B, 1, H, W) (float32), or complex (B, 1, H, W) for
  complex-valued MRI. `image_shape` is (H, W).
- Measurements: tensors of shape (B, *meas_shape), real or complex.
- Inner products are real: <u, v> = Re(sum conj(u) v), so the adjoint of a map from real
  images to complex data is Re(A^H y).

Operators with the decomposition A = P(Λ) T (T invertible, Λ a 0/1 mask) set
`has_decomposition = True` and provide `T`, `T_inv`, `mask` (bool, broadcastable to the
T-domain), `embed` (P(Λ)^{-1}: measurement -> T-domain, zero off the mask) and `restrict`
(P(Λ): T-domain -> measurement). Every operator gets the generic regularised least-squares
solve of docs/design.md §2.6 (conjugate gradient on the normal equations), used for operators
without a cheap exact T.
"""
from __future__ import annotations

import abc

import torch

from ..errors import ScoreinvError, check_finite, check_images


def real_inner(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample real inner product Re(sum conj(u) v) over all but the batch axis -> (B,)."""
    p = (u.conj() * v).real if (u.is_complex() or v.is_complex()) else u * v
    return p.flatten(1).sum(1)


class LinearOperator(abc.ABC):
    """A linear measurement operator A: (B, 1, H, W) -> (B, *meas_shape)."""

    image_shape: tuple[int, int]
    meas_shape: tuple[int, ...]
    complex_image: bool = False
    has_decomposition: bool = False
    name: str = "operator"

    # --- to be implemented -------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x: (B, 1, H, W) -> (B, *meas_shape)."""

    @abc.abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y: (B, *meas_shape) -> (B, 1, H, W)."""

    # --- shared ------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def to(self, device) -> "LinearOperator":
        """Move every tensor attribute, and every operator this one wraps, to `device` (in place);
        return self."""
        for k, v in vars(self).items():
            if torch.is_tensor(v):
                setattr(self, k, v.to(device))
            elif isinstance(v, LinearOperator):
                v.to(device)
        return self

    def check_image(self, x: torch.Tensor, name: str = "image") -> torch.Tensor:
        """Raise unless x is a finite (B, 1, H, W) batch of this operator's size, real unless
        the operator was built for complex images."""
        x = check_images(name, x, size=self.image_shape, channels=1)
        if x.is_complex() and not self.complex_image:
            raise ScoreinvError(f"{name}: complex image given to a real-image {self.name}; "
                                "expected a real tensor (or build the operator with complex_image=True)")
        return x

    def check_measurement(self, y: torch.Tensor, name: str = "measurement") -> torch.Tensor:
        """Raise unless y has shape (B, *meas_shape) and is finite."""
        if not torch.is_tensor(y) or tuple(y.shape[1:]) != tuple(self.meas_shape):
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ScoreinvError(
                f"{name}: shape {shape} does not fit {self.name}; expected (B, {', '.join(map(str, self.meas_shape))})")
        return check_finite(name, y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x."""
        return self.adjoint(self.forward(x))

    def lstsq(self, y: torch.Tensor, x0: torch.Tensor, reg: float | torch.Tensor = 0.0,
              iters: int = 20, tol: float = 1e-5) -> torch.Tensor:
        """argmin_x ||A x - y||^2 + reg ||x - x0||^2 by conjugate gradient, started at x0.

        Solves (A^T A + reg I) x = A^T y + reg x0 per sample (reg may be (B,)). With reg = 0 and
        an under-determined consistent system, CG started at x0 converges to the projection
        of x0 onto {A x = y} (docs/design.md §2.6, the path for operators without a cheap T).
        A sample stops (its step is frozen) once its residual norm falls below tol times the norm
        of the right-hand side, so iterating on round-off with a singular A^T A cannot diverge.
        """
        reg_t = torch.as_tensor(reg, dtype=x0.real.dtype, device=x0.device)
        reg_b = reg_t.reshape(-1, *([1] * (x0.ndim - 1))) if reg_t.ndim else reg_t

        def apply(v):
            return self.normal(v) + reg_b * v

        def bc(v):
            return v.reshape(-1, *([1] * (x0.ndim - 1)))

        x = x0.clone()
        rhs = self.adjoint(y) + reg_b * x0
        r = rhs - apply(x)
        p = r.clone()
        rs = real_inner(r, r)
        # relative to the right-hand side: round-off in r is relative to it, not to r
        stop = (tol ** 2) * real_inner(rhs, rhs).clamp_min(1e-30)
        for _ in range(iters):
            active = rs > stop
            if not bool(active.any()):
                break
            ap = apply(p)
            denom = real_inner(p, ap)
            ok = active & (denom > 0)
            alpha = torch.where(ok, rs / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(rs))
            x = x + bc(alpha) * p
            r = r - bc(alpha) * ap
            rs_new = real_inner(r, r)
            beta = torch.where(ok, rs_new / torch.where(ok, rs, torch.ones_like(rs)), torch.zeros_like(rs))
            p = r + bc(beta) * p
            rs = torch.where(ok, rs_new, torch.zeros_like(rs))
        return x

    # --- decomposition (optional) ------------------------------------------------------
    def T(self, x: torch.Tensor) -> torch.Tensor:
        raise ScoreinvError(f"{type(self).__name__} has no A = P(Λ)T decomposition; use lstsq (conjugate gradient)")

    def T_inv(self, z: torch.Tensor) -> torch.Tensor:
        raise ScoreinvError(f"{type(self).__name__} has no A = P(Λ)T decomposition; use lstsq (conjugate gradient)")

    def embed(self, y: torch.Tensor) -> torch.Tensor:
        raise ScoreinvError(f"{type(self).__name__} has no A = P(Λ)T decomposition; use lstsq (conjugate gradient)")

    def restrict(self, z: torch.Tensor) -> torch.Tensor:
        raise ScoreinvError(f"{type(self).__name__} has no A = P(Λ)T decomposition; use lstsq (conjugate gradient)")
