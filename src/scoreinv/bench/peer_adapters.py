"""The adapters that let a peer library run on OUR prior, operators and measurements (deepinv 0.5,
`scoreinv bench peers`, whose driver is `bench.peers`): deepinv is imported only here, and only
when the benchmark runs (`import_deepinv`).

What the peer sees:
- the operator: our forward and adjoint wrapped as a deepinv `LinearPhysics`; single-coil
  CartesianMRI (A = P(Λ) T) as a `DecomposablePhysics` with its SVD on real images (`real_svd`:
  V^T = T, V = Re T^{-1}, singular values 1 or 1/√2 from the mask and its mirror, U completing the
  conjugate pairs; the plain s = Λ, U = I is not an SVD for real images when the mask is not
  mirror-symmetric, and deepinv's DiffPIR diverged with it). DDRM needs an SVD; the CT operator of
  eval (ParallelBeamCT) has none, so DDRM (theirs and ours) runs on MRI only. DiffPIR's data step
  is deepinv's own: closed form for the decomposable physics, conjugate gradient (deepinv's
  defaults, 50 iterations, tol 1e-4) for CT;
- the prior: `PriorDenoiser`, a deepinv `Denoiser` whose forward(x, σ) is our Tweedie estimate
  ScoreModel.denoise at the time t with σ(t) = σ (sampling.solvers.time_of_sigma; x is scaled by
  α(t) for a VP model, so D(x, σ) estimates x_0 from x = x_0 + σ z). σ is clamped to the model's
  range [σ(eps), σ(1)] (0.01-30 for the shipped VE models): deepinv's VP schedules start near
  σ = 78 (DiffPIR, DPS) and DDRM ends at σ = 0, where the estimate at σ(eps) (nearly the identity)
  is returned. Every call runs the network once and is counted: the printed NFE is that count;
- the range: our images are in [0, 1], which is deepinv's Denoiser convention; deepinv's DiffPIR
  and DPS carry their state in [-1, 1] and call the denoiser on (x + 1) / 2 with σ / 2 (DiffPIR
  itself, DPS through MinusOneOneDenoiserWrapper), DDRM runs in the measurement's own range. So
  the wrapper maps nothing, and PSNR/SSIM are measured on [0, 1] images with our metrics
  (scoreinv.metrics, images clipped to [0, 1], data range 1; `scoreinv eval`'s main columns);
- the data: the same y tensors our solvers get (complex y as its real view, the same memory), each
  call's y hashed (sha256) on both sides; the benchmark stops if a hash differs (which caught
  deepinv's DDRM rescaling U^T y in place while U^T was the identity), and prints the joint hash,
  the largest difference between deepinv's A / A^T and ours on the test batches (0 for the
  LinearPhysics, float rounding of the √2 factors for the SVD) and max |y - physics(x)| (MRI:
  rounding; CT: the model mismatch of the finer-grid sinograms, the same for both sides);
- noise level: DDRM is told σ_y = 0 (GaussianNoise(0), the truth: its measured coefficients are
  then y itself at the last level); DiffPIR's ρ_t = λ σ_n² / σ_t² needs σ_n > 0, so it gets
  `sigma_n` as a hyperparameter (the DiffPIR code floors σ_n at 0.001); DPS's norm guidance has none.
"""
from __future__ import annotations

import hashlib
import math

import torch

from ..errors import ScoreinvError

MISSING = ("bench peers: the peer library deepinv is not installed in this environment; run `make bench-peers` "
           "(it creates .venv-peers with deepinv 0.5 and a matching torch/torchvision, and runs this benchmark)")
DEEPINV_VERSION = "0.5"


def y_hash(y: torch.Tensor) -> str:
    """sha256 (hex) of a measurement tensor's bytes, dtype and shape, complex tensors as their real
    view (..., 2): a complex y and the real view deepinv is given hash alike."""
    t = y.detach().cpu()
    t = (torch.view_as_real(t) if t.is_complex() else t).contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


# --- the prior as a denoiser ------------------------------------------------------------------------
class PriorDenoiser:
    """D(x, σ): the Tweedie estimate E[x_0 | x_0 + σ z] of a ScoreModel (module docstring).

    σ: a number or a tensor of 1 or B values (noise std in image units, [0, 1] images); clamped to
    the model's range [sigma_lo, sigma_hi]. `calls` counts network evaluations; `last` holds the
    last output (detached)."""

    def __init__(self, model):
        from ..sampling.solvers import sigma_of
        self.model = model
        self.sde = model.sde
        self.sigma_lo = sigma_of(self.sde, self.sde.eps)
        self.sigma_hi = sigma_of(self.sde, 1.0)
        self.calls = 0
        self.last: torch.Tensor | None = None

    def times(self, sigma, batch: int) -> torch.Tensor:
        """(batch,) float64 times t with σ(t) = clamp(σ) (sampling.solvers.time_of_sigma)."""
        from ..sampling.solvers import time_of_sigma
        s = torch.as_tensor(sigma.detach() if torch.is_tensor(sigma) else sigma, dtype=torch.float64).cpu().flatten()
        if s.numel() == 1:
            s = s.expand(batch)
        elif s.numel() != batch:
            raise ScoreinvError(f"denoiser: {s.numel()} noise levels for a batch of {batch}; expected 1 or {batch}")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ScoreinvError(f"denoiser: noise levels must be finite and >= 0, got {s.tolist()}")
        s = s.clamp(self.sigma_lo, self.sigma_hi)
        cache: dict[float, float] = {}
        return torch.tensor([cache.setdefault(v, time_of_sigma(self.sde, v)) for v in s.tolist()],
                            dtype=torch.float64)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        t = self.times(sigma, x.shape[0]).to(x.device)
        alpha, _ = self.sde.marginal_coeffs(t)
        out = self.model.denoise(x.float() * alpha.float().reshape(-1, 1, 1, 1), t)
        self.calls += 1
        self.last = out.detach()
        return out


