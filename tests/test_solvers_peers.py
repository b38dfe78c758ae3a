"""DDRM, DiffPIR, the warm start, σ_end and the conjugate-symmetric completion (docs/design.md §2.11).

The closed-form Gaussian prior of test_solvers (stationary, diagonal in the FFT basis) makes every
step of DDRM and DiffPIR an affine map of each Fourier coefficient plus independent noise, for
A = P(Λ) F: so the mean and variance of their output are known exactly by a recursion over the
noise levels, written here from the papers' update rules (Kawar et al. 2022 Eq. 7-8; Zhu et al.
2023 Alg. 1). The samples must match it; a wrong data-consistency step (the wrong coefficients,
weights or noise) moves the mean or the variance well outside the tolerance.
"""
import math
from dataclasses import replace

import pytest
import torch
from test_solvers import N, DenseOperator, GaussianPrior, analytic_posterior, make_ops

from scoreinv.errors import ScoreinvError
from scoreinv.physics.mri import CartesianMRI, fft2c, ifft2c, mirror
from scoreinv.sampling.conditioning import DiffPIRStep, Projection, dc_data
from scoreinv.baselines import get_baseline
from scoreinv.sampling.inputs import classical, measurement_sigma, warm_image
from scoreinv.sampling.settings import Resolved, estimate_name
from scoreinv.sampling.solvers import edm_times, posterior, schedule, solve, solver_config
from scoreinv.sde import VESDE

SDE = VESDE(0.01, 5.0)


def asymmetric_mri():
    """Columns 4 (DC) and 5 sampled, 3 (the mirror of 5) not: completion adds column 3."""
    m = torch.zeros(N, N, dtype=torch.bool)
    m[:, [4, 5]] = True
    return CartesianMRI(m)


def ops():
    return {**make_ops(), "mri_asym": asymmetric_mri()}


def predicted(model, op, y, cfg, sigma_y=0.0):
    """Mean image (N, N) and mean pixel variance of the output of ddrm / diffpir (noise-free or
    noisy with one σ_y), by the per-coefficient affine recursion."""
    mask, zy = dc_data(op, y)
    mask, zy = mask.expand(N, N), zy[0].to(torch.complex128)
    d = model.d
    mu = fft2c(torch.full((1, N, N), model.mu, dtype=torch.float64))[0]
    sig = SDE.sigma(edm_times(SDE, cfg.steps, cfg.rho)).double()
    m = torch.zeros(N, N, dtype=torch.complex128)           # the prior draw σ_max w: mean 0, E|.|² = σ_max²
    v = torch.full((N, N), float(sig[0]) ** 2, dtype=torch.float64)

    def denoise(m, v, s):
        g = d / (d + s ** 2)
        return mu + g * (m - mu), g                         # mean of x̂0, its coefficient on z

    for i in range(cfg.steps - 1):
        s, s2 = float(sig[i]), float(sig[i + 1])
        r = s2 / s
        m0, g = denoise(m, v, s)
        if cfg.name == "ddrm":
            c, eta = math.sqrt(1 - cfg.eta ** 2), cfg.eta
            mu_un, k_un, n_un = m0 + c * r * (m - m0), g + c * r * (1 - g), eta * s2
            if s2 < sigma_y:      # measured, σ' < σ_y
                mu_me = m0 + c * s2 * (zy - m0) / sigma_y
                k_me, n_me = g * (1 - c * s2 / sigma_y), eta * s2
            else:                 # measured, σ' >= σ_y
                mu_me = (1 - cfg.eta_b) * m0 + cfg.eta_b * zy
                k_me, n_me = (1 - cfg.eta_b) * g, math.sqrt(max(s2 ** 2 - (cfg.eta_b * sigma_y) ** 2, 0))
            m_new = torch.where(mask, mu_me, mu_un)
            k = torch.where(mask, torch.as_tensor(k_me, dtype=torch.float64).expand(N, N), k_un)
            nz = torch.where(mask, torch.tensor(n_me, dtype=torch.float64), torch.tensor(n_un, dtype=torch.float64))
        else:
            rho = cfg.hqs_lambda * max(sigma_y, cfg.sigma_floor) ** 2 / s ** 2
            mp = torch.where(mask, (zy + rho * m0) / (1 + rho), m0)     # the proximal step
            kp = torch.where(mask, rho * g / (1 + rho), g)
            a = math.sqrt(1 - cfg.hqs_zeta)
            m_new, k = (1 - a * r) * mp + a * r * m, (1 - a * r) * kp + a * r
            nz = torch.full((N, N), math.sqrt(cfg.hqs_zeta) * s2, dtype=torch.float64)
        m, v = m_new, k ** 2 * v + nz ** 2
    s = float(sig[-1])
    m0, g = denoise(m, v, s)
    m, v = m0, g ** 2 * v
    if cfg.name == "ddrm" and sigma_y == 0:
        m = torch.where(mask, (1 - cfg.eta_b) * m + cfg.eta_b * zy, m)
        v = torch.where(mask, (1 - cfg.eta_b) ** 2 * v, v)
    if cfg.name == "diffpir":
        rho = cfg.hqs_lambda * max(sigma_y, cfg.sigma_floor) ** 2 / s ** 2
        m = torch.where(mask, (zy + rho * m) / (1 + rho), m)
        v = torch.where(mask, (rho / (1 + rho)) ** 2 * v, v)
    if cfg.final_projection:
        m, v = torch.where(mask, zy, m), torch.where(mask, torch.zeros_like(v), v)
    return ifft2c(m).real, float(v.sum()) / N ** 2


