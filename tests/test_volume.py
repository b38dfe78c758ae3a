"""Volumes: the z-TV coupled data-consistency step (ADMM), coupled solvers and reconstruct on a volume,
the DICOM series round trip, volume metrics and the 3-D phantom (docs/design.md §9)."""
import json
import math

import numpy as np
import pytest
import torch
from test_solvers import N, DenseOperator, GaussianPrior, make_ops

from scoreinv.cli import main
from scoreinv.data.phantom3d import Phantom3D, phantom_volume, volume_affine, write_nifti
from scoreinv.errors import ScoreinvError
from scoreinv.metrics import psnr, reformat, ssim, volume_metrics, zgrad_rmse
from scoreinv.physics.base import LinearOperator
from scoreinv.physics.measurements import load_measurements
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


# --- reconstruct on a volume --------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_meas(tmp_path_factory):
    """A 6-slice 16x16 3-D phantom as a NIfTI volume (2 mm pixels, 3 mm slices), simulated at 6 views."""
    d = tmp_path_factory.mktemp("vol")
    vol = phantom_volume(6, 16, 0)
    write_nifti(d / "v.nii.gz", vol, pixel_mm=2.0, z_spacing=1.5)
    assert main(["simulate", "--task", "ct", "--views", "6", "--upsample", "1", "--intensity", "hu",
                 "--input", str(d / "v.nii.gz"), "--out", str(d / "m.npz")]) == 0
    return d / "m.npz", vol


def recon(ckpt, meas, out, *extra):
    return main(["reconstruct", "--checkpoint", ckpt, "--measurements", str(meas), "--out", str(out),
                 "--solver", "dds", "--steps", "3", "--no-progress", *extra])


def test_the_phantom_file_round_trips_and_a_coupled_volume_ignores_the_network_batch(
        tiny_checkpoint, phantom_meas, tmp_path, capsys):
    meas, vol = phantom_meas
    m = load_measurements(meas)
    assert torch.allclose(m.ground_truth, vol, atol=1e-6)            # HU file -> --intensity hu -> the phantom
    assert recon(tiny_checkpoint, meas, tmp_path / "a.npy", "--coupling", "ztv", "--batch-size", "2",
                 "--report", str(tmp_path / "a.json")) == 0
    out = capsys.readouterr().out
    assert "ztv coupling λ_z 0.01" in out and "--coupling: coupling" in out
    assert "volume (6 slices, 3 mm apart): PSNR axial/coronal/sagittal" in out and "z-gradient RMSE" in out
    assert recon(tiny_checkpoint, meas, tmp_path / "b.npy", "--coupling", "ztv", "--batch-size", "6") == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    np.testing.assert_allclose(a, b, atol=1e-6)                    # chunked network == one call
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["slice_spacing_mm"] == pytest.approx(3.0) and rep["solver"]["coupling"] == "ztv"
    assert rep["volume_metrics"]["ssim_coronal"] is None            # planes of 6 x 16: smaller than SSIM's window
    v = volume_metrics(torch.from_numpy(a)[:, None], vol)
    assert rep["volume_metrics"]["psnr_axial"] == pytest.approx(v["psnr_axial"], abs=1e-4)
    # λ_z = 0 in one call is the uncoupled result of one call, bit for bit
    assert recon(tiny_checkpoint, meas, tmp_path / "c.npy", "--coupling", "ztv", "--set", "solver.ztv_lambda=0",
                 "--batch-size", "6") == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "d.npy", "--batch-size", "6") == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"), np.load(tmp_path / "d.npy"))


