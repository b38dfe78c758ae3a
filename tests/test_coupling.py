"""The z-TV coupling of volumes (docs/design.md §9): the labelled z-difference and its Thomas solve,
the ADMM data-consistency step against a reference solution, and the coupled solvers."""
import math

import pytest
import torch
from test_solvers import N, DenseOperator, GaussianPrior, make_ops

from scoreinv.data.phantom3d import phantom_volume
from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import LinearOperator
from scoreinv.sampling.coupling import (ZTVCoupling, dz, dz_adjoint, objective, pair_weights, soft,
                                        tridiagonal_solve, volume_labels)
from scoreinv.sampling.solvers import posterior, solve, solver_config
from scoreinv.sde import VESDE

COUPLED = ("projection", "langevin_projection", "dds", "diffpir")


class Dense64(LinearOperator):
    """A random dense matrix per slice, float64: no decomposition (the CG path)."""

    def __init__(self, m, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(m, n * n, generator=g, dtype=torch.float64) / n
        self.n, self.image_shape, self.meas_shape = n, (n, n), (m,)

    def forward(self, x):
        return x.flatten(1) @ self.A.T

    def adjoint(self, y):
        return (y @ self.A).reshape(-1, 1, self.n, self.n)


def dense_dz(labels) -> torch.Tensor:
    """D_z as a (B−1, B) matrix (D26)."""
    c = pair_weights(torch.as_tensor(labels))
    b = len(labels)
    d = torch.zeros(b - 1, b, dtype=torch.float64)
    for i in range(b - 1):
        d[i, i], d[i, i + 1] = -c[i], c[i]
    return d


def reference_solution(op, x_hat, y, w, lam, labels, iters=20000):
    """(D27) for finite w by FISTA on its dual, with explicit matrices: an independent solver.

    x(s) = H⁻¹(b − λ Dᵀ s), H = W AᵀA + I, b = W Aᵀ y + x̂ (per pixel D acts along z); the dual
    max_{|s| ≤ 1} −½ (b − λDᵀs)ᵀ H⁻¹ (b − λDᵀs) has gradient −λ D x(s)."""
    bsz, n = x_hat.shape[0], op.A.shape[1]
    A = op.A
    W = torch.as_tensor(w, dtype=torch.float64).expand(bsz)
    H = torch.block_diag(*[W[i] * A.T @ A + torch.eye(n, dtype=torch.float64) for i in range(bsz)])
    Dz = torch.kron(dense_dz(labels), torch.eye(n, dtype=torch.float64))          # (B−1)n x Bn
    b = torch.cat([W[i] * A.T @ y[i] + x_hat[i].flatten() for i in range(bsz)])
    Hinv = torch.linalg.inv(H)
    step = 1.0 / (lam ** 2 * torch.linalg.matrix_norm(Dz @ Hinv @ Dz.T, 2))
    s = torch.zeros(Dz.shape[0], dtype=torch.float64)
    z, t = s.clone(), 1.0
    for _ in range(iters):
        x = Hinv @ (b - lam * Dz.T @ z)
        s_new = (z + step * lam * (Dz @ x)).clamp(-1, 1)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = s_new + (t - 1) / t_new * (s_new - s)
        s, t = s_new, t_new
    return (Hinv @ (b - lam * Dz.T @ s)).reshape(x_hat.shape)


def volume_problem(seed=0, b=5, n=4, m=6):
    op = Dense64(m, n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    base = torch.rand(1, 1, n, n, generator=g, dtype=torch.float64)
    x_true = base.repeat(b, 1, 1, 1)
    x_true[b // 2:] += 0.3                                      # piecewise constant in z
    x_hat = x_true + 0.1 * torch.randn(x_true.shape, generator=g, dtype=torch.float64)
    return op, x_true, x_hat, op.forward(x_true)


# --- the pieces ---------------------------------------------------------------------------------
def test_dz_is_the_labelled_difference_and_its_adjoint_and_the_thomas_solve_is_exact():
    labels = torch.tensor([0, 0, 0, 3, 3, 1])
    c = pair_weights(labels)
    assert c.tolist() == [1, 1, 0, 1, 0]                       # no coupling across volumes, no wrap
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64)
    d = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(dz(x, c), torch.einsum("ij,jklm->iklm", dense_dz(labels), x))
    assert (dz(x, c) * d).sum().item() == pytest.approx((x * dz_adjoint(d, c)).sum().item(), abs=1e-12)
    a = 0.5 + torch.rand(6, 1, 3, 3, generator=g, dtype=torch.float64)
    r = torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64)
    xi = tridiagonal_solve(a, c, 0.7, r)
    assert torch.allclose(a * xi + 0.7 * dz_adjoint(dz(xi, c), c), r, atol=1e-12)
    rc = torch.complex(r, torch.randn(r.shape, generator=g, dtype=torch.float64))
    xc = tridiagonal_solve(1.0, c, 2.0, rc)                    # complex right-hand side, scalar diagonal
    assert torch.allclose(xc + 2.0 * dz_adjoint(dz(xc, c), c), rc, atol=1e-12)
    assert soft(torch.tensor([-2.0, 0.5, 3.0]), 1.0).tolist() == [-1.0, 0.0, 2.0]


def test_admm_solves_its_convex_problem():
    """The long-run ADMM (warm-started over calls, as in a solver) on two volumes in one batch against
    an independent dual solver, and the optimality condition W Aᵀ(Ax − y) + x − x̂ + ρ D_zᵀu = 0 with
    |ρ u| ≤ λ."""
    op, _, x_hat, y = volume_problem()
    lab = torch.tensor([0, 0, 0, 1, 1])
    w, lam = 4.0, 0.05
    z = ZTVCoupling(lam, lab, iters=1, rho=1.0, cg_iters=40, tol=1e-13)
    for _ in range(120):
        x = z(op, x_hat, y, w)
    ref = reference_solution(op, x_hat, y, w, lam, lab)
    assert (x - ref).abs().max() < 1e-6
    c = pair_weights(lab)
    grad = w * op.adjoint(op.forward(x) - y) + (x - x_hat) + z.rho * dz_adjoint(z.u, c)
    assert grad.abs().max() < 1e-8 and (z.rho * z.u).abs().max() <= lam + 1e-9
    assert objective(op, x, x_hat, y, w, lam, lab) < objective(op, x_hat, x_hat, y, w, lam, lab)
    assert objective(op, x, x_hat, y, w, lam, lab) <= objective(op, ref + 1e-3 * torch.randn_like(ref), x_hat, y, w,
                                                                lam, lab)


def test_the_exact_and_the_cg_x_updates_agree_and_a_hard_step_is_a_constrained_minimum():
    """On an operator with A = P(Λ)T (symmetric Cartesian mask) the T-domain x-update equals the
    preconditioned-CG one, soft and hard; the hard coupled step keeps A x = ŷ exactly and its residual
    x − x̂ + ρ D_zᵀu lies in the range of Aᵀ (zero off the mask in the T domain)."""
    op = make_ops()["mri"]
    g = torch.Generator().manual_seed(0)
    x_hat = torch.rand(5, 1, N, N, generator=g, dtype=torch.float64)
    y = op.forward(torch.rand(5, 1, N, N, generator=g, dtype=torch.float64))
    vu = 0.1 * torch.randn(4, 1, N, N, generator=g, dtype=torch.float64)
    from scoreinv.sampling.conditioning import dc_data
    for w in (2.5, math.inf):
        z = ZTVCoupling(0.05, torch.zeros(5), rho=0.8, cg_iters=300, tol=1e-14)
        exact = z.xupdate(op, x_hat, vu, y, w, dc_data(op, y))
        cg = z.xupdate(op, x_hat, vu, y, w, None)
        assert (exact - cg).abs().max() < 1e-8, w
    z = ZTVCoupling(0.05, torch.zeros(5), iters=400, rho=1.0)
    x = z(op, x_hat, y, math.inf, dc_data(op, y))
    assert (op.forward(x) - y).abs().max() < 1e-10
    resid = op.T(x - x_hat + z.rho * dz_adjoint(z.u, pair_weights(torch.zeros(5))))
    assert resid[:, ~op.mask].abs().max() < 1e-6 and resid[:, op.mask].abs().max() > 1e-3


def test_bad_coupling_inputs_are_refused():
    op, _, x_hat, y = volume_problem()
    with pytest.raises(ScoreinvError, match="5 volume labels for a batch of 4"):
        ZTVCoupling(0.1, torch.zeros(5))(op, x_hat[:4], y[:4], 1.0)
    with pytest.raises(ScoreinvError, match="hard .* and others"):
        ZTVCoupling(0.1, torch.zeros(5))(op, x_hat, y, torch.tensor([1.0, 1, 1, 1, math.inf]))
    with pytest.raises(ScoreinvError, match="expected 3 integers"):
        volume_labels(torch.tensor([0.0, 1.0, 2.0]), 3)
    with pytest.raises(ScoreinvError, match="ztv_lambda"):
        ZTVCoupling(-1.0, torch.zeros(5))
    for solver in ("dps", "ddrm", "baseline"):
        with pytest.raises(ScoreinvError, match=f"solver {solver} cannot couple slices"):
            solver_config(solver, coupling="ztv")


# --- coupled solvers ----------------------------------------------------------------------------
def _gaussian_volume(depth=6):
    """A piecewise-constant-in-z volume of 8x8 slices (two blocks) under the Gaussian prior."""
    sde = VESDE(0.01, 5.0)
    model = GaussianPrior(sde)
    a, b = model.sample(2, torch.Generator().manual_seed(1)).float()
    return model, torch.stack([a] * (depth // 2) + [b] * (depth - depth // 2))


def zgrad_error(x, ref) -> float:
    return float(((x[1:] - x[:-1]) - (ref[1:] - ref[:-1])).pow(2).mean().sqrt())


@pytest.mark.parametrize("opname", ["mri", "dense"])
def test_lambda_zero_equals_none_and_coupling_lowers_the_z_gradient_error(opname):
    model, vol = _gaussian_volume()
    op = make_ops()["mri"] if opname == "mri" else DenseOperator(20, torch.Generator().manual_seed(0))
    y = op.forward(vol)
    for s in COUPLED:
        kw = {"steps": 12} | ({"lam": 0.9} if s in ("projection", "langevin_projection") else {})
        kw |= {"steps": 8, "corrector_steps": 2} if s == "langevin_projection" else {}
        a, _ = solve(model, op, y, solver_config(s, **kw), torch.Generator().manual_seed(2))
        b, _ = solve(model, op, y, solver_config(s, coupling="ztv", ztv_lambda=0.0, **kw),
                     torch.Generator().manual_seed(2), volume=torch.arange(6))
        assert torch.equal(a, b), s
        if s == "langevin_projection":
            continue
        c, _ = solve(model, op, y, solver_config(s, coupling="ztv", ztv_lambda=0.05, **kw),
                     torch.Generator().manual_seed(2))
        # raw values (the Gaussian prior's images leave [0, 1], which the metrics would clip); the jump
        # between the two blocks is unmeasured in part and stays, so not all of the error goes
        assert zgrad_error(c, vol) < 0.7 * zgrad_error(a, vol), s
        assert (c - vol).pow(2).mean() < 0.9 * (a - vol).pow(2).mean(), s


def test_posterior_samples_are_separate_volumes():
    """K samples of one volume couple within each sample only: a coupled posterior of K = 2 equals the
    two chains' draws laid out as two volumes of one batch with distinct labels."""
    model, vol = _gaussian_volume(4)
    op = make_ops()["mri"]
    y = op.forward(vol)
    cfg = solver_config("dds", steps=6, coupling="ztv", ztv_lambda=0.05)
    post = posterior(model, op, y, cfg, samples=2, generator=torch.Generator().manual_seed(0))
    both, _ = solve(model, op, y.repeat(2, 1, 1), cfg, torch.Generator().manual_seed(0),
                    volume=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert torch.equal(post["samples"].reshape(8, 1, N, N), both)
    one, _ = solve(model, op, y.repeat(2, 1, 1), cfg, torch.Generator().manual_seed(0))   # one volume of 8: differs
    assert not torch.allclose(one, both)


def test_network_batches_and_a_patch_prior(tiny_checkpoint):
    """The network evaluated 2 images at a time gives the coupled result of one call; a patch prior is
    served whole (one tiling offset per evaluation) and its coupled step keeps the data."""
    from scoreinv import config as C
    from scoreinv.physics.ct import ParallelBeamCT
    from scoreinv.score import build_model, load_score_model
    model, _ = load_score_model(tiny_checkpoint)
    from scoreinv.physics.geometry import dense_angles, sparse_view_indices
    op = ParallelBeamCT(16, dense_angles(16)[sparse_view_indices(16, 6)])
    vol = phantom_volume(6, 16, 0)
    y = op.forward(vol)
    cfg = solver_config("dds", steps=3, coupling="ztv", ztv_lambda=0.02)
    whole, _ = solve(model, op, y, cfg, torch.Generator().manual_seed(0))
    parts, _ = solve(model, op, y, cfg, torch.Generator().manual_seed(0), network_batch=2)
    assert torch.allclose(whole, parts, atol=1e-6)
    cfgp = C.load_config("ct64", ["model.patch_size=8", "data.image_size=16", "model.nf=8", "model.ch_mult=[1,2]",
                                  "model.attn_resolutions=[]"])
    torch.manual_seed(0)
    patch = build_model(cfgp).eval()
    a, _ = solve(patch, op, y, cfg, torch.Generator().manual_seed(0))
    b, _ = solve(patch, op, y, cfg, torch.Generator().manual_seed(0), network_batch=2)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert ((op.forward(a) - y).norm() / y.norm()) < 0.05


def test_coupling_settings_are_solver_settings():
    from dataclasses import asdict

    from scoreinv.sampling.settings import USES, SolverConfig, parse_sets, record, resolve
    assert not {"coupling", "ztv_lambda", "admm_iters", "admm_rho"} & set(record(asdict(SolverConfig())))
    assert all("coupling" in USES[s] for s in COUPLED) and not any("coupling" in USES[s] for s in ("dps", "ddrm"))
    r = resolve("ct", "dds", preset="reference", sets=parse_sets(["solver.coupling=ztv", "solver.ztv_lambda=0.02"]))
    assert r.cfg.coupling == "ztv" and r.cfg.ztv_lambda == 0.02 and "ztv coupling λ_z 0.02" in r.describe()
    # `solver.KEY` applies to the solvers that use it: dps in the same run stays uncoupled
    assert resolve("ct", "dps", preset="reference", sets=parse_sets(["solver.coupling=ztv"])).cfg.coupling == "none"
    with pytest.raises(ScoreinvError, match="expected one of: none, ztv"):
        solver_config("dds", coupling="xyz")
