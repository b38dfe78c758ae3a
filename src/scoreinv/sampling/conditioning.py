"""Conditioning a score-based prior on measurements y = A x (+ noise).

- `Projection`: the paper's Eq. 9 (docs/design.md §2.5). Draw ŷ_t = α(t) y + β(t) A z, then
      x' = T⁻¹[ λ Λ P⁻¹(Λ) ŷ_t + (1 − λ) Λ T x + (I − Λ) T x ]
  for operators with the A = P(Λ)T decomposition; otherwise
      x' = argmin ‖A x' − ŷ_t‖² + ((1 − λ)/λ) ‖A‖² ‖x' − x‖²  by conjugate gradient (DDS-style;
  the ‖A‖² factor makes λ mean the same for operators of any scale, as in the exact path).
  λ = 1 is a hard projection (A x' = ŷ_t). Measurement noise: λ < 1 blends the measurement
  with the current estimate, which is the noise-aware choice (tuned per noise level).
- `LikelihoodScore`: s(x, t) + Aᵀ(ŷ − A x) / ((r σ(t))² ‖A‖²): the Score SDE baseline (ŷ = ŷ_t) and
  annealed Langevin of Jalal et al. (ŷ = y). ‖A‖ = 1 for the paper's unitary T (MRI, Fourier-slice
  CT); dividing by ‖A‖² keeps r meaningful for operators of other scales (spatial Radon, MAR).
- `DPSScore`: diffusion posterior sampling (Chung et al. 2023): s(x, t) − (ζ/g²) ∇ₓ‖y − A D(x)‖
  = s − ζ/(2 g² ‖r‖) ∇ₓ‖r‖² with r = y − A D(x), i.e. the DPS step folded into the score of an
  ancestral predictor. Chung et al. write the step as ζ'/‖r‖ ∇‖r‖², so our ζ is 2ζ' (the tuned
  presets are in our ζ).
- `DDRMStep`, `DiffPIRStep`: the restoration steps on the Tweedie estimate of DDRM (Kawar et al.
  2022) and DiffPIR (Zhu et al. 2023), run by the loop's "x0" predictor (docs/design.md §2.11).

Inter-slice coupling (`coupling`, a `coupling.ZTVCoupling`; docs/design.md §9.1): when given,
every data-consistency step above (the projections, their final hard projection, the DiffPIR
proximal step) solves its problem on the stacked volume with a z-TV term added, by ADMM; without
it (coupling none) the code paths are the uncoupled ones, unchanged.

Data consistency on operators with the decomposition uses `dc_data`: for real-image Cartesian
MRI the conjugate-symmetric completion of the mask and data (`CartesianMRI.completed`), exact
for real images; other operators their own mask and embed(y).
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError, check_range
from ..physics.norm import operator_norm
from .coupling import data_weight
from .steps import randn_like


def _b(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.real.dtype if x.is_complex() else x.dtype)


def _yb(v, y):
    return v.reshape(-1, *([1] * (y.ndim - 1))).to(y.real.dtype if y.is_complex() else y.dtype)


def noisy_measurement(op, y, sde, x, t, generator=None, noisy: bool = True):
    """ŷ_t = α(t) y + β(t) A z, z ~ N(0, I) image-shaped and fresh per call (Eq. 9); α(t) y if not noisy."""
    a, b = sde.marginal_coeffs(t)
    y_t = _yb(a, y) * y
    if noisy:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y_t = y_t + _yb(b, y) * op.forward(z)
    return y_t


def norm2(op, x) -> float:
    """‖A‖² by power iteration, cached per operator (estimated on x's device, dtype and batch)."""
    return operator_norm(op, x.device, x.dtype, batch=x.shape[0]) ** 2


def dc_data(op, y):
    """(mask, z_y): the T-domain mask (bool, broadcastable to T x) and data (zero off the mask) that
    data consistency enforces; the conjugate-symmetric completion where the operator has one
    (module docstring)."""
    if hasattr(op, "completed"):
        return op.completed(y)
    return op.mask.to(y.device), op.embed(y)


class Projection:
    """Hook x -> x' (B, 1, H, W): projection onto {A x = ŷ_t} blended by λ."""

    def __init__(self, op, y, sde, lam: float = 1.0, generator=None, noisy: bool = True, cg_iters: int = 10,
                 coupling=None):
        self.op, self.y, self.sde, self.generator, self.noisy, self.cg_iters = op, y, sde, generator, noisy, cg_iters
        self.lam = check_range("lambda", lam, 0.0, 1.0)
        self.coupling = coupling

    def project(self, x, y_t, lam=None):
        lam = self.lam if lam is None else lam
        if self.coupling is not None:
            return self.coupled(x, y_t, lam)
        if lam == 0.0:
            return x
        op = self.op
        if op.has_decomposition:
            z = op.T(x)
            m, zy = dc_data(op, y_t)
            z = torch.where(m, z + lam * (zy - z), z)
            return op.T_inv(z)
        reg = (1 - lam) / lam * norm2(op, x) if lam < 1.0 else 0.0
        return op.lstsq(y_t, x, reg=reg, iters=self.cg_iters)

    def coupled(self, x, y_t, lam):
        """(D10)/(D11) with the z-TV term across slices (docs/design.md §9.1): data weight
        w = λ / ((1 − λ) ‖A‖²), ‖A‖ = 1 on the decomposition (exact there, CG otherwise)."""
        op = self.op
        if op.has_decomposition:
            return self.coupling(op, x, y_t, data_weight(lam), dc_data(op, y_t))
        return self.coupling(op, x, y_t, data_weight(lam, norm2(op, x) if 0.0 < lam < 1.0 else 1.0))

    def __call__(self, x, t):
        return self.project(x, noisy_measurement(self.op, self.y, self.sde, x, t, self.generator, self.noisy))

    def hard(self, x, t=None):
        """Final λ = 1 projection with the noise-free y."""
        return self.project(x, self.y, lam=1.0)


class LikelihoodScore:
    """score(x, t) + Aᵀ(ŷ − A x)/(r² σ(t)² ‖A‖²); ŷ = ŷ_t (noisy_y=True, Score SDE) or y (ALD)."""

    def __init__(self, score_fn, op, y, sde, r: float, generator=None, noisy_y: bool = True):
        self.score_fn, self.op, self.y, self.sde, self.generator, self.noisy_y = score_fn, op, y, sde, generator, noisy_y
        self.r = check_range("r (projection_sigma_rate)", r, 1e-6)

    def __call__(self, x, t):
        y = noisy_measurement(self.op, self.y, self.sde, x, t, self.generator, self.noisy_y)
        _, b = self.sde.marginal_coeffs(t)
        grad = self.op.adjoint(y - self.op.forward(x)) / _b((self.r * b) ** 2 * norm2(self.op, x), x)
        return self.score_fn(x, t) + grad


class DPSScore:
    """DPS folded into the score for an ancestral VE predictor from t to the next level."""

    def __init__(self, model, op, y, times: torch.Tensor, zeta: float = 1.0):
        self.model, self.op, self.y, self.times = model, op, y, times
        self.zeta = check_range("zeta", zeta, 0.0)

    def _g2(self, t):
        """σ_t² − σ_next² of the ancestral VE step that follows (the DPS step is −ζ∇, so the score gets −ζ∇/g²)."""
        i = int(torch.argmin((self.times - t[0].to(self.times)).abs()))
        t_next = self.times[i + 1] if i + 1 < len(self.times) else torch.zeros_like(self.times[i])
        sig = self.model.sde.sigma
        return float(sig(self.times[i]) ** 2 - (sig(t_next) ** 2 if i + 1 < len(self.times) else 0.0))

    def __call__(self, x, t):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.model.score(xg, t)
            a, b = self.model.sde.marginal_coeffs(t)
            x0 = (xg + _b(b ** 2, xg) * s) / _b(a, xg)
            res = (self.y - self.op.forward(x0))
            norm = res.abs().flatten(1).pow(2).sum(1).sqrt()
            (grad,) = torch.autograd.grad(norm.sum(), xg)
        return s.detach() - self.zeta * grad / self._g2(t)


def _per_sample(v, like: torch.Tensor, batch: int) -> torch.Tensor:
    """A float or (B,) tensor as (B, 1, ...) broadcastable to `like` (real dtype)."""
    dt = like.real.dtype if like.is_complex() else like.dtype
    t = torch.as_tensor(v, dtype=torch.float64, device=like.device).reshape(-1)
    t = t.expand(batch) if t.numel() == 1 else t
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(dt)


def require_decomposition(solver: str, op) -> None:
    """Refuse an operator without the A = P(Λ)T decomposition for a solver that needs it (ddrm)."""
    if not getattr(op, "has_decomposition", False):
        raise ScoreinvError(
            f"solver {solver} needs an operator with the A = P(Λ)T decomposition (single-coil Cartesian MRI, "
            f"Fourier-slice CT); {op.name} has none. Use diffpir (its data step runs by conjugate gradient) or "
            "dds, or for CT sinograms --ct-operator fourier")


class DDRMStep:
    """DDRM (Kawar et al. 2022, Eq. 7-8, with V = T and singular values 1 on the mask, 0 off it):
    the step from u (= x/α, noise σ) with Tweedie estimate x̂0 to noise σ' < σ, in the T domain
    (z = T·, measured data z_y of per-coefficient noise σ_y; ε = T w, w white real noise):

        unmeasured:          z' = ẑ0 + √(1−η²) σ' (z_u − ẑ0)/σ + η σ' ε
        measured, σ' < σ_y:  z' = ẑ0 + √(1−η²) σ' (z_y − ẑ0)/σ_y + η σ' ε
        measured, σ' ≥ σ_y:  z' = (1−η_b) ẑ0 + η_b z_y + √(σ'² − η_b² σ_y²) ε

    so for noise-free data (σ_y = 0) the measured coefficients become z_y + σ' ε, and at σ' = 0
    (`final`) exactly (1 − η_b) ẑ0 + η_b z_y. `noise_scale` multiplies every noise term of the
    step (ε and the DDIM direction) while the network is told σ': 1 is the paper; < 1 leaves
    less noise than the next denoising assumes, which smooths like a partial posterior mean
    (docs/design.md §2.11). σ_y: (B,) or a float, in the units of y (unitary T: image units).
    """

    def __init__(self, op, y, sigma_y=0.0, eta: float = 0.85, eta_b: float = 1.0, generator=None,
                 noise_scale: float = 1.0):
        require_decomposition("ddrm", op)
        self.op, self.generator = op, generator
        self.eta = check_range("eta", eta, 0.0, 1.0)
        self.eta_b = check_range("eta_b", eta_b, 0.0, 1.0)
        self.noise_scale = check_range("noise_scale", noise_scale, 0.0, 1.0)
        self.mask, self.zy = dc_data(op, y)
        self.sy = _per_sample(sigma_y, self.zy, y.shape[0])
        if bool((self.sy < 0).any()) or not bool(torch.isfinite(self.sy).all()):
            raise ScoreinvError(f"ddrm: measurement noise level {sigma_y!r}; expected finite values >= 0")

    def __call__(self, u, x0, sig, sig2):
        op, k = self.op, self.noise_scale
        zu, z0 = op.T(u), op.T(x0)
        s, s2 = _per_sample(sig.flatten(), z0, z0.shape[0]), _per_sample(sig2.flatten(), z0, z0.shape[0])
        eps = op.T(randn_like(u, self.generator))
        c = (1 - self.eta ** 2) ** 0.5
        sy = self.sy
        unmeasured = z0 + k * (c * s2 * (zu - z0) / s + self.eta * s2 * eps)
        low = z0 + k * (c * s2 * (self.zy - z0) / sy.clamp_min(1e-30) + self.eta * s2 * eps)
        high = (1 - self.eta_b) * z0 + self.eta_b * self.zy \
            + k * torch.sqrt((s2 ** 2 - (self.eta_b * sy) ** 2).clamp_min(0)) * eps
        measured = torch.where(s2 < sy, low, high)
        return op.T_inv(torch.where(self.mask, measured, unmeasured))

    def final(self, x0, t=None):
        """The step to σ' = 0: measured coefficients (1 − η_b) ẑ0 + η_b z_y where σ_y = 0, ẑ0 elsewhere."""
        z0 = self.op.T(x0)
        exact = (self.sy <= 0) & self.mask
        return self.op.T_inv(torch.where(exact, (1 - self.eta_b) * z0 + self.eta_b * self.zy, z0))


class DiffPIRStep:
    """DiffPIR (Zhu et al. 2023, Alg. 1; half-quadratic splitting) in VE form: from u (noise σ) with
    Tweedie estimate x̂0,

        x̂0' = argmin_x ½‖A x − y‖² + (ρ/2)‖x − x̂0‖²,   ρ = λ σ_n² / σ²,   σ_n = max(σ_y, floor · ‖A‖)
        ε̂ = (u − x̂0')/σ,   u' = x̂0' + σ' (√(1−ζ) ε̂ + √ζ ε)

    The proximal step is exact in the T domain where the operator decomposes (measured
    coefficients (z_y + ρ ẑ0)/(1 + ρ), unmeasured ẑ0; completed mask for real-image MRI) and by
    conjugate gradient (`lstsq`, `cg_iters`) otherwise. `final` is the proximal step at the last
    level: DiffPIR returns that denoised estimate, not a noisy iterate. The floor (relative to
    ‖A‖, so it means the same for operators of any scale) keeps ρ > 0 for noise-free data; a floor
    of 0 there makes the step a hard projection. `noise_scale` as in DDRMStep.
    """

    def __init__(self, op, y, sde, sigma_y=0.0, lam: float = 7.0, zeta: float = 0.3, floor: float = 1e-3,
                 generator=None, cg_iters: int = 10, noise_scale: float = 1.0, coupling=None):
        self.op, self.y, self.sde, self.generator, self.cg_iters = op, y, sde, generator, cg_iters
        self.coupling = coupling
        self.lam = check_range("hqs_lambda", lam, 0.0)
        self.zeta = check_range("hqs_zeta", zeta, 0.0, 1.0)
        floor = check_range("sigma_floor", floor, 0.0)
        self.noise_scale = check_range("noise_scale", noise_scale, 0.0, 1.0)
        sy = torch.as_tensor(sigma_y, dtype=torch.float64).reshape(-1)
        if bool((sy < 0).any()) or not bool(torch.isfinite(sy).all()):
            raise ScoreinvError(f"diffpir: measurement noise level {sigma_y!r}; expected finite values >= 0")
        scale = 1.0 if op.has_decomposition else norm2(op, torch.zeros(y.shape[0], 1, *op.image_shape,
                                                                        device=y.device)) ** 0.5
        self.sn2 = sy.clamp_min(floor * scale).expand(y.shape[0]).to(y.device) ** 2      # (B,)
        if op.has_decomposition:
            self.mask, self.zy = dc_data(op, y)

    def rho(self, sig) -> torch.Tensor:
        """ρ = λ σ_n² / σ² per sample (B,)."""
        return self.lam * self.sn2 / sig.flatten().to(self.sn2) ** 2

    def prox(self, x0, sig):
        rho = self.rho(sig)
        op = self.op
        if self.coupling is not None:     # (D22) with the z-TV term, data weight w = 1/ρ (docs/design.md §9.1)
            w = torch.where(rho > 0, 1.0 / rho.clamp_min(1e-300), torch.full_like(rho, float("inf")))
            return self.coupling(op, x0, self.y, w, (self.mask, self.zy) if op.has_decomposition else None)
        if op.has_decomposition:
            z0 = op.T(x0)
            r = _per_sample(rho, z0, z0.shape[0])
            return op.T_inv(torch.where(self.mask, (self.zy + r * z0) / (1 + r), z0))
        return op.lstsq(self.y, x0, reg=rho.to(x0.dtype), iters=self.cg_iters)

    def __call__(self, u, x0, sig, sig2):
        x0p = self.prox(x0, sig)
        eps_hat = (u - x0p) / sig
        k = self.noise_scale
        return x0p + k * sig2 * ((1 - self.zeta) ** 0.5 * eps_hat + self.zeta ** 0.5 * randn_like(u, self.generator))

    def final(self, x0, t):
        """The proximal step at the last level t (B,): the denoised estimate DiffPIR returns."""
        return self.prox(x0, self.sde.sigma_eff(t))