def _series(d, zs, shuffle=False):
    """A CT DICOM series of 16x16 slices at heights zs (mm), one file each, its slices' datasets."""
    import pydicom
    from dicom_factory import save, slice_ds
    from pydicom.uid import generate_uid
    d.mkdir()
    series, frame, study = generate_uid(), generate_uid(), generate_uid()
    vol = phantom_volume(len(zs), 16, 3)
    order = list(range(len(zs)))[::-1] if shuffle else range(len(zs))
    out = []
    for k in order:
        hu = np.rint(vol[k, 0].numpy() * 4224 - 1024 + 1024).astype(np.uint16)
        ds = slice_ds(hu, ipp=(-15.0, -12.0, zs[k]), spacing=(1.5, 1.5), series=series, number=k + 1, thickness=2.0)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        save(ds, d / f"f{len(out):02d}.dcm")
        out.append(pydicom.dcmread(d / f"f{len(out):02d}.dcm"))
    return sorted(out, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_a_coupled_dicom_series_comes_back_in_order_with_its_geometry(tiny_checkpoint, tmp_path):
    """Item 2 of issue 14: one file per slice, positions, orientation and order kept, a new series in the
    input's study and frame of reference, derived-image flags, each slice citing its source slice."""
    import pydicom
    from pydicom.pixels import apply_rescale
    src = _series(tmp_path / "in", [10.0, 12.0, 14.0, 16.0, 18.0, 20.0], shuffle=True)
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "ct", "--views", "6", "--upsample", "1", "--input", str(tmp_path / "in"),
                 "--out", str(meas)]) == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "r.npy", "--coupling", "ztv") == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "r.dcm", "--coupling", "ztv") == 0
    x = np.load(tmp_path / "r.npy")
    files = sorted((tmp_path / "r").iterdir())
    assert [f.name for f in files] == [f"IM_{k:04d}.dcm" for k in range(1, 7)]
    out = [pydicom.dcmread(f) for f in files]
    assert [int(d.InstanceNumber) for d in out] == list(range(1, 7))
    assert len({d.SeriesInstanceUID for d in out}) == 1 and out[0].SeriesInstanceUID != src[0].SeriesInstanceUID
    for k, d in enumerate(out):
        assert d.StudyInstanceUID == src[k].StudyInstanceUID and d.FrameOfReferenceUID == src[k].FrameOfReferenceUID
        assert list(d.ImageType) == ["DERIVED", "SECONDARY"] and "ztv coupling" in d.DerivationDescription
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                   [-15.0, -12.0, 10.0 + 2 * k], atol=1e-4)      # 16x16 as given: no resize
        assert float(d.SliceLocation) == pytest.approx(10.0 + 2 * k)
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == src[k].SOPInstanceUID
        np.testing.assert_allclose(apply_rescale(d.pixel_array, d), x[k] * 4224 - 1024,
                                   atol=float(d.RescaleSlope) / 2 + 1e-3)


