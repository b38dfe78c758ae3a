"""Solvers on a Gaussian prior with a closed-form score: samples against the analytic posterior.

Prior: x ~ N(μ, Σ) on 8x8 images with Σ = Fᴴ diag(d) F stationary (diagonal in the FFT basis,
d symmetric under k -> -k so images are real). Its VE-marginal score is exact:
s(x, t) = −Fᴴ (d + σ²)⁻¹ F (x − μ). For A = P(Λ) F (MRI-like Cartesian and CT-like
Fourier-slice masks) the measured and unmeasured coefficients are independent, so the
posterior is N(μ_post, Σ_post) in closed form, and every exact conditioning scheme must hit it.
"""
import math

import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import LinearOperator
from scoreinv.physics.fourier_slice import FourierSliceCT
from scoreinv.physics.mri import CartesianMRI, fft2c, ifft2c
from scoreinv.sampling.solvers import posterior, solve, solver_config
from scoreinv.sde import VESDE

N = 8


def spectrum():
    k = torch.fft.fftshift(torch.fft.fftfreq(N)) * N
    kr, kc = torch.meshgrid(k, k, indexing="ij")
    d = 0.02 + 0.3 * torch.exp(-(kr ** 2 + kc ** 2) / 6.0)  # symmetric under k -> -k
    return d.double()


class GaussianPrior(torch.nn.Module):
    def __init__(self, sde):
        super().__init__()
        self.sde, self.d = sde, spectrum()
        self.mu = 0.4

    def score(self, x, t):
        a, b = self.sde.marginal_coeffs(t)
        sig2 = (b ** 2).reshape(-1, 1, 1).double()
        k = fft2c((x.double() - self.mu)[:, 0])
        return -ifft2c(k / (self.d + sig2)).real.unsqueeze(1).to(x.dtype)

    def denoise(self, x, t):
        a, b = self.sde.marginal_coeffs(t)
        return x + (b ** 2).reshape(-1, 1, 1, 1).to(x.dtype) * self.score(x, t)

    def sample(self, n, g):
        z = torch.randn(n, N, N, generator=g, dtype=torch.float64)
        return (ifft2c(fft2c(z) * self.d.sqrt()).real + self.mu).unsqueeze(1)


def analytic_posterior(model, op, y):
    """Mean (N, N) and per-pixel variance (N, N) in closed form for A = Λ F, real images."""
    mask = op.restrict(torch.ones(1, N, N, dtype=torch.complex128)).abs()[0] > 0
    mu_k = fft2c(torch.full((1, N, N), model.mu, dtype=torch.float64))[0]
    post_k = torch.where(mask, y[0].to(torch.complex128), mu_k)
    mean = ifft2c(post_k).real
    # variance of pixel values = (1/N²) Σ_k d_k over unmeasured k (orthonormal FFT, stationary)
    var = (model.d * (~mask)).sum() / N ** 2
    return mean, var


def make_ops():
    m = torch.zeros(N, N, dtype=torch.bool)
    m[:, [3, 4, 5]] = True            # columns around DC (index 4), symmetric: 3 <-> 5
    mri = CartesianMRI(m)
    ct = FourierSliceCT(N, angles=torch.tensor([0.0, math.pi / 2]).numpy())
    return {"mri": mri, "ct": ct}


@pytest.mark.parametrize("opname", ["mri", "ct"])
@pytest.mark.parametrize("solver,kw", [
    ("projection", dict(steps=150, snr=0.16, lam=1.0)),
    ("langevin_projection", dict(steps=100, corrector_steps=5, snr=0.3, lam=1.0)),
    ("dds", dict(steps=30, eta=1.0, lam=1.0)),
    ("baseline", dict(steps=150, snr=0.16, r=0.5)),
    ("langevin", dict(steps=100, corrector_steps=5, snr=0.3, r=0.5)),
])
def test_solvers_match_the_gaussian_posterior(opname, solver, kw):
    torch.manual_seed(0)
    sde = VESDE(0.01, 5.0)
    model = GaussianPrior(sde)
    op = make_ops()[opname]
    g = torch.Generator().manual_seed(1)
    x_true = model.sample(1, g).float()
    y = op.forward(x_true)
    K = 1500
    cfg = solver_config(solver, **kw)
    out = posterior(model, op, y, cfg, samples=K, generator=torch.Generator().manual_seed(2))
    xs = out["samples"][:, 0, 0].double()  # (K, N, N)
    mean, var = analytic_posterior(model, op, y)
    emp_mean, emp_var = xs.mean(0), xs.var(0)
    # tolerances from the sample count: se(mean) = sqrt(var/K), se(var) ≈ var sqrt(2/K)
    se_mean = math.sqrt(var / K)
    assert (emp_mean - mean).abs().max() < 5 * se_mean + 0.01, f"mean off by {(emp_mean - mean).abs().max():.4f}"
    assert emp_var.mean().item() == pytest.approx(var.item(), rel=5 * math.sqrt(2 / K) + 0.1)
    # data consistency after the final hard projection
    assert torch.allclose(op.forward(out["samples"][:, 0]), y.expand(K, *y.shape[1:]), atol=1e-4)


class DenseOperator(LinearOperator):
    """A random Gaussian matrix: no decomposition, so the projection uses conjugate gradient."""

    def __init__(self, m, g):
        self.A = torch.randn(m, N * N, generator=g) / N
        self.image_shape, self.meas_shape = (N, N), (m,)

    def forward(self, x):
        return x.flatten(1) @ self.A.T

    def adjoint(self, y):
        return (y @ self.A).reshape(-1, 1, N, N)