# --- deepinv ----------------------------------------------------------------------------------------
def import_deepinv():
    """deepinv, or ScoreinvError(MISSING) where it is not installed (checked version DEEPINV_VERSION)."""
    try:
        import deepinv
    except ImportError:
        raise ScoreinvError(MISSING) from None
    return deepinv


def peer_denoiser(dinv, core: PriorDenoiser):
    """`core` as a deepinv.models.Denoiser (forward(x, sigma) -> core(x, sigma))."""

    class ScoreinvPrior(dinv.models.Denoiser):
        def __init__(self):
            super().__init__()
            self.core = core

        def forward(self, x, sigma, *args, **kwargs):
            return self.core(x, sigma).to(x.dtype)

    return ScoreinvPrior()


def real_svd(op):
    """The SVD A = U diag(s) V^T of single-coil CartesianMRI on REAL images, V^T = T (the unitary
    FFT; real images have Hermitian spectra) -> (s (H, W) float32, U, U^T) on (B, H, W) complex.

    A real image's coefficients z_k and z_-k are conjugate, so a sampled k also measures -k. With
    Λ the mask and -Λ its mirror: s = 1 where both k and -k are sampled (or k = -k is), s = 1/√2 where
    exactly one of them is (the pair's energy |z_k|² + |z_-k|² is measured once: |z_k|² = half of it),
    0 elsewhere; U(w)_k = w_k on the first kind, (w_k + conj w_-k) / √2 at the sampled k of the second,
    0 off Λ; U^T y puts y_k / √2 at k and conj(y_k) / √2 at -k. Then U(s T x) = Λ T x for real x, and
    since s is symmetric, V diag(·) V^T maps real images to real images, so deepinv's closed-form
    prox and DDRM's coefficients are exact. The plain choice s = Λ, U = I is not an SVD here: with
    an asymmetric mask (random columns) its prox multiplies the unsampled mirror -k of a sampled k
    by 1/γ, and DiffPIR diverged with it (7 dB) on test batches whose mask is not symmetric."""
    from ..physics.mri import mirror
    m = op.mask
    mr = mirror(m)
    both = m & mr
    one = m & ~mr                       # sampled k whose mirror -k is not sampled
    r2 = math.sqrt(0.5)
    s = torch.where(both, 1.0, torch.where(one | (mr & ~m), r2, 0.0)).to(torch.float32)

    def U(w):
        return torch.where(both, w, torch.where(one, (w + mirror(w).conj()) * r2, torch.zeros_like(w)))

    def U_adjoint(y):
        return torch.where(both, y, torch.where(one, y * r2, torch.where(mr & ~m, mirror(y).conj() * r2,
                                                                           torch.zeros_like(y))))

    return s, U, U_adjoint


def peer_physics(dinv, op):
    """Our operator as deepinv physics: single-coil CartesianMRI on real images as a
    DecomposablePhysics with its real SVD (`real_svd`: V^T = T, V = Re T^{-1}); any other operator
    as a LinearPhysics with our forward and adjoint. deepinv's DDRM indexes real tensors, so the
    decomposable physics works on real views (B, H, W, 2) of its complex coefficients and of y
    (`peer_measurement`); U^T returns a new tensor (DDRM rescales U^T y in place)."""
    from ..physics.mri import CartesianMRI
    if isinstance(op, CartesianMRI) and not op.complex_image:
        s, U, U_adjoint = real_svd(op)
        s = s.reshape(1, *s.shape, 1).expand(1, *s.shape, 2).contiguous()
        real, cplx = torch.view_as_real, (lambda z: torch.view_as_complex(z.contiguous()))
        return dinv.physics.DecomposablePhysics(
            U=lambda w: real(U(cplx(w))).contiguous(), U_adjoint=lambda y: real(U_adjoint(cplx(y))).contiguous(),
            V_adjoint=lambda x: real(op.T(x)).contiguous(), V=lambda z: op.T_inv(cplx(z)), mask=s)
    return dinv.physics.LinearPhysics(A=lambda x, **kw: op.forward(x), A_adjoint=lambda y, **kw: op.adjoint(y),
                                      img_size=(1, *op.image_shape))


def peer_measurement(y: torch.Tensor) -> torch.Tensor:
    """y as deepinv is given it: the tensor itself, or for complex y its real view (B, ..., 2) (the
    same memory; see peer_physics)."""
    return torch.view_as_real(y) if y.is_complex() else y