def test_volume_inputs_that_are_not_volumes_are_refused_before_sampling(tiny_checkpoint, phantom_meas, tmp_path,
                                                                        capsys, monkeypatch):
    monkeypatch.setattr("scoreinv.sampling.solvers.posterior",
                        lambda *a, **k: pytest.fail("sampling started before the checks"))
    meas, _ = phantom_meas

    def refused(m, *extra, solver="dds"):
        assert main(["reconstruct", "--checkpoint", tiny_checkpoint, "--measurements", str(m), "--out",
                     str(tmp_path / "o.npy"), "--solver", solver, "--steps", "2", "--no-progress", *extra]) == 2
        return capsys.readouterr().err

    assert "solver dps cannot couple slices" in refused(meas, "--coupling", "ztv", solver="dps")
    assert "solver ddrm cannot couple slices" in refused(meas, "--coupling", "ztv", "--ct-operator", "fourier",
                                                         solver="ddrm")
    assert "--set solver.coupling ztv: solver dps cannot" in refused(meas, "--set", "solver.coupling=ztv",
                                                                      solver="dps")
    assert "at least 2 slices" in refused(meas, "--coupling", "ztv", "--slices", "2")
    assert "not evenly spaced" in refused(meas, "--coupling", "ztv", "--slices", "0,1,3")
    assert "differs from --set" in refused(meas, "--coupling", "none", "--set", "solver.coupling=ztv")
    for zs, what in (([0.0, 2.0, 4.0, 8.0, 10.0], "missing slice"), ([0.0, 2.0, 4.0, 5.0, 6.0], "non-uniform")):
        d = tmp_path / f"s{len(what)}"
        _series(d, zs)
        assert main(["simulate", "--task", "ct", "--views", "4", "--upsample", "1", "--input", str(d), "--out",
                     str(d / "m.npz")]) == 0
        capsys.readouterr()
        assert what in refused(d / "m.npz", "--coupling", "ztv")
    # a duplicated position (a source record edited by hand; the DICOM reader refuses such a series itself)
    with np.load(meas, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    src = json.loads(str(arrays["source"]))
    src["slices"][3]["ImagePositionPatient"] = src["slices"][2]["ImagePositionPatient"]
    arrays["source"] = np.array(json.dumps(src))
    np.savez(tmp_path / "dup.npz", **arrays)
    assert "same position" in refused(tmp_path / "dup.npz", "--coupling", "ztv")
    # a volume whose coupled step would not fit in the memory available now
    import os
    pages = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert "needs about" in refused(meas, "--coupling", "ztv")


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


# --- volume metrics -----------------------------------------------------------------------------
def test_volume_metrics_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(12, 1, 14, 16, generator=g)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    v = volume_metrics(x, ref)
    assert v["psnr_axial"] == pytest.approx(float(psnr(x, ref).mean()), abs=1e-9)
    assert v["ssim_axial"] == pytest.approx(float(ssim(x, ref).mean()), abs=1e-9)
    cor, sag = reformat(x, "coronal"), reformat(x, "sagittal")
    assert cor.shape == (14, 1, 12, 16) and sag.shape == (16, 1, 12, 14)
    assert torch.equal(cor[3, 0, 0], x[11, 0, 3]) and torch.equal(sag[5, 0, 0], x[11, 0, :, 5])   # superior on top
    assert v["psnr_coronal"] == pytest.approx(float(psnr(cor, reformat(ref, "coronal")).mean()), abs=1e-9)
    assert v["ssim_sagittal"] == pytest.approx(float(ssim(sag, reformat(ref, "sagittal")).mean()), abs=1e-9)
    # the z-gradient error: 0 for an error constant in z, a for a ramp of slope a
    flat = torch.full((8, 1, 12, 12), 0.5)
    assert float(zgrad_rmse(flat + 0.1, flat)) == pytest.approx(0.0, abs=1e-12)
    ramp = flat + 0.02 * torch.arange(8.0).reshape(8, 1, 1, 1)
    assert float(zgrad_rmse(ramp, flat)) == pytest.approx(0.02, rel=1e-6)
    assert math.isnan(volume_metrics(x[:6], ref[:6])["ssim_coronal"])      # 6 x 16 planes: below the window
    with pytest.raises(ScoreinvError, match="at least 2 slices"):
        volume_metrics(x[:1], ref[:1])


# --- the 3-D phantom ----------------------------------------------------------------------------
def test_phantom_volumes_are_seeded_smooth_in_z_and_a_dataset_of_volumes():
    a = phantom_volume(8, 32, 5)
    assert a.shape == (8, 1, 32, 32) and a.dtype == torch.float32 and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, phantom_volume(8, 32, 5)) and not torch.equal(a, phantom_volume(8, 32, 6))
    other = phantom_volume(8, 32, 6)
    # neighbouring slices are alike (ellipsoids, 3-D textures), unlike slices of another phantom ...
    assert (a[1:] - a[:-1]).pow(2).mean() < 0.05 * (a - other).pow(2).mean()
    # ... yet the volume is not a stack of one slice: structures begin and end along z
    thick = phantom_volume(8, 32, 5, z_spacing=8.0)
    assert (thick[1:] - thick[:-1]).abs().amax(dim=(1, 2, 3)).max() > 0.05
    head = phantom_volume(3, 64, 1, kind="head")
    assert head[1, 0, 32].max() > 0.5                              # the skull (> 1100 HU) crosses the middle row
    ds = Phantom3D("test", 16, seed=2, volumes=2, depth=5)
    assert len(ds) == 10 and ds.index[7] == (1, 2)
    assert torch.equal(ds[7], ds.volume(1)[2])
    assert {v for v, _ in ds.shard(1, 2).index} == {1}
    aff = volume_affine(5, 16, 2.0, 1.5)
    np.testing.assert_allclose(aff[:3, :3] @ [1, 0, 0], [0, 0, 3.0])          # slices run superior
    with pytest.raises(ScoreinvError, match="kind"):
        phantom_volume(4, 16, kind="knee")