def run(opname, solver, K=2000, sigma_y=0.0, noisy_y=None, **kw):
    model = GaussianPrior(SDE)
    op = ops()[opname]
    x_true = model.sample(1, torch.Generator().manual_seed(1)).float()
    y = op.forward(x_true) if noisy_y is None else noisy_y(op, x_true)
    cfg = solver_config(solver, **kw)
    out = posterior(model, op, y, cfg, samples=K, generator=torch.Generator().manual_seed(2), sigma_y=sigma_y)
    return model, op, y, cfg, out


@pytest.mark.parametrize("opname", ["mri", "ct", "mri_asym"])
@pytest.mark.parametrize("solver,kw", [
    ("ddrm", dict(steps=15, eta=0.85, eta_b=1.0)),
    ("ddrm", dict(steps=15, eta=0.5, eta_b=0.7, final_projection=False)),
    ("diffpir", dict(steps=15, hqs_lambda=7.0, hqs_zeta=0.3, sigma_floor=0.05, final_projection=False)),
    ("diffpir", dict(steps=15, hqs_lambda=2.0, hqs_zeta=0.8)),
])
def test_ddrm_and_diffpir_match_their_closed_form_output_distribution(opname, solver, kw):
    K = 2000
    model, op, y, cfg, out = run(opname, solver, K, **kw)
    xs = out["samples"][:, 0, 0].double()
    mean, var = predicted(model, op, y, cfg)
    se = math.sqrt(var / K)
    assert (xs.mean(0) - mean).abs().max() < 5 * se + 2e-3, f"mean off by {(xs.mean(0) - mean).abs().max():.4f}"
    assert xs.var(0).mean().item() == pytest.approx(var, rel=0.035)      # observed within 1.3 %
    assert out["nfe"] == K * cfg.steps
    if cfg.final_projection or (solver == "ddrm" and cfg.eta_b == 1.0):
        mask, zy = dc_data(op, y)
        # noise-free data: the measured (completed) coefficients are exactly y's
        assert torch.allclose(op.T(out["samples"][:, 0]) * mask, zy.expand(K, N, N), atol=1e-4)
        assert torch.allclose(op.forward(out["samples"][:, 0]), y.expand(K, N, N), atol=1e-4)


