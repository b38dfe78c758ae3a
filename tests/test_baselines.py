"""Classical baselines on small operators built here (a dense matrix, a masked FFT) and on the
package's MRI operator: least-squares limits, TV/CS recovery, weight choice, registry, errors."""
import numpy as np
import pytest
import pywt
import torch

from scoreinv import baselines as B
from scoreinv import metrics as M
from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import LinearOperator, real_inner


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny mat-muls are dominated by BLAS thread hand-offs on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class DenseOp(LinearOperator):
    """y = M vec(x) for a dense (m, n) matrix; products by broadcasting (no BLAS threading)."""

    def __init__(self, m, shape):
        self.m, self.image_shape, self.meas_shape, self.name = m, tuple(shape), (m.shape[0],), "dense"

    def forward(self, x):
        return (self.check_image(x).flatten(1)[:, None, :] * self.m).sum(-1)

    def adjoint(self, y):
        return (self.check_measurement(y)[:, :, None] * self.m).sum(1).reshape(-1, 1, *self.image_shape)


class MaskedFFT(LinearOperator):
    """Centred orthonormal FFT restricted to a 2-D mask; real images, Re of the adjoint."""

    def __init__(self, mask):
        self.mask, self.image_shape, self.meas_shape, self.name = mask, tuple(mask.shape), tuple(mask.shape), "mfft"

    def forward(self, x):
        x = self.check_image(x)[:, 0]
        k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
        return k * self.mask

    def adjoint(self, y):
        y = torch.fft.ifftshift(self.check_measurement(y) * self.mask, dim=(-2, -1))
        return torch.fft.fftshift(torch.fft.ifft2(y, norm="ortho"), dim=(-2, -1)).real.unsqueeze(1)


def _lstsq(op, y):
    return torch.linalg.lstsq(op.m, y.T).solution.T.reshape(-1, 1, *op.image_shape)


def _gauss_system(seed=0, noise=0.05):
    g = _gen(seed)
    op = DenseOp(torch.randn(48, 16, generator=g, dtype=torch.float64), (4, 4))
    x = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    return op, x, op.forward(x) + noise * torch.randn(2, 48, generator=g, dtype=torch.float64)