def test_eval_reports_volume_metrics_and_refuses_coupling_on_independent_images(tmp_path, tiny_checkpoint):
    from scoreinv import evaluate as E
    from scoreinv.data.registry import build_dataset
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options
    opts = task_options("ct", views=6, upsample=1)
    ds = Phantom3D("test", 16, volumes=2, depth=4)
    model, _ = load_score_model(tiny_checkpoint)
    methods = E.resolve_methods("fbp,dds", "ct", steps=2, sets={"dds": {"coupling": "ztv"}})
    summary = E.evaluate(tmp_path / "e", opts, ds, methods, 8, data_id="phantom3d", split="test", model=model,
                         batch_size=4, log=lambda *a: None)
    rec = {r["solver"]: r for r in summary}
    assert rec["fbp"]["volume"]["n_volumes"] == 2 and rec["fbp"]["volume"]["slices"] == [4, 4]
    z = np.load(tmp_path / "e" / "reconstructions.npz")
    x = torch.from_numpy(z["recon_dds"])
    both = [volume_metrics(x[i:i + 4], torch.from_numpy(z["ground_truth"][i:i + 4])) for i in (0, 4)]
    assert rec["dds"]["volume"]["zgrad_rmse"] == pytest.approx((both[0]["zgrad_rmse"] + both[1]["zgrad_rmse"]) / 2)
    flat = build_dataset("phantoms", "test", 16)
    with pytest.raises(ScoreinvError, match="needs a dataset of volumes"):
        E.evaluate(tmp_path / "f", opts, flat, methods, 4, data_id="phantoms", split="test", model=model,
                   batch_size=4, log=lambda *a: None)


# --- the phantom as a built-in dataset and a NIfTI volume -----------------------------------------
def test_phantom3d_is_a_builtin_dataset_for_inspect_and_eval(tmp_path, tiny_checkpoint, capsys):
    from scoreinv.data import BUILTIN_DATASETS, build_dataset
    assert "phantom3d" in BUILTIN_DATASETS
    ds = build_dataset("phantom3d", "test", 16, seed=2, volumes=1, depth=3)
    assert isinstance(ds, Phantom3D) and len(ds) == 3 and ds.index == [(0, 0), (0, 1), (0, 2)]
    assert torch.equal(ds[1], Phantom3D("test", 16, seed=2, volumes=1, depth=3).volume(0)[1])
    with pytest.raises(ScoreinvError, match="unknown option.*views"):
        build_dataset("phantom3d", "test", 16, views=3)
    with pytest.raises(ScoreinvError, match="hu_min"):
        build_dataset("phantom3d", "test", 16, hu_min=-500.0)
    assert main(["data", "inspect", "phantom3d", "--size", "16", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "dataset   phantom3d" in out and "32 image(s) of 16x16" in out and "volumes   2" in out
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--task", "ct", "--views", "6", "--upsample", "1",
                 "--data", "phantom3d", "--split", "test", "--solvers", "fbp", "--num-images", "4",
                 "--out", str(tmp_path / "e")]) == 0
    rec = {r["solver"]: r for r in json.loads((tmp_path / "e" / "summary.json").read_text())}
    assert rec["fbp"]["volume"]["n_volumes"] == 1 and rec["fbp"]["volume"]["slices"] == [4]