def test_noise_free_ddrm_and_diffpir_hit_the_posterior_mean_and_ddrm_keeps_y_without_the_final_projection():
    """For noise-free y the closed-form posterior mean is reached; DDRM with η_b = 1 needs no final
    projection to satisfy A x = y on the (completed) measured coefficients."""
    for solver in ("ddrm", "diffpir"):
        model, op, y, cfg, out = run("mri_asym", solver, K=1000, steps=20, final_projection=(solver == "diffpir"))
        mask, zy = dc_data(op, y)
        mu_k = fft2c(torch.full((1, N, N), model.mu, dtype=torch.float64))[0]
        post_mean = ifft2c(torch.where(mask, zy[0].to(torch.complex128), mu_k)).real
        var = (model.d * (~mask)).sum() / N ** 2
        emp = out["samples"][:, 0, 0].double().mean(0)
        assert (emp - post_mean).abs().max() < 5 * math.sqrt(var / 1000) + 0.01
        k = op.T(out["samples"][:, 0])
        assert torch.allclose(k * mask, zy.expand_as(k), atol=1e-4)
        # the coefficients of the unmeasured column 3 are the conjugates of the mirrored column 5 data
        assert torch.allclose(k[:, :, 3], mirror(y).conj()[:, :, 3].expand(1000, N), atol=1e-4)


def test_noisy_ddrm_follows_its_noise_aware_rule():
    """Measurement noise σ_y = 0.3 (between the noise levels of the schedule): measured coefficients
    switch from η_b-blending to the DDIM-like rule below σ_y, as in the recursion."""
    sy = 0.3

    def noisy(op, x):
        g = torch.Generator().manual_seed(5)
        y = op.forward(x)
        n = torch.complex(torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)) * (sy / math.sqrt(2))
        return (y + n) * op.mask
    model, op, y, cfg, out = run("mri", "ddrm", K=2000, sigma_y=sy, noisy_y=noisy, steps=20, eta=0.85, eta_b=0.9,
                                 final_projection=False)
    mean, var = predicted(model, op, y, cfg, sigma_y=sy)
    xs = out["samples"][:, 0, 0].double()
    assert (xs.mean(0) - mean).abs().max() < 5 * math.sqrt(var / 2000) + 2e-3
    assert xs.var(0).mean().item() == pytest.approx(var, rel=0.035)
    # ignoring the noise (σ_y = 0) gives another distribution: the level matters
    _, _, _, _, out0 = run("mri", "ddrm", K=500, sigma_y=0.0, noisy_y=noisy, steps=20, eta=0.85, eta_b=0.9,
                           final_projection=False)
    assert abs(out0["samples"][:, 0, 0].double().var(0).mean().item() - var) > 0.1 * var


def test_completed_projection_is_exact_for_real_images():
    """Hard projection with the completed mask: A x = y, and the mirrored coefficients (column 3,
    unmeasured) equal the conjugates of the measured ones (column 5)."""
    op = asymmetric_mri()
    g = torch.Generator().manual_seed(0)
    x_true = torch.rand(2, 1, N, N, generator=g)
    y = op.forward(x_true)
    x = Projection(op, y, SDE).hard(torch.rand(2, 1, N, N, generator=g))
    k = op.T(x)
    assert torch.allclose(op.forward(x), y, atol=1e-5)
    assert torch.allclose(k, mirror(k).conj(), atol=1e-5)               # a real image
    assert torch.allclose(mirror(k)[:, :, 5], y[:, :, 5].conj(), atol=1e-5)
    assert torch.allclose(k[:, :, 3], op.T(x_true)[:, :, 3], atol=1e-5)
    # the stored measurement is unchanged: completion lives in the data-consistency step only
    assert op.mask[:, 3].sum() == 0 and (y[:, :, 3] == 0).all()
    mask, z = op.completed(y)
    assert mask[:, [3, 4, 5]].all() and mask.sum() == 3 * N