def test_cg_projection_is_exact_for_an_isotropic_prior():
    """Isotropic prior N(μ, s² I): the Euclidean projection is the exact conditioning."""
    sde = VESDE(0.01, 5.0)
    s2, mu = 0.09, 0.4

    class Iso(torch.nn.Module):
        def score(self, x, t):
            _, b = sde.marginal_coeffs(t)
            return -(x - mu) / (s2 + b.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)

        def denoise(self, x, t):
            _, b = sde.marginal_coeffs(t)
            return x + b.reshape(-1, 1, 1, 1).to(x.dtype) ** 2 * self.score(x, t)

    model = Iso()
    model.sde = sde
    g = torch.Generator().manual_seed(0)
    op = DenseOperator(20, g)
    x_true = mu + math.sqrt(s2) * torch.randn(1, 1, N, N, generator=g)
    y = op.forward(x_true)
    K = 1500
    cfg = solver_config("projection", steps=150, snr=0.16, lam=1.0, cg_iters=60)
    xs = posterior(model, op, y, cfg, samples=K, generator=torch.Generator().manual_seed(3))["samples"][:, 0].double()
    A = op.A.double()
    P = A.T @ torch.linalg.solve(A @ A.T, A)                  # projector onto the row space
    mean = mu + A.T @ torch.linalg.solve(A @ A.T, y[0].double() - A @ torch.full((N * N,), mu, dtype=torch.float64))
    cov = s2 * (torch.eye(N * N, dtype=torch.float64) - P)
    flat = xs.flatten(1)
    assert (flat.mean(0) - mean).abs().max() < 5 * math.sqrt(s2 / K) + 0.01
    emp_cov = torch.cov(flat.T)
    assert torch.diagonal(emp_cov).mean().item() == pytest.approx(torch.diagonal(cov).mean().item(), rel=0.15)
    assert torch.allclose(op.forward(xs.flatten(1).reshape(K, 1, N, N).float()), y.expand(K, -1), atol=1e-3)


def test_lambda_one_final_reconstruction_matches_measurements():
    sde = VESDE(0.01, 5.0)
    model = GaussianPrior(sde)
    op = make_ops()["mri"]
    y = op.forward(model.sample(2, torch.Generator().manual_seed(0)).float())
    x, nfe = solve(model, op, y, solver_config("projection", steps=20, lam=1.0))
    assert torch.allclose(op.forward(x), y, atol=1e-5)
    assert nfe == 2 * 20


def test_bad_solver_parameters_are_refused():
    with pytest.raises(ScoreinvError, match="unknown solver"):
        solver_config("magic")
    with pytest.raises(ScoreinvError, match="outside its valid range"):
        solver_config("projection", lam=1.5)
    with pytest.raises(ScoreinvError, match="snr"):
        solver_config("projection", snr=-0.1)
    with pytest.raises(ScoreinvError, match="unknown solver parameter"):
        solver_config("projection", colour=1)


def test_dps_moves_samples_to_the_posterior():
    """DPS is approximate by design (Chung et al.): check it lands far closer to the posterior
    mean than the prior mean is, on the measured and unmeasured pixels alike."""
    sde = VESDE(0.01, 5.0)
    model = GaussianPrior(sde)
    op = make_ops()["mri"]
    y = op.forward(model.sample(1, torch.Generator().manual_seed(1)).float())
    cfg = solver_config("dps", steps=100, zeta=0.5, final_projection=False)
    out = posterior(model, op, y, cfg, samples=300, generator=torch.Generator().manual_seed(2))
    mean, _ = analytic_posterior(model, op, y)
    err_dps = (out["mean"][0, 0].double() - mean).norm()
    err_prior = (torch.full_like(mean, model.mu) - mean).norm()
    assert err_dps < 0.3 * err_prior


def test_non_integer_step_counts_are_refused():
    with pytest.raises(ScoreinvError, match=r"solver.steps = 10.5: expected a positive integer"):
        solver_config("projection", steps=10.5)


def test_a_chain_that_blows_up_stops_with_diverged_naming_the_level():
    from scoreinv.errors import Diverged
    sde = VESDE(0.01, 5.0)
    model = GaussianPrior(sde)
    calls = {"n": 0}
    good = model.score

    def bad_score(x, t):      # finite for 7 evaluations, then the network "overflows"
        calls["n"] += 1
        s = good(x, t)
        return s * float("inf") if calls["n"] > 7 else s

    model.score = bad_score
    op = make_ops()["mri"]
    y = op.forward(GaussianPrior(sde).sample(2, torch.Generator().manual_seed(0)).float())
    with pytest.raises(Diverged, match="NaN/Inf at noise level 4 of 10"):
        solve(model, op, y, solver_config("projection", steps=10, lam=1.0))
    calls["n"] = 0
    with pytest.raises(Diverged, match="noise level 4 of 10"):      # corrector only: 2 evaluations per level
        solve(model, op, y, solver_config("langevin", steps=10, corrector_steps=2, r=0.5))


def test_device_generator_is_seeded_from_the_cpu_generator():
    """The step noise of a GPU run comes from a device generator seeded from the run's CPU
    generator, so it repeats with the seed (checked here on the CPU device)."""
    from scoreinv.sampling.solvers import device_generator
    a = device_generator(torch.Generator().manual_seed(5), "cpu")
    b = device_generator(torch.Generator().manual_seed(5), "cpu")
    c = device_generator(torch.Generator().manual_seed(6), "cpu")
    assert torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    assert not torch.equal(torch.randn(8, generator=b), torch.randn(8, generator=c))
    assert device_generator(None, "cpu") is None