def _variable_density_mask(n=32, seed=0):
    g = _gen(seed)
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    kr = ((ii - n // 2) ** 2 + (jj - n // 2) ** 2).float().sqrt()
    return (torch.rand(n, n, generator=g) < (0.9 * torch.exp(-kr / 6)).clamp(0.1, 1)) | (kr < 3)


def _piecewise_constant(n=32):
    img = torch.zeros(n, n)
    img[6:26, 8:24] = 0.4
    img[10:16, 11:17] = 0.9
    img[18:23, 14:21] = 0.7
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    img[((ii - 20) ** 2 + (jj - 10) ** 2) < 16] = 0.6
    return img[None, None]


# --- operator norm, CGLS, SIRT ------------------------------------------------------------
def test_operator_norm_matches_spectral_norm_and_is_cached():
    op, _, _ = _gauss_system()
    est = B.operator_norm(op, dtype=torch.float64)
    assert est == pytest.approx(float(torch.linalg.matrix_norm(op.m, 2)), rel=1e-5)
    op.m = op.m * 2                          # operators are immutable by contract: cached value
    assert B.operator_norm(op, dtype=torch.float64) == est
    assert B.operator_norm(MaskedFFT(_variable_density_mask())) == pytest.approx(1.0, rel=1e-5)


def test_cgls_reaches_least_squares_solution():
    op, _, y = _gauss_system()
    rec = B.cgls(op, y, iters=100, tol=1e-10)
    assert torch.allclose(rec.x, _lstsq(op, y), atol=1e-8)
    assert 16 <= rec.iters <= 20 and rec.method == "cgls"    # n = 16 unknowns: ~n steps
    few = B.cgls(op, y, iters=3)
    assert few.iters == 3 and (few.x - _lstsq(op, y)).abs().max() > 1e-3


def test_cgls_complex_measurements_minimum_norm_least_squares():
    op = MaskedFFT(_variable_density_mask(16, seed=3))
    x = torch.rand(2, 1, 16, 16, generator=_gen(4), dtype=torch.float64)
    y = op.forward(x) + 0.05 * torch.randn(2, 16, 16, generator=_gen(5), dtype=torch.complex128)
    # the real matrix of A (real images -> complex data as real and imaginary parts), by columns
    cols = op.forward(torch.eye(256, dtype=torch.float64).reshape(256, 1, 16, 16)).reshape(256, -1)
    a = torch.cat([cols.real, cols.imag], 1).T
    b = torch.cat([(y * op.mask).reshape(2, -1).real, (y * op.mask).reshape(2, -1).imag], 1).T
    ref = (torch.linalg.pinv(a) @ b).T.reshape(2, 1, 16, 16)   # CG from 0: minimum-norm solution
    rec = B.cgls(op, y, iters=100, tol=1e-10)
    assert torch.allclose(rec.x, ref, atol=1e-8) and rec.iters < 100


def _nonneg_system(seed=1):
    g = _gen(seed)
    m = torch.rand(40, 9, generator=g, dtype=torch.float64) * (torch.rand(40, 9, generator=g, dtype=torch.float64) < 0.4)
    op = DenseOp(m, (3, 3))
    x = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    return op, x, op.forward(x)


@pytest.mark.parametrize("nonneg", [True, False])
def test_sirt_converges_on_consistent_nonnegative_system(nonneg):
    op, x, y = _nonneg_system()
    rec = B.sirt(op, y, iters=400, nonneg=nonneg)
    assert rec.iters == 400
    assert torch.allclose(rec.x, _lstsq(op, y), atol=1e-7) and torch.allclose(rec.x, x, atol=1e-7)
    assert (B.sirt(op, y, iters=5).x - x).abs().max() > 1e-3


def test_sirt_rejects_signed_and_complex_operators():
    op, _, y = _gauss_system()
    with pytest.raises(ScoreinvError, match="nonnegative"):
        B.sirt(op, y)
    mop = MaskedFFT(_variable_density_mask(16))
    with pytest.raises(ScoreinvError, match="complex"):
        B.sirt(mop, mop.forward(torch.rand(1, 1, 16, 16)))


# --- TV -----------------------------------------------------------------------------------
def test_grad_div_adjoint_and_tv_value():
    g = _gen(5)
    x = torch.randn(2, 1, 7, 9, generator=g, dtype=torch.float64)
    q = torch.randn(2, 1, 2, 7, 9, generator=g, dtype=torch.float64)
    assert torch.allclose(real_inner(B.grad(x), q), -real_inner(x, B.div(q)))
    step = torch.zeros(1, 1, 6, 8)
    step[..., 3:] = 1.0                      # one vertical edge of height 6
    assert float(B.tv_value(step)) == pytest.approx(6.0)
    assert float(B.tv_value(torch.ones(1, 1, 5, 5))) == 0.0


def test_tv_weight_to_zero_approaches_least_squares():
    op, _, y = _gauss_system()
    ls = _lstsq(op, y)
    errs = [float((B.tv_recon(op, y, w, iters=500).x - ls).abs().max()) for w in (1e-2, 1e-3, 1e-6)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4


def test_tv_positive_weight_lowers_tv_and_respects_box():
    op, _, y = _gauss_system(noise=0.3)
    ls = _lstsq(op, y)
    tv_small, tv_big = (B.tv_value(B.tv_recon(op, y, w, iters=500).x) for w in (1e-2, 1e-1))
    assert (tv_big < tv_small).all() and (tv_small < B.tv_value(ls)).all()
    boxed = B.tv_recon(op, y, 1e-2, iters=100, box=(0.2, 0.7))
    assert float(boxed.x.min()) >= 0.2 and float(boxed.x.max()) <= 0.7 and boxed.iters == 100
    early = B.tv_recon(op, y, 1e-2, iters=2000, tol=1e-3)
    assert early.iters < 2000


def test_tv_recovers_piecewise_constant_image_far_better_than_zero_filling():
    x = _piecewise_constant()
    op = MaskedFFT(_variable_density_mask())           # ~18 % of k-space
    y = op.forward(x)
    zf = B.zero_filled(op, y)
    tv = B.tv_recon(op, y, 1e-3, iters=400, box=(0, 1))
    p_zf, p_tv = float(M.psnr(zf.x, x)), float(M.psnr(tv.x, x))
    assert p_zf < 25 and p_tv > p_zf + 15             # measured: 22.5 dB vs 51.8 dB


# --- wavelets -----------------------------------------------------------------------------
def test_wavelet_transform_matches_pywt_and_is_orthogonal():
    x = torch.randn(2, 1, 32, 48, generator=_gen(6), dtype=torch.float64)
    wt = B.OrthoWavelet2d((32, 48), "db4")
    c = wt.forward(x)
    ref = pywt.wavedec2(x[1, 0].numpy(), "db4", mode="periodization", level=wt.levels)
    ha, wa = wt.approx_shape
    assert np.allclose(c[1, 0, :ha, :wa].numpy(), ref[0], atol=1e-12)
    for ch, cv, cd in ref[1:]:
        h, w = ch.shape
        blk = c[1, 0].numpy()
        assert np.allclose(blk[h:2 * h, :w], ch, atol=1e-12)
        assert np.allclose(blk[:h, w:2 * w], cv, atol=1e-12)
        assert np.allclose(blk[h:2 * h, w:2 * w], cd, atol=1e-12)
    assert torch.allclose(wt.inverse(c), x, atol=1e-12)
    assert torch.allclose(c.pow(2).sum(), x.pow(2).sum())
    with pytest.raises(ScoreinvError, match="not orthogonal"):
        B.OrthoWavelet2d((32, 32), "bior2.2")
    with pytest.raises(ScoreinvError, match="divisible"):
        B.OrthoWavelet2d((30, 32), "db4", levels=2)


def test_cs_wavelet_recovers_wavelet_sparse_image():
    n = 32
    g = _gen(7)
    wt = B.OrthoWavelet2d((n, n), "db4")
    c = torch.zeros(1, 1, n, n)
    c.view(-1)[torch.randperm(n * n, generator=g)[:40]] = torch.randn(40, generator=g)
    c[..., :8, :8] = 3 + 0.5 * torch.randn(8, 8, generator=g)
    x = wt.inverse(c)
    x = (x - x.min()) / (x.max() - x.min())
    op = MaskedFFT(_variable_density_mask())
    y = op.forward(x)
    p_zf = float(M.psnr(B.zero_filled(op, y).x, x))
    rec = B.cs_wavelet(op, y, 1e-3, iters=200, spin=False)     # FISTA on the fixed-W objective
    p_cs = float(M.psnr(rec.x, x))
    assert rec.iters == 200 and p_cs > p_zf + 12      # measured: 22.5 dB vs 50.6 dB


def test_cycle_spinning_removes_the_block_artefacts_of_a_decimated_wavelet():
    x = torch.cat([_piecewise_constant(), _piecewise_constant().flip(-1)])
    op = MaskedFFT(_variable_density_mask())
    y = op.forward(x)
    plain = B.cs_wavelet(op, y, 3e-3, iters=150, spin=False).x
    spun = B.cs_wavelet(op, y, 3e-3, iters=150, seed=1).x
    again = B.cs_wavelet(op, y, 3e-3, iters=150, seed=1).x
    torch.testing.assert_close(spun, again, rtol=0, atol=0)                  # the shifts come from the seed
    assert float(M.psnr(spun, x).mean()) > float(M.psnr(plain, x).mean()) + 0.5


# --- weight choice and registry -----------------------------------------------------------
def test_choose_weight_picks_the_grid_optimum_on_validation_data():
    op = MaskedFFT(_variable_density_mask())
    x = torch.cat([_piecewise_constant(), _piecewise_constant().flip(-1)])
    y = op.forward(x) + 0.02 * torch.randn(2, 32, 32, generator=_gen(8), dtype=torch.complex64)
    grid = (1e-5, 1e-3, 3e-2)
    ch = B.choose_weight("tv", op, y, x, grid=grid, iters=150)
    by_hand = [float(M.psnr(B.tv_recon(op, y, w, iters=150, box=(0, 1)).x, x).mean()) for w in grid]
    assert ch.scores == pytest.approx(tuple(by_hand), abs=1e-9)
    assert ch.weight == grid[int(np.argmax(by_hand))] and ch.param == "weight" and ch.metric == "psnr"
    assert ch.at_edge == (ch.weight in (grid[0], grid[-1]))
    it = B.choose_weight("cgls", op, y, x, grid=(1, 3), metric="nmse")
    assert it.param == "iters" and it.weight == [1, 3][int(np.argmin(it.scores))]
    with pytest.raises(ScoreinvError, match="no parameter"):
        B.choose_weight("zero_filled", op, y, x, grid=grid)
    with pytest.raises(ScoreinvError, match="measurements but"):
        B.choose_weight("tv", op, y, x[:1], grid=grid)


def test_registry_names_iterations_and_errors():
    assert set(B.BASELINES) >= {"fbp", "sirt", "cgls", "tv", "zero_filled", "cs_wavelet", "cs_tv", "li", "nmar"}
    with pytest.raises(ScoreinvError, match="cs_wavelet"):
        B.get_baseline("tikhonov")
    op = MaskedFFT(_variable_density_mask(16))
    y = op.forward(torch.rand(2, 1, 16, 16, generator=_gen(9)))
    assert B.get_baseline("zero_filled")(op, y).iters == 0
    rec = B.get_baseline("cs_tv")(op, y, weight=1e-3, iters=7)
    assert rec.method == "cs_tv" and rec.iters == 7 and rec.weight == 1e-3
    assert float(rec.x.min()) >= 0 and float(rec.x.max()) <= 1            # default box [0, 1]
    assert B.get_baseline("cs_wavelet")(op, y, weight=1e-3, iters=4, levels=1).iters == 4
    with pytest.raises(ScoreinvError, match="regularisation weight"):
        B.get_baseline("tv")(op, y)
    with pytest.raises(ScoreinvError, match="no filtered back-projection"):
        B.get_baseline("fbp")(op, y)
    with pytest.raises(ScoreinvError, match="CT operator"):
        B.get_baseline("li")(op, y, trace=torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(ScoreinvError, match="measurement"):
        B.tv_recon(op, y[:, :8], 1e-3)
    with pytest.raises(ScoreinvError, match="iters"):
        B.cgls(op, y, iters=0)
    with pytest.raises(ScoreinvError, match="weight"):
        B.tv_recon(op, y, -1.0)
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ScoreinvError, match="NaN"):
        B.cgls(op, bad)


# --- the package's own operators ----------------------------------------------------------
def _shepp_logan(n):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize
    return torch.from_numpy(resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)).float()[None, None]


def test_sparse_view_ct_fbp_sirt_tv():
    from scoreinv.physics.ct import ParallelBeamCT
    x = _shepp_logan(48)
    op = ParallelBeamCT.sparse_view(48, 12)
    y = op.forward(x)
    f = B.get_baseline("fbp")(op, y, filter="hann")
    assert f.iters == 0 and torch.equal(f.x, op.fbp(y, filter="hann"))
    p_fbp = float(M.psnr(B.fbp(op, y).x, x))
    s = B.sirt(op, y, iters=200)
    p_sirt = float(M.psnr(s.x, x))
    p_tv = float(M.psnr(B.get_baseline("tv")(op, y, weight=1e-4, iters=300).x, x))
    assert float(s.x.min()) >= 0
    assert p_sirt > p_fbp + 4 and p_tv > p_fbp + 6      # measured: 22.3, 30.8, 32.7 dB


def test_mri_operator_zero_filled_and_cs_tv():
    from scoreinv.physics.masks import make_mask
    from scoreinv.physics.mri import CartesianMRI
    op = CartesianMRI(make_mask("random", (32, 32), 3.0, seed=0))
    x = _piecewise_constant()
    y = op.forward(x)
    zf = B.get_baseline("zero_filled")(op, y)
    assert torch.equal(zf.x, op.zero_filled(y))
    tv = B.get_baseline("cs_tv")(op, y, weight=1e-3, iters=300)
    assert float(M.psnr(tv.x, x)) > float(M.psnr(zf.x, x)) + 8


def _metal_scan(n=40, n_views=None):
    from scoreinv.physics.mar import mar_ct, mar_pixel_size, simulate_mar
    from scoreinv.physics.mar_metal import implant_mask
    from scoreinv.physics.mar_spectra import hu_to_unit
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    hu = np.full((n, n), -1000.0)
    r = (xx / 0.85) ** 2 + (yy / 0.7) ** 2
    hu[r < 1] = 0.0
    hu[(r < 0.55) & (r > 0.4)] = 1200.0                   # a bone ring
    x = torch.tensor(hu_to_unit(hu), dtype=torch.float32)[None, None]
    ct = mar_ct(n)
    metal = implant_mask("rod", (n, n), (0.25, -0.3), mar_pixel_size(n) / 10, angle=0.6, length_cm=1.2,
                         width_cm=0.25)[None, None]
    return x, ct, metal, simulate_mar(x, ct, metal=metal, n_views=n_views, generator=_gen(0))


def test_li_and_nmar_on_simulated_metal_scan():
    from scoreinv.physics.mar import MarOperator, mar_keep, mar_measurement
    x, ct, metal, r = _metal_scan()
    y = mar_measurement(ct, r.sinogram)                  # measurements of the [0, 1]-scale image
    li = B.get_baseline("li")(ct, y, trace=r.metal_trace)
    # the simulator's own LI image differs only by LI of the affine offset's projection
    assert li.iters == 0 and (li.x - r.li_image).abs().max() < 5e-3
    op = MarOperator(ct, mar_keep(r.metal_trace))
    assert torch.allclose(B.li(op, y * op.keep).x, li.x, atol=1e-6)          # trace defaults to ~keep
    nm = B.nmar(ct, y, r.metal_trace, metal_mask=metal)
    scores = {k: float(M.psnr_mar(v, x, metal_mask=metal))
              for k, v in (("artifact", r.artifact_image), ("li", li.x), ("nmar", nm.x))}
    assert scores["nmar"] > scores["li"] > scores["artifact"] + 2    # measured: 26.7, 29.7, 29.9 dB
    # a warm start on MAR data begins from NMAR, the stronger classical image
    from scoreinv.sampling.inputs import classical
    assert float(M.psnr_mar(classical(op, y * op.keep), x, metal_mask=metal)) > scores["li"]
    with pytest.raises(ScoreinvError, match="metal trace"):
        B.li(ct, y)
    with pytest.raises(ScoreinvError, match="broadcast"):
        B.li(ct, y, trace=r.metal_trace[..., :5])


def test_li_sparse_view_mar_operator_uses_measured_views_only():
    from scoreinv.physics.mar import MarOperator, mar_keep, mar_measurement
    x, ct, metal, r = _metal_scan(n_views=13)
    op = MarOperator(ct, mar_keep(r.metal_trace, n_views=13))
    y = mar_measurement(ct, r.sinogram) * op.keep
    li = B.li(op, y)
    assert (li.x - r.li_image).abs().max() < 5e-3


def test_complex_image_mri_tv_and_wavelet():
    from scoreinv.physics.masks import make_mask
    from scoreinv.physics.mri import CartesianMRI
    op = CartesianMRI(make_mask("variable_density", (32, 32), 2.0, seed=0), complex_image=True)
    x = _piecewise_constant()
    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    y = op.forward((x * torch.exp(1j * 0.05 * (ii + jj).float())).to(torch.complex64))   # smooth phase
    p_zf = float(M.psnr(B.zero_filled(op, y).x.abs(), x))
    tv = B.get_baseline("cs_tv")(op, y, weight=1e-3, iters=300)        # no box for complex images
    cs = B.get_baseline("cs_wavelet")(op, y, weight=1e-4, iters=300)
    assert tv.x.is_complex() and cs.x.is_complex()
    assert float(M.psnr(tv.x.abs(), x)) > p_zf + 15 and float(M.psnr(cs.x.abs(), x)) > p_zf + 2  # 24.6, 55, 29 dB
    with pytest.raises(ScoreinvError, match="complex-image"):
        B.tv_recon(op, y, 1e-3, box=(0, 1))


def test_operator_norm_of_per_sample_operator_is_the_largest_sample_norm():
    from scoreinv.physics.mar import MarOperator, mar_ct
    ct = mar_ct(16)
    keep = torch.ones(2, *ct.meas_shape, dtype=torch.bool)
    keep[0, :, :12] = False                    # sample 0 keeps few entries, sample 1 all
    pair = MarOperator(ct, keep)
    with pytest.raises(ScoreinvError, match="per sample"):
        B.operator_norm(pair)
    est = B.operator_norm(pair, batch=2)
    singles = [B.operator_norm(MarOperator(ct, keep[i])) for i in range(2)]
    assert est == pytest.approx(max(singles), rel=1e-4) and singles[0] < singles[1]
    x = torch.rand(2, 1, 16, 16, generator=_gen(10))
    rec = B.tv_recon(pair, pair.forward(x), 1e-4, iters=5)
    assert rec.x.shape == (2, 1, 16, 16)