def test_diffpir_proximal_step_by_cg_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    op = DenseOperator(20, g)
    y = op.forward(torch.rand(2, 1, N, N, generator=g))
    x0 = torch.rand(2, 1, N, N, generator=g)
    step = DiffPIRStep(op, y, SDE, sigma_y=torch.tensor([0.1, 0.2]), lam=3.0, cg_iters=200)
    sig = torch.tensor([0.5, 0.7])
    x = step.prox(x0, sig)
    A = op.A.double()
    for i in range(2):
        rho = 3.0 * float(step.sn2[i]) / float(sig[i]) ** 2
        ref = torch.linalg.solve(A.T @ A + rho * torch.eye(N * N, dtype=torch.float64),
                                 A.T @ y[i].double() + rho * x0[i].flatten().double())
        assert torch.allclose(x[i].flatten().double(), ref, atol=1e-4)
    assert float(step.sn2[0]) == pytest.approx(0.01)
    # noise-free: the floor, relative to ‖A‖, sets σ_n
    s0 = DiffPIRStep(op, y, SDE, sigma_y=0.0, floor=1e-2)
    assert float(s0.sn2[0]) > 1e-4 * 0.5 and torch.allclose(s0.sn2[0], s0.sn2[1])


def test_diffpir_runs_by_cg_where_ddrm_is_refused():
    g = torch.Generator().manual_seed(0)
    op = DenseOperator(20, g)
    op.name = "DenseOperator"
    model = GaussianPrior(SDE)
    y = op.forward(model.sample(1, g).float())
    x, nfe = solve(model, op, y, solver_config("diffpir", steps=10, cg_iters=30), torch.Generator().manual_seed(1))
    assert nfe == 10 and torch.isfinite(x).all()
    assert (op.forward(x) - y).norm() < 1e-2 * y.norm()
    with pytest.raises(ScoreinvError, match=r"solver ddrm needs an operator with the A = P\(Λ\)T decomposition.*"
                                            r"DenseOperator has none.*diffpir"):
        solve(model, op, y, solver_config("ddrm", steps=10))


class Flat(torch.nn.Module):
    """A nearly flat prior N(0.5, 1e4 I): the denoiser is the identity up to 1e-4 σ²."""

    def __init__(self):
        super().__init__()
        self.sde = SDE

    def score(self, x, t):
        _, b = SDE.marginal_coeffs(t)
        return -(x - 0.5) / (1e4 + b.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)

    def denoise(self, x, t):
        _, b = SDE.marginal_coeffs(t)
        return x + b.reshape(-1, 1, 1, 1).to(x.dtype) ** 2 * self.score(x, t)


@pytest.mark.parametrize("solver", ["dds", "ddrm", "diffpir", "projection"])
def test_a_warm_start_at_small_sigma_returns_near_the_classical_input_under_a_flat_prior(solver):
    op = make_ops()["mri"]
    g = torch.Generator().manual_seed(0)
    y = op.forward(torch.rand(3, 1, N, N, generator=g))
    x_c = classical(op, y)
    kw = dict(eta=0.0, lam=1.0) if solver != "projection" else dict(corrector=False)   # (Langevin's step rule
    cfg = solver_config(solver, steps=8, warm_start="classical", warm_sigma=0.02, **kw)  # explodes on a flat prior)
    x, nfe = solve(Flat(), op, y, cfg, torch.Generator().manual_seed(1))
    assert nfe == cfg.nfe()
    assert (x - x_c).abs().max() < 0.1 and (x - x_c).pow(2).mean().sqrt() < 0.03
    # an explicit start image is used, not the default classical one
    stripes = 0.3 * (-1.0) ** torch.arange(N)           # the Nyquist column of k-space: not measured
    x2, _ = solve(Flat(), op, y, cfg, torch.Generator().manual_seed(1), x_init=x_c + stripes)
    assert ((x2 - x_c) * stripes).mean() > 0.08
    # from noise at σ_max the same solver ends far from the start image
    cold, _ = solve(Flat(), op, y, solver_config(solver, steps=8, **kw), torch.Generator().manual_seed(1))
    assert (cold - x_c).pow(2).mean().sqrt() > 0.3