def test_data_phantom3d_writes_the_volume_that_simulate_and_coupled_reconstruct_read(tiny_checkpoint, tmp_path,
                                                                                       capsys):
    from scoreinv.data.readers import read_volume
    vol = tmp_path / "vol.nii.gz"
    args = ["data", "phantom3d", "--out", str(vol), "--slices", "4", "--size", "16", "--seed", "3",
            "--z-spacing", "2", "--pixel-size", "1.5"]
    assert main(args) == 0
    assert "4 slice(s) of 16x16, pixel 1.5 mm, slices 3 mm apart" in capsys.readouterr().out
    v = read_volume(str(vol))
    ref = phantom_volume(4, 16, 3, z_spacing=2.0)[:, 0].numpy()
    np.testing.assert_allclose((v.data + 1024) / 4224, ref, atol=1e-5)        # HU, slices inferior -> superior
    np.testing.assert_allclose(v.meta["affine"], volume_affine(4, 16, 1.5, 2.0), atol=1e-4)
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err          # an existing file is kept
    assert main(args + ["--overwrite", "--kind", "head"]) == 0
    for bad, what in ((["--out", str(tmp_path / "v.png")], ".nii or .nii.gz"), (["--slices", "0"], "--slices"),
                      (["--pixel-size", "-1"], "--pixel-size"), (["--size", "4"], "--size")):
        assert main(["data", "phantom3d", "--out", str(tmp_path / "w.nii"), *bad]) == 2
        assert what in capsys.readouterr().err
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "ct", "--views", "6", "--upsample", "1", "--intensity", "hu", "--input",
                 str(vol), "--out", str(meas)]) == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "r.nii.gz", "--coupling", "ztv") == 0
    assert "volume (4 slices, 3 mm apart)" in capsys.readouterr().out
    out = read_volume(str(tmp_path / "r.nii.gz"))
    np.testing.assert_allclose(out.meta["affine"], v.meta["affine"], atol=1e-4)   # overlays the input volume


# --- bench volume -------------------------------------------------------------------------------
def _bench_lines(text: str) -> dict:
    return dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln and not ln.startswith("#"))


def test_bench_volume_times_each_coupling(tiny_checkpoint, capsys):
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--slices", "3", "--image-size", "16",
                 "--steps", "2", "--views", "6", "--data", "phantom3d", "--batch-size", "2", "--in-process"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# bench volume")
    r = _bench_lines(out)
    assert r["data"].startswith("phantom3d seed 0, 3 slices of 16x16") and r["solver"] == "diffpir"
    assert r["memory"].startswith("this process") and r["slices"] == "3" and int(r["nfe_per_slice"]) >= 2
    for c in ("none", "ztv"):
        total, per = float(r[f"{c}_seconds"]), float(r[f"{c}_seconds_per_slice"])
        assert total > 0 and per == pytest.approx(total / 3, rel=1e-4)
        assert float(r[f"{c}_peak_rss_mib"]) >= float(r[f"{c}_setup_rss_mib"]) > 10
        assert math.isfinite(float(r[f"{c}_psnr"])) and float(r[f"{c}_zgrad_rmse"]) >= 0
    assert float(r["ztv_lambda_z"]) > 0 and "none_lambda_z" not in r
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--image-size", "24"]) == 2
    assert "whole-image network for 16x16" in capsys.readouterr().err
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--couplings", "ztv,xyz"]) == 2
    assert "--couplings" in capsys.readouterr().err


def test_bench_volume_data_falls_back_to_the_phantom(monkeypatch, tmp_path):
    from scoreinv.bench.volume import load_volume
    monkeypatch.setenv("SCOREINV_DATA", str(tmp_path))                       # nothing fetched there
    x, what = load_volume("auto", 3, 16)
    assert torch.equal(x, phantom_volume(3, 16, 0)) and "ct-real is not fetched" in what
    with pytest.raises(ScoreinvError, match="not fetched"):
        load_volume("lung2", 3, 16)
    with pytest.raises(ScoreinvError, match="lung2 has 61 slices"):
        load_volume("lung2", 62, 16)


@pytest.mark.slow
def test_bench_volume_measures_each_coupling_in_a_fresh_process(tiny_checkpoint, capsys):
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--slices", "3", "--image-size", "16",
                 "--steps", "2", "--views", "6", "--data", "phantom3d"]) == 0
    r = _bench_lines(capsys.readouterr().out)
    assert r["memory"] == "ru_maxrss of a fresh process per coupling"
    for c in ("none", "ztv"):
        assert float(r[f"{c}_peak_rss_mib"]) >= float(r[f"{c}_setup_rss_mib"]) > 10
        assert float(r[f"{c}_seconds"]) > 0
