"""Inter-slice coupling of the data-consistency step: a total-variation penalty along the slice axis,
solved by ADMM on the stacked volume (docs/design.md §9.1-9.2; DiffusionMBIR, Chung et al. CVPR 2023;
DDS, Chung et al. ICLR 2024).

A volume is a batch x (B, 1, H, W) of slices in order along the batch axis. `labels` (B,) says which
images belong together: images i and i + 1 are neighbours in z when their labels are equal (so K
posterior samples of one volume, or two volumes in one batch, never couple; no wrap at the ends):

    (D26)  (D_z x)_i = c_i (x_{i+1} − x_i),   c_i = [labels_i = labels_{i+1}],   i = 0 .. B−2

Every data-consistency step of the solvers is the minimisation of a data term plus ½‖x − x̂‖² (x̂
the current estimate; docs/design.md §2.5, §2.6, §2.11); coupling adds λ_z ‖D_z x‖₁:

    (D27)  x' = argmin_x  Σ_i (w_i / 2) ‖A x_i − ŷ_i‖² + ½ ‖x − x̂‖² + λ_z ‖D_z x‖₁

with the per-slice data weight w_i = 1/γ_i (w = ∞: the constraint A x = ŷ, a hard projection). For
w < ∞ this is the problem ½‖A x − ŷ‖² + (γ/2)‖x − x̂‖² + γλ_z ‖D_z x‖₁ of DiffusionMBIR/DDS divided
by γ; at w = ∞ it stays well posed where theirs leaves the null space of A to the CG start point.
λ_z = 0 gives back the uncoupled step exactly. ADMM (scaled form) with the split v = D_z x:

    (D28)  x ← argmin_x Σ_i (w_i/2)‖A x_i − ŷ_i‖² + ½‖x − x̂‖² + (ρ/2)‖D_z x − (v − u)‖²
           v ← soft(D_z x + u, λ_z/ρ),   u ← u + D_z x − v

`iters` iterations per data-consistency step; v and u are kept from one step of the solver to the
next (warm start, as DiffusionMBIR). The x-update is a quadratic with M = I + ρ D_zᵀD_z (tridiagonal
in z, solved exactly by the Thomas algorithm along the batch axis):
- operators with the decomposition A = P(Λ)T (T unitary, the same for every slice, so T commutes
  with D_z): exact, per T coefficient k a tridiagonal system in z,
  (1 + w_i Λ_k) ξ_i + ρ (D_zᵀD_z ξ)_i = w_i Λ_k z_y + T(x̂ + ρ D_zᵀ(v − u))_i, measured coefficients
  fixed to the data where w = ∞ (the completed mask and data of `conditioning.dc_data`);
- other operators: conjugate gradient preconditioned by M⁻¹ on (W AᵀA + M) x = W Aᵀŷ + M c
  (W = diag(w_i); AᵀA x = Aᵀŷ where w = ∞), started at c = M⁻¹(x̂ + ρ D_zᵀ(v − u)); at w = ∞ it
  converges to the M-norm projection of c onto {A x = ŷ}, the exact x-update. `cg_iters`
  iterations, a volume stops once its residual is below 1e-5 of its right-hand side (as `lstsq`).
"""
from __future__ import annotations

import math

import torch

from ..errors import ScoreinvError, check_int, check_range
from ..physics.base import real_inner