def test_a_warm_start_from_tv_begins_at_the_tv_image_with_its_weight():
    """warm_start tv: the start image is the tv baseline's at warm_weight (not the zero-filled one), so a
    warm start at small σ under a flat prior ends near it; MAR is refused with the flag named."""
    op = make_ops()["mri"]
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(2, 1, N, N)
    truth[:, :, N // 4:3 * N // 4, N // 4:3 * N // 4] = 0.8       # piecewise constant: TV's home ground
    y = op.forward(truth + 0.02 * torch.randn(truth.shape, generator=g))
    cfg = solver_config("ddrm", steps=8, eta=0.0, warm_start="tv", warm_weight=3e-3, warm_sigma=0.02)
    tv = get_baseline("tv")(op, y, weight=3e-3).x
    assert torch.allclose(warm_image(op, y, cfg), tv)
    assert (tv - truth).pow(2).mean() < 0.5 * (classical(op, y) - truth).pow(2).mean()
    x, _ = solve(Flat(), op, y, cfg, torch.Generator().manual_seed(1))
    assert (x - tv).pow(2).mean().sqrt() < 0.03 < (x - classical(op, y)).pow(2).mean().sqrt()
    # the weight matters: a far larger one gives another start image
    assert (warm_image(op, y, replace(cfg, warm_weight=0.1)) - tv).abs().max() > 0.05
    assert warm_image(op, y, replace(cfg, warm_start="none")) is None
    assert "warm start tv (weight 0.003) at σ 0.02" in Resolved(cfg, {}).describe()
    with pytest.raises(ScoreinvError, match="warm_weight"):
        solver_config("ddrm", warm_start="tv", warm_weight=-1.0)


def test_schedules_of_the_warm_start_and_sigma_end():
    cfg = solver_config("ddrm", steps=10, warm_start="classical", warm_sigma=1.5, sigma_end=0.05)
    sig = SDE.sigma(schedule(SDE, cfg))
    assert sig[0].item() == pytest.approx(1.5, rel=1e-6) and sig[-1].item() == pytest.approx(0.05, rel=1e-6)
    assert len(sig) == 10 and cfg.nfe() == 10 and bool((sig[1:] < sig[:-1]).all())
    grid = SDE.sigma(schedule(SDE, solver_config("projection", steps=10, warm_start="classical", warm_sigma=1.5)))
    assert grid[0].item() == pytest.approx(1.5, rel=1e-6) and grid[-1].item() == pytest.approx(SDE.sigma_min, rel=1e-3)
    # the defaults are the schedules of before (σ_max to σ_min)
    assert torch.equal(schedule(SDE, solver_config("dds", steps=10)), edm_times(SDE, 10))
    assert torch.equal(schedule(SDE, solver_config("projection", steps=10)), SDE.time_grid(10))


def test_sigma_end_returns_a_smoother_partial_posterior_mean():
    model = GaussianPrior(SDE)
    op = make_ops()["mri"]
    y = op.forward(model.sample(1, torch.Generator().manual_seed(1)).float())
    var = {}
    for end in (0.0, 0.5):
        cfg = solver_config("ddrm", steps=20, sigma_end=end)
        xs = posterior(model, op, y, cfg, samples=800, generator=torch.Generator().manual_seed(2))["samples"]
        var[end] = xs[:, 0, 0].double().var(0).mean().item()
    _, post_var = analytic_posterior(model, op, y)
    assert var[0.5] < 0.7 * var[0.0] < post_var


def test_bad_parameters_of_the_new_solvers_are_refused():
    with pytest.raises(ScoreinvError, match="hqs_zeta"):
        solver_config("diffpir", hqs_zeta=1.5)
    with pytest.raises(ScoreinvError, match="eta_b"):
        solver_config("ddrm", eta_b=-0.1)
    with pytest.raises(ScoreinvError, match="warm_start"):
        solver_config("dds", warm_start="fbp")
    with pytest.raises(ScoreinvError, match="sigma_end = 2: must be below solver.warm_sigma"):
        solver_config("dds", warm_start="classical", warm_sigma=1.0, sigma_end=2.0)
    model = GaussianPrior(SDE)
    op = make_ops()["mri"]
    y = op.forward(model.sample(1, torch.Generator().manual_seed(1)).float())
    with pytest.raises(ScoreinvError, match=r"warm_sigma = 9: the warm start must begin inside"):
        solve(model, op, y, solver_config("dds", steps=5, warm_start="classical", warm_sigma=9.0))
    with pytest.raises(ScoreinvError, match="sigma_end = 6"):
        solve(model, op, y, solver_config("dds", steps=5, sigma_end=6.0))
    with pytest.raises(ScoreinvError, match="noise level"):
        solve(model, op, y, solver_config("ddrm", steps=5), sigma_y=-1.0)
    with pytest.raises(ScoreinvError, match="warm-start image"):
        solve(model, op, y, solver_config("ddrm", steps=5, warm_start="classical"), x_init=torch.zeros(1, 1, 4, 4))


def test_estimate_names():
    assert estimate_name(None) == "classical"
    assert estimate_name(solver_config("dds")) == "sample"
    assert estimate_name(solver_config("dds"), 8) == "mean-of-8"
    assert estimate_name(solver_config("ddrm", sigma_end=0.2)) == "tweedie@0.2"
    assert estimate_name(solver_config("ddrm", sigma_end=0.2), 4) == "mean-of-4 tweedie@0.2"


def test_measurement_sigma_from_the_noise_records():
    from scoreinv.physics.ct import ParallelBeamCT
    from scoreinv.physics.fourier_slice import FourierSliceCT
    from scoreinv.physics.noise import add_poisson_noise
    from scoreinv.tasks import ct_geometry
    y = torch.zeros(2, N, N, dtype=torch.complex64)
    rec = {"model": "gaussian", "level": 0.1, "sigma": [0.5, 0.6, 0.7]}
    assert measurement_sigma(rec, "mri", None, file_y=y, index=[2, 0]).tolist() == [0.7, 0.5]
    assert measurement_sigma({"model": "none"}, "mri", None, file_y=y).tolist() == [0.0, 0.0]
    # Poisson CT: the delta-method level against the empirical noise of simulated counts, on the
    # sinogram (radon) and after the Fourier-slice conversion
    n, i0, mu = 16, 2e4, 0.81
    geom = ct_geometry(n, 6)
    ct, fct = ParallelBeamCT(geom), FourierSliceCT(geom)
    x = torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0))
    clean = ct.forward(x).double()
    scale = mu / 10
    g = torch.Generator().manual_seed(1)
    noisy = torch.cat([add_poisson_noise(clean * scale, i0, g) / scale for _ in range(400)])
    rec = {"model": "poisson", "level": i0, "photons": i0, "mu_max_per_cm": mu}
    s_radon = measurement_sigma(rec, "ct", ct, ct, clean.float())
    emp = (noisy - clean).pow(2).mean().sqrt()
    assert s_radon.item() == pytest.approx(emp.item(), rel=0.05)
    s_four = measurement_sigma(rec, "ct", fct, ct, clean.float())
    conv = fct.from_sinogram(noisy.float()) - fct.from_sinogram(clean.float())
    emp_f = (conv.abs() ** 2).sum((1, 2)).mean() / fct.mask.sum()
    assert s_four.item() == pytest.approx(emp_f.sqrt().item(), rel=0.05)
