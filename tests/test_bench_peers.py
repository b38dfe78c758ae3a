"""`scoreinv bench peers` (scoreinv.bench.peers): what runs without deepinv, and a slow end-to-end run
in the peers' own environment (.venv-peers, made by `make bench-peers`)."""
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_solvers import GaussianPrior

from scoreinv.bench import peer_adapters as A
from scoreinv.bench import peers as P
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.physics.mri import fft2c, ifft2c
from scoreinv.sampling.settings import solver_config
from scoreinv.sampling.solvers import sigma_of
from scoreinv.sde import VESDE, VPSDE

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


@pytest.fixture
def no_deepinv(monkeypatch):
    """deepinv unimportable, whether or not this environment has it."""
    monkeypatch.setitem(sys.modules, "deepinv", None)


def run_cli(args, capsys):
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


# --- the missing dependency and the options ------------------------------------------------------
def test_without_deepinv_one_line_naming_make_bench_peers(no_deepinv, capsys):
    rc, out, err = run_cli(["bench", "peers", "--images", "1", "--nfe", "4", "--settings", "mri"], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "make bench-peers" in lines[0] and "deepinv" in lines[0], err
    assert "Traceback" not in err and "# bench peers" not in out
    with pytest.raises(ScoreinvError, match="make bench-peers"):
        A.import_deepinv()


@pytest.mark.parametrize("args, flag", [
    (["--images", "0"], "--images"),
    (["--nfe", "50,abc"], "--nfe"),
    (["--nfe", "51"], "--nfe"),
    (["--nfe", "2"], "--nfe"),
    (["--nfe", "50,50"], "--nfe"),
    (["--nfe", "50,,100"], "--nfe"),
    (["--settings", "ct,pet"], "--settings"),
    (["--settings", ""], "--settings"),
    (["--settings", "mri,mri"], "--settings"),
])
def test_bad_options_are_refused_before_deepinv_is_needed(no_deepinv, capsys, args, flag):
    rc, _, err = run_cli(["bench", "peers", *args], capsys)
    assert rc == 2
    assert flag in err and "make bench-peers" not in err and "Traceback" not in err, err


def test_check_options_returns_the_parsed_lists():
    assert P.check_options(3, "50,100", "mri,ct") == (3, (50, 100), ("mri", "ct"))
    assert P.check_options(16, (4,), ("ct",)) == (16, (4,), ("ct",))


def test_more_images_than_the_test_split_holds_is_refused():
    with pytest.raises(ScoreinvError, match="--images 100000: the test split of brain holds only"):
        P.build_problems(P.SETTINGS["mri"], 100000)


def test_our_solvers_get_the_levels_that_give_the_nfe():
    for name, nfe, steps in (("dds", 50, 50), ("projection", 50, 25), ("projection", 100, 50), ("dds", 100, 100)):
        s = P.steps_for_nfe(functools.partial(P._nfe_at, solver_config(name, "mri")), nfe)
        assert s == steps and solver_config(name, "mri", steps=s).nfe() == nfe, name
    with pytest.raises(ScoreinvError, match="--nfe 7"):
        P.steps_for_nfe(lambda k: 2 * k, 7)


# --- the measurements ----------------------------------------------------------------------------------
def test_mri_measurements_are_evals_batches_exact_and_repeatable():
    b1 = P.build_problems(P.SETTINGS["mri"], 5)
    b2 = P.build_problems(P.SETTINGS["mri"], 5)
    assert [p.x.shape[0] for p in b1.batches] == [4, 1]          # eval's batches of 4
    assert b1.val.x.shape == (P.VAL_IMAGES, 1, 64, 64)
    for p, q in zip(b1.batches, b2.batches):
        assert A.y_hash(p.y) == A.y_hash(q.y)                    # fixed seeds: a rerun sees the same data
        assert torch.equal(p.op.forward(p.x), p.y)               # noise-free, no mismatch for MRI
        assert p.op.has_decomposition
        assert abs(p.op.acceleration - 8.0) < 1.0                 # 8x random columns
        assert torch.equal(p.naive, p.op.adjoint(p.y))
    # every batch draws its own random mask, as `scoreinv eval` does; test and val differ
    assert not torch.equal(b1.batches[0].op.mask, b1.batches[1].op.mask)
    assert not torch.equal(b1.batches[0].op.mask, b1.val.op.mask)
    assert not torch.equal(b1.batches[0].x[:3], b1.val.x)


def test_ct_measurements_have_10_views_and_no_inverse_crime():
    b = P.build_problems(P.SETTINGS["ct"], 2)
    p = b.batches[0]
    assert p.y.shape[:2] == (2, 10) and p.x.shape == (2, 1, 64, 64)
    assert not getattr(p.op, "has_decomposition", False)           # eval's default radon operator
    rel = float((p.y - p.op.forward(p.x)).norm() / p.y.norm())
    assert 1e-4 < rel < 0.1                                        # the finer grid: small, nonzero mismatch


def test_y_hash_sees_the_bytes_and_a_complex_y_hashes_as_its_real_view():
    y = torch.randn(2, 4, 4, dtype=torch.complex64)
    assert A.y_hash(y) == A.y_hash(torch.view_as_real(y)) == A.y_hash(A.peer_measurement(y))
    z = y.clone()
    z[1, 2, 3] += 1e-6
    assert A.y_hash(z) != A.y_hash(y)
    assert A.peer_measurement(torch.ones(2, 3)).dtype == torch.float32


# --- the real SVD of single-coil MRI ----------------------------------------------------------------------
def test_real_svd_reproduces_our_operator_on_real_images_with_an_asymmetric_mask():
    from scoreinv.physics.mri import CartesianMRI
    m = torch.zeros(16, 16, dtype=torch.bool)
    m[:, [8, 9, 10, 3, 12]] = True               # DC 8; 9 <-> 7 one-sided; 10 <-> 6 one-sided; 3 <-> 13; 12 <-> 4
    m[:, 7] = True                               # 9 and 7: a sampled pair
    m[:, 0] = True                               # column 0 is its own mirror (Nyquist)
    op = CartesianMRI(m)
    s, U, Ut = A.real_svd(op)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    z = op.T(x)
    assert torch.allclose(U(s * z), op.forward(x), atol=1e-6)                   # A = U diag(s) V^T
    y = op.forward(x)
    assert torch.allclose(op.T_inv(s * Ut(y)), op.adjoint(y), atol=1e-6)        # A^T = V diag(s) U^T
    assert torch.allclose(U(Ut(y)), y, atol=1e-6)                               # U U^T = I on the measurements
    assert torch.allclose(op.T_inv(s ** 2 * z), op.normal(x), atol=1e-6)         # A^T A = V diag(s²) V^T
    col = s[0]
    assert col[8] == 1 and col[0] == 1 and col[9] == 1 and col[7] == 1           # self-mirrored or both sampled
    for k in (10, 6, 3, 13, 12, 4):                                            # one of k, -k sampled
        assert col[k] == pytest.approx(math.sqrt(0.5))
    assert col[1] == 0 and col[15] == 0
    # deepinv's closed-form prox x = V((V^T (A^T y + z / γ)) / (s² + 1 / γ)): with γ -> ∞ the data are met
    zeta = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    gamma = 1e8
    xp = op.T_inv((op.T(op.adjoint(y) + zeta / gamma)) / (s ** 2 + 1 / gamma))
    assert torch.allclose(op.forward(xp), y, atol=1e-4)
    # ... which the plain choice s = mask, U = I does not give for an asymmetric mask
    mk = m.to(torch.float32)
    bad = op.T_inv((op.T(op.adjoint(y) + zeta / gamma)) / (mk ** 2 + 1 / gamma))
    assert float((op.forward(bad) - y).abs().max()) > 1.0


# --- the prior as a denoiser ---------------------------------------------------------------------------------
class Stub:
    """A model whose denoise returns its inputs, so the wrapper's time and scaling can be read off."""

    def __init__(self, sde):
        self.sde, self.seen = sde, []

    def denoise(self, x, t):
        self.seen.append(t.clone())
        return x.clone()


@pytest.mark.parametrize("sde", [VESDE(0.01, 30.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_sigma_maps_to_the_time_of_that_sigma_clamped_to_the_model_range(sde):
    d = A.PriorDenoiser(Stub(sde))
    lo, hi = sigma_of(sde, sde.eps), sigma_of(sde, 1.0)
    assert d.sigma_lo == pytest.approx(lo) and d.sigma_hi == pytest.approx(hi)
    sig = [max(lo * 1.5, 0.02), 0.3, 1.0, min(hi / 2, 20.0)]
    t = d.times(torch.tensor(sig), 4)
    assert t.dtype == torch.float64 and t.shape == (4,)
    for s, ti in zip(sig, t.tolist()):
        assert sigma_of(sde, ti) == pytest.approx(s, rel=1e-6)
    assert torch.all(t[1:] > t[:-1])
    # below the range (DDRM ends at σ = 0) -> eps; above it (deepinv's VP schedules start near 78) -> 1
    assert d.times(0.0, 2).tolist() == pytest.approx([sde.eps] * 2, abs=1e-7)
    assert d.times(500.0, 1).tolist() == pytest.approx([1.0], abs=1e-7)
    # a float, a numpy float, a 0-d tensor and a (1,) tensor broadcast to the batch
    import numpy as np
    for s in (0.3, np.float64(0.3), torch.tensor(0.3), torch.tensor([0.3])):
        assert d.times(s, 3).tolist() == pytest.approx([t[1].item()] * 3)
    with pytest.raises(ScoreinvError, match="2 noise levels for a batch of 3"):
        d.times(torch.tensor([0.1, 0.2]), 3)
    with pytest.raises(ScoreinvError, match=">= 0"):
        d.times(-0.1, 1)
    with pytest.raises(ScoreinvError, match="finite"):
        d.times(float("nan"), 1)


@pytest.mark.parametrize("sde", [VESDE(0.01, 30.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_the_input_is_scaled_by_alpha_and_every_call_is_counted(sde):
    stub = Stub(sde)
    d = A.PriorDenoiser(stub)
    x = torch.rand(2, 1, 8, 8)
    out = d(x, torch.tensor([0.5, 2.0]))
    alpha, _ = sde.marginal_coeffs(stub.seen[-1])
    assert torch.allclose(out, x * alpha.float().reshape(-1, 1, 1, 1))     # model sees x_t = α (x0 + σ z)
    assert d.calls == 1 and torch.equal(d.last, out)
    d(x, 0.1)
    assert d.calls == 2


def test_the_wrapper_is_the_exact_tweedie_estimate_of_a_gaussian_prior():
    """Prior x0 ~ N(μ, C) with C diagonal (d_k) in the FFT basis: E[x0 | x0 + σ z] = μ + d/(d + σ²) (x - μ)."""
    sde = VESDE(0.01, 30.0)
    prior = GaussianPrior(sde)
    den = A.PriorDenoiser(prior)
    x = prior.sample(3, torch.Generator().manual_seed(0)).float()
    for sigma in (0.05, 0.5, 3.0):
        noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        k = fft2c((noisy.double() - prior.mu)[:, 0])
        want = (ifft2c(k * prior.d / (prior.d + sigma ** 2)).real + prior.mu).unsqueeze(1)
        assert torch.allclose(den(noisy, sigma).double(), want, atol=1e-5), sigma


# --- the printed summary -----------------------------------------------------------------------------------
def test_table_and_best_lines():
    res = {}
    for m, ps in (("ours_dds", 21.0), ("deepinv_ddrm", 23.5), ("ours_ddrm", 23.75)):
        k = f"mri.{m}.nfe50"
        res.update({f"{k}.psnr": ps, f"{k}.psnr_std": 0.5, f"{k}.ssim": 0.7, f"{k}.ssim_std": 0.1, f"{k}.nfe": 50,
                    f"{k}.s_per_image": 3.25})
    res.update({"mri.nfe50.best_ours": "ours_ddrm", "mri.nfe50.best_ours_psnr": 23.75,
                "mri.nfe50.best_peer": "deepinv_ddrm", "mri.nfe50.best_peer_psnr": 23.5,
                "mri.nfe50.ours_minus_peer_db": 0.25})
    t = P.table(res).splitlines()
    assert len(t) == 5 and "| mri | deepinv_ddrm | 50 | 23.50 ± 0.50 | 0.7000 | 3.25 |" in t
    want = "mri.nfe50: best ours ours_ddrm 23.75 dB, best peer deepinv_ddrm 23.50 dB (+0.25 dB)"
    assert P.best_lines(res) == [want]


def test_grids_are_small_and_cover_every_peer():
    assert set(P.GRIDS) == set(P.PEER_METHODS)
    for m in P.PEER_METHODS:
        pts = P.grid_points(m)
        assert 2 <= len(pts) <= 8 and len({tuple(p.items()) for p in pts}) == len(pts)
        assert all(set(p) == set(P.GRIDS[m]) for p in pts)
    assert math.prod(len(v) for v in P.GRIDS["ddrm"].values()) == len(P.grid_points("ddrm"))


# --- with deepinv (the peers' environment) -------------------------------------------------------------------
PEER_CHECK = r"""
import torch
torch.set_num_threads(1)
from scoreinv.bench import peer_adapters as A
from scoreinv.bench import peers as P
from scoreinv.score import load_score_model
dinv = A.import_deepinv()
assert dinv.__version__.startswith(A.DEEPINV_VERSION), dinv.__version__
for name in ("mri", "ct"):
    st = P.SETTINGS[name]
    b = P.build_problems(st, 2)
    p = b.batches[0]
    ph = A.peer_physics(dinv, p.op)
    yp = A.peer_measurement(p.y)
    assert isinstance(ph, dinv.physics.DecomposablePhysics) == (name == "mri")
    assert torch.allclose(ph.A(p.x), A.peer_measurement(p.op.forward(p.x)), atol=1e-5)
    assert torch.allclose(ph.A_adjoint(yp), p.op.adjoint(p.y), atol=1e-5)
    if name == "mri":      # the closed-form prox is the exact data-consistency step for real images
        z = torch.rand(p.x.shape, generator=torch.Generator().manual_seed(3))
        xp = ph.prox_l2(z, yp, gamma=1e8)
        assert torch.allclose(p.op.forward(xp), p.y, atol=1e-3) and not xp.is_complex()
        assert torch.allclose(ph.prox_l2(z, yp, gamma=1e-8), z, atol=1e-5)
    model, _ = load_score_model(st.model)
    core = A.PriorDenoiser(model)
    den = A.peer_denoiser(dinv, core)
    assert isinstance(den, dinv.models.Denoiser)
    xn = p.x + 0.1 * torch.randn(p.x.shape, generator=torch.Generator().manual_seed(0))
    t = core.times(0.1, 2)
    with torch.no_grad():
        assert torch.allclose(den(xn, 0.1), model.denoise(xn, t), atol=1e-6)
    for m in [m for m in P.PEER_METHODS if m != "ddrm" or name == "mri"]:
        core.calls = 0
        h = A.y_hash(yp)
        got = P.run_peer(dinv, m, P.grid_points(m)[0], core, den, ph, yp, p.naive, 6, 1)
        assert core.calls == 6, (name, m, core.calls)
        assert A.y_hash(yp) == h == A.y_hash(p.y), (name, m)        # the peer leaves our y as it was
        for v, x in got.items():
            assert x.shape == p.x.shape and bool(torch.isfinite(x).all()), (name, v)
print("PEER CHECK OK")
"""


@pytest.mark.slow
def test_in_the_peers_environment_the_wrappers_match_our_operators_and_count_nfe():
    """Needs .venv-peers (`make bench-peers`); deselected by default with the other slow tests."""
    if not PEERS_PYTHON.exists():
        pytest.fail(f"{PEERS_PYTHON.relative_to(ROOT)} is missing: run `make bench-peers` first (it creates it)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(PEERS_PYTHON), "-c", PEER_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1200, check=False)
    assert r.returncode == 0 and "PEER CHECK OK" in r.stdout, r.stderr[-3000:]
    r = subprocess.run([str(PEERS_PYTHON), "-m", "scoreinv.cli", "bench", "peers", "--images", "1", "--nfe", "4",
                        "--settings", "mri", "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    vals = dict(ln.split(": ", 1) for ln in out.splitlines() if ": " in ln and not ln.startswith("|"))
    for k in ("mri.max_abs_A_peer_vs_ours", "mri.max_abs_At_peer_vs_ours", "mri.max_abs_y_minus_Ax"):
        assert float(vals[k]) < 1e-5, (k, vals[k])
    for key in ("# bench peers", "mri.y_identical_both_sides: yes",
                "mri.deepinv_ddrm.nfe4.nfe: 4",
                "mri.deepinv_dps.nfe4.nfe: 4", "mri.deepinv_diffpir_x0.nfe4.psnr: ", "mri.ours_dds.nfe4.nfe: 4",
                "mri.ours_projection.nfe4.nfe: 4", "mri.nfe4.ours_minus_peer_db: ", "| mri | deepinv_ddrm | 4 |"):
        assert key in out, (key, out[-3000:])