def pair_weights(labels: torch.Tensor) -> torch.Tensor:
    """c (B−1,) float: 1 where images i and i+1 are neighbours in one volume (D26)."""
    return (labels[1:] == labels[:-1]).to(torch.float32)


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image (B,) or per-pair vector as (n, 1, ...) broadcastable to `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.real.dtype if like.is_complex() else like.dtype)


def dz(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """D_z x (B−1, ...) of (D26)."""
    return _bc(c, x) * (x[1:] - x[:-1])


def dz_adjoint(d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """D_zᵀ d (B, ...) for d (B−1, ...): (D_zᵀd)_j = c_{j−1} d_{j−1} − c_j d_j."""
    cd = _bc(c, d) * d
    out = torch.zeros((d.shape[0] + 1, *d.shape[1:]), dtype=d.dtype, device=d.device)
    out[1:] += cd
    out[:-1] -= cd
    return out


def soft(v: torch.Tensor, tau: float) -> torch.Tensor:
    """Soft thresholding sign(v) max(|v| − τ, 0)."""
    return torch.sign(v) * (v.abs() - tau).clamp_min(0)


def tridiagonal_solve(a, c: torch.Tensor, rho: float, r: torch.Tensor) -> torch.Tensor:
    """Solve (diag(a) + ρ D_zᵀD_z) ξ = r along the batch axis by the Thomas algorithm.

    a: a positive number, or a positive tensor with as many axes as r whose leading axis is the batch
    (or 1), so the matrix is strictly diagonally dominant and the elimination is stable; c (B−1,) the
    pair weights; r (B, ...) real or complex. Returns ξ shaped like r."""
    b = r.shape[0]
    off = [0.0] + [float(v) * rho for v in c.tolist()] + [0.0]   # off[j] couples j−1 and j
    if not torch.is_tensor(a):                                    # scalar factors: two tensor ops per slice
        inv, cp = [], []
        for j in range(b):
            m = float(a) + off[j] + off[j + 1] + (off[j] * cp[j - 1] if j else 0.0)
            inv.append(1.0 / m)
            cp.append(-off[j + 1] / m)
        dp = [None] * b
        dp[0] = r[0] * inv[0]
        for j in range(1, b):
            dp[j] = torch.add(r[j], dp[j - 1], alpha=off[j]).mul_(inv[j])
        out = torch.empty_like(r)
        out[b - 1] = dp[b - 1]
        for j in range(b - 2, -1, -1):
            out[j] = torch.add(dp[j], out[j + 1], alpha=-cp[j])
        return out
    a = a.to(r.real.dtype if r.is_complex() else r.dtype)
    if a.ndim != r.ndim or a.shape[0] not in (1, b):
        raise ScoreinvError(f"tridiagonal_solve: diagonal of shape {tuple(a.shape)} for a right-hand side of shape "
                            f"{tuple(r.shape)}; expected a number or a tensor of the same number of axes")
    cpt, dp = [None] * b, [None] * b
    for j in range(b):
        diag = a[j if a.shape[0] > 1 else 0] + (off[j] + off[j + 1])
        if j:
            diag = diag + off[j] * cpt[j - 1]
            dp[j] = (r[j] + off[j] * dp[j - 1]) / diag
        else:
            dp[j] = r[j] / diag
        cpt[j] = -off[j + 1] / diag
    out = torch.empty_like(r)
    out[b - 1] = dp[b - 1]
    for j in range(b - 2, -1, -1):
        out[j] = dp[j] - cpt[j] * out[j + 1]
    return out


def volume_labels(labels, batch: int, device=None) -> torch.Tensor:
    """labels (B,) int64 checked against the batch size; None means one volume (all zeros)."""
    if labels is None:
        return torch.zeros(batch, dtype=torch.int64, device=device)
    lab = torch.as_tensor(labels).reshape(-1)
    if lab.numel() != batch or lab.is_floating_point() or lab.is_complex():
        raise ScoreinvError(f"volume labels: expected {batch} integers (one per image of the batch), got "
                            f"{lab.numel()} of dtype {lab.dtype}")
    return lab.to(device=device, dtype=torch.int64)


class ZTVCoupling:
    """The coupled data-consistency step (D27) by ADMM (D28), with its warm state (v, u).

    One object serves every data-consistency step of one solver run on one batch (its state is the
    warm start); `__call__(op, x_hat, y, w)` returns x' (B, 1, H, W)."""

    def __init__(self, lam: float, labels: torch.Tensor, iters: int = 4, rho: float = 1.0, cg_iters: int = 10,
                 tol: float = 1e-5):
        self.lam = check_range("ztv_lambda", lam, 0.0)
        self.iters = check_int("admm_iters", iters)
        self.rho = check_range("admm_rho", rho, 1e-12)
        self.cg_iters = check_int("cg_iters", cg_iters)
        self.tol = tol
        self.labels = torch.as_tensor(labels).reshape(-1)
        self.c = pair_weights(self.labels.cpu())
        _, self.group = torch.unique_consecutive(self.labels.cpu(), return_inverse=True)
        self.n_groups = int(self.group.max()) + 1 if self.group.numel() else 0
        self.v = self.u = None

    # --- pieces ---------------------------------------------------------------------------------
    def _gsum(self, per_image: torch.Tensor) -> torch.Tensor:
        """Per-image values (B,) summed over each volume and given back per image (B,)."""
        if self.n_groups == 1:
            return per_image.sum().expand(per_image.shape[0])
        g = self.group.to(per_image.device)
        tot = torch.zeros(int(g.max()) + 1, dtype=per_image.dtype, device=per_image.device).index_add_(0, g, per_image)
        return tot[g]

    def m_apply(self, x: torch.Tensor) -> torch.Tensor:
        """M x = x + ρ D_zᵀD_z x."""
        c = self.c.to(x.device)
        return x + self.rho * dz_adjoint(dz(x, c), c)

    def m_solve(self, r: torch.Tensor) -> torch.Tensor:
        """M⁻¹ r (exact, Thomas)."""
        return tridiagonal_solve(1.0, self.c, self.rho, r)

    def weights(self, w, b: int) -> tuple[torch.Tensor | None, bool]:
        """(W (B,) float64 or None for w = ∞, hard) from a number or (B,) tensor of data weights."""
        wt = torch.as_tensor(w, dtype=torch.float64).reshape(-1).cpu()
        wt = wt.expand(b) if wt.numel() == 1 else wt
        if wt.numel() != b or bool(torch.isnan(wt).any()) or bool((wt < 0).any()):
            raise ScoreinvError(f"coupled data-consistency step: data weights {wt.tolist()}; expected {b} values >= 0")
        inf = torch.isinf(wt)
        if bool(inf.all()):
            return None, True
        if bool(inf.any()):
            raise ScoreinvError("coupled data-consistency step: some slices have a hard (w = ∞) data term and others "
                                "a soft one; expected one kind per volume (e.g. diffpir with sigma_floor 0 and noise "
                                "on some slices only: set solver.sigma_floor > 0)")
        return wt, False

    def xupdate(self, op, x_hat: torch.Tensor, vu: torch.Tensor, y: torch.Tensor, w, data=None) -> torch.Tensor:
        """The x-update of (D28) with v − u = vu; `data` = (mask, z_y) of dc_data for the exact path."""
        c = self.c.to(x_hat.device)
        b = x_hat.shape[0]
        wt, hard = self.weights(w, b)
        base = x_hat + self.rho * dz_adjoint(vu, c)
        if data is not None:
            mask, zy = data
            r = op.T(base)
            if hard:
                return op.T_inv(torch.where(mask, zy, tridiagonal_solve(1.0, self.c, self.rho, r)))
            wb = _bc(wt.to(r.device), r)
            return op.T_inv(tridiagonal_solve(1.0 + wb * mask.to(wb.dtype), self.c, self.rho, r + wb * zy))
        return self._pcg(op, self.m_solve(base), y, None if hard else wt.to(x_hat.device, x_hat.dtype), base)

    def _pcg(self, op, x: torch.Tensor, y: torch.Tensor, wt: torch.Tensor | None, base: torch.Tensor) -> torch.Tensor:
        """Conjugate gradient preconditioned by M⁻¹ from x = c (module docstring)."""
        if wt is None:
            def apply(p):
                return op.normal(p)
            rhs = op.adjoint(y)
            r = op.adjoint(y - op.forward(x))
        else:
            wb = _bc(wt, x)

            def apply(p):
                return wb * op.normal(p) + self.m_apply(p)
            rhs = wb * op.adjoint(y) + base
            r = wb * op.adjoint(y - op.forward(x))
        stop = (self.tol ** 2) * self._gsum(real_inner(rhs, rhs)).clamp_min(1e-30)
        z = self.m_solve(r)
        p = z
        rz = self._gsum(real_inner(r, z))
        for _ in range(self.cg_iters):
            active = self._gsum(real_inner(r, r)) > stop
            if not bool(active.any()):
                break
            ap = apply(p)
            den = self._gsum(real_inner(p, ap))
            ok = active & (den > 0)
            alpha = torch.where(ok, rz / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(rz))
            x = x + _bc(alpha, x) * p
            r = r - _bc(alpha, r) * ap
            z = self.m_solve(r)
            rz_new = self._gsum(real_inner(r, z))
            beta = torch.where(ok, rz_new / torch.where(ok, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            p = z + _bc(beta, p) * p
            rz = torch.where(ok, rz_new, torch.zeros_like(rz))
        return x

    # --- the step -------------------------------------------------------------------------------
    def __call__(self, op, x_hat: torch.Tensor, y: torch.Tensor, w, data=None) -> torch.Tensor:
        """x' of (D27) for the batch x̂ (B, 1, H, W) and data ŷ (B, *meas_shape); w: the data weight
        (a number, math.inf for a hard projection, or (B,)); data: (mask, z_y) of `dc_data` to take the
        exact path on an operator with the decomposition."""
        b = x_hat.shape[0]
        if self.labels.numel() != b:
            raise ScoreinvError(f"z-TV coupling: {self.labels.numel()} volume labels for a batch of {b} images")
        c = self.c.to(x_hat.device)
        if self.v is None or self.v.shape != (b - 1, *x_hat.shape[1:]) or self.v.device != x_hat.device:
            self.v = dz(x_hat, c)
            self.u = torch.zeros_like(self.v)
        x = x_hat
        tau = self.lam / self.rho
        for _ in range(self.iters):
            x = self.xupdate(op, x_hat, self.v - self.u, y, w, data)
            d = dz(x, c)
            self.v = soft(d + self.u, tau)
            self.u = self.u + d - self.v
        return x


def data_weight(lam: float, norm2: float = 1.0) -> float:
    """w of (D27) for the λ-projection (D10)/(D11): λ / ((1 − λ) ‖A‖²), ∞ at λ = 1, 0 at λ = 0."""
    return math.inf if lam >= 1.0 else lam / ((1.0 - lam) * norm2)


def objective(op, x: torch.Tensor, x_hat: torch.Tensor, y: torch.Tensor, w, lam: float,
              labels: torch.Tensor | None = None) -> torch.Tensor:
    """The value of (D27) summed over the batch (float64 scalar), for tests and diagnostics; slices
    with w = ∞ leave the data term out (the caller checks A x = ŷ there)."""
    lab = volume_labels(labels, x.shape[0])
    c = pair_weights(lab.cpu()).to(x.device)
    wt = torch.as_tensor(w, dtype=torch.float64).reshape(-1).expand(x.shape[0]).to(x.device)
    res = (op.forward(x) - y).abs().double().flatten(1).pow(2).sum(1)
    finite = torch.isfinite(wt)
    data = 0.5 * torch.where(finite, wt, torch.zeros_like(wt)) * res
    prox = 0.5 * (x - x_hat).double().flatten(1).pow(2).sum(1)
    return data.sum() + prox.sum() + lam * dz(x.double(), c).abs().sum()
