"""Parallel-beam CT: geometry, adjointness, agreement with scikit-image / ASTRA, FBP, units, errors."""
import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import real_inner
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.geometry import (ParallelGeometry, dense_angles, limited_angles, sparse_view_angles,
                                       sparse_view_indices)


def phantom(n):
    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)


def psnr(ref, x):
    return 10 * math.log10(1.0 / float(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


# --- angle sets ------------------------------------------------------------------------
def test_sparse_view_indices_follow_reference_rule():
    for n, k in [(256, 23), (320, 10), (64, 7), (240, 60)]:
        np.testing.assert_array_equal(sparse_view_indices(n, k), np.round(np.linspace(0, n - 1, k)).astype(int))
    # round half to even, as NumPy (and the reference) does: linspace(0, 5, 3) = 0, 2.5, 5
    assert sparse_view_indices(6, 3).tolist() == [0, 2, 5]
    np.testing.assert_allclose(sparse_view_angles(6, 3), np.array([0, 2, 5]) * np.pi / 6)


def test_dense_and_limited_angles():
    np.testing.assert_allclose(dense_angles(4), [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
    a = limited_angles(5, np.pi / 2, start=0.1)
    np.testing.assert_allclose(np.diff(a), np.pi / 10)
    assert a[0] == pytest.approx(0.1) and a[-1] < 0.1 + np.pi / 2
    with pytest.raises(ScoreinvError):
        sparse_view_indices(10, 11)


def test_default_detector_covers_diagonal_with_parity_of_n():
    assert ParallelGeometry(256, dense_angles(4)).n_det == 364
    assert ParallelGeometry(255, dense_angles(4)).n_det == 361
    assert ParallelGeometry(32, dense_angles(4), det_spacing=2.0).n_det == 24


# --- operator --------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"pixel_size": 1.3, "det_spacing": 0.7}, {"center": (10.0, 13.5), "n_det": 31}])
def test_adjointness(kw):
    g = torch.Generator().manual_seed(0)
    op = ParallelBeamCT(ParallelGeometry(24, dense_angles(17) + 0.1, **kw))
    x = torch.rand(3, 1, 24, 24, generator=g)
    y = torch.randn(3, *op.meas_shape, generator=g)
    lhs, rhs = real_inner(op(x), y), real_inner(x, op.adjoint(y))
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4 * float(lhs.abs().max()))


def test_forward_matches_skimage_radon():
    n = 50  # skimage's detector (ceil(sqrt(2) n) = 71 bins) is centred on bin 35 = (71 - 1) / 2 as ours
    img = phantom(n)
    ang = dense_angles(40)
    sk = radon(img, np.degrees(ang), circle=False)        # rotates about pixel (n//2, n//2)
    op = ParallelBeamCT(ParallelGeometry(n, ang, n_det=sk.shape[0], center=(n // 2, n // 2)))
    ours = op(torch.from_numpy(img)[None, None])[0].numpy().T
    assert rel(ours, sk) < 0.01
    # and a wrong convention (mirrored detector) is clearly detected
    assert rel(ours[::-1], sk) > 0.05


def test_forward_matches_astra_strip():
    astra = pytest.importorskip("astra")
    n = 40
    img = phantom(n)
    ang = dense_angles(30)
    op = ParallelBeamCT(ParallelGeometry(n, ang))
    vg = astra.create_vol_geom(n, n)
    pg = astra.create_proj_geom("parallel", 1.0, op.geometry.n_det, ang)
    pid = astra.create_projector("strip", pg, vg)
    sid, ref = astra.create_sino(img, pid)
    astra.data2d.delete(sid)
    astra.projector.delete(pid)
    assert rel(op(torch.from_numpy(img)[None, None])[0].numpy(), ref) < 1e-4


def test_batch_dtype_and_gradient():
    op = ParallelBeamCT(16, dense_angles(9))
    x = torch.rand(3, 1, 16, 16)
    y = op(x)
    torch.testing.assert_close(y[1:2], op(x[1:2]))
    torch.testing.assert_close(op(x.double()).float(), y, rtol=1e-5, atol=1e-5)
    assert y.dtype == torch.float32 and op(x.double()).dtype == torch.float64
    w = torch.randn_like(y)
    xr = x.clone().requires_grad_(True)
    (op(xr) * w).sum().backward()
    torch.testing.assert_close(xr.grad, op.adjoint(w))


def test_units_same_object_on_finer_grid_gives_same_sinogram():
    g = ParallelGeometry(20, dense_angles(13) + 0.05, pixel_size=1.5, det_spacing=1.1)
    x = torch.rand(2, 1, 20, 20)
    xf = x.repeat_interleave(3, -1).repeat_interleave(3, -2)   # the same piecewise-constant object
    y, yf = ParallelBeamCT(g)(x), ParallelBeamCT(g.refine(3))(xf)
    torch.testing.assert_close(yf, y, rtol=1e-4, atol=1e-4)


def test_fbp_psnr_close_to_skimage_iradon():
    n = 64
    img = phantom(n)
    ang = dense_angles(64)
    sk = radon(img, np.degrees(ang), circle=False)
    op = ParallelBeamCT(ParallelGeometry(n, ang))
    y = op(torch.from_numpy(img)[None, None])
    for ours_name, sk_name in [("ramp", "ramp"), ("hann", "hann"), ("shepp-logan", "shepp-logan")]:
        ref = psnr(img, iradon(sk, np.degrees(ang), circle=False, filter_name=sk_name, output_size=n))
        got = psnr(img, op.fbp(y, ours_name)[0, 0].numpy())
        assert got > ref - 0.5, (ours_name, got, ref)
    # a window changes the result, and cosine lies between ramp and hann in smoothing
    r, c, h = (op.fbp(y, f) for f in ("ramp", "cosine", "hann"))
    assert float((r - c).abs().max()) > 1e-3 and float((c - h).abs().max()) > 1e-4


def test_fbp_scale_of_a_uniform_disk():
    n = 48
    t = (np.arange(n) + 0.5) / n * 2 - 1
    disk = ((t[None] ** 2 + t[:, None] ** 2) < 0.6 ** 2).astype(np.float32) * 0.7
    for px in (1.0, 0.4):
        op = ParallelBeamCT(ParallelGeometry(n, dense_angles(60), pixel_size=px))
        rec = op.fbp(op(torch.from_numpy(disk)[None, None]))[0, 0].numpy()
        inner = (t[None] ** 2 + t[:, None] ** 2) < 0.4 ** 2
        assert abs(rec[inner].mean() - 0.7) < 0.01


def test_sparse_view_constructor_and_select_views():
    op = ParallelBeamCT.sparse_view(32, 5)
    np.testing.assert_allclose(op.geometry.angles, dense_angles(32)[sparse_view_indices(32, 5)])
    full = ParallelBeamCT(32)
    sub = full.select_views(sparse_view_indices(32, 5))
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(sub(x), full(x)[:, sparse_view_indices(32, 5)])


def test_bad_inputs():
    with pytest.raises(ScoreinvError, match="1-D"):
        ParallelGeometry(16, np.zeros((3, 2)))
    with pytest.raises(ScoreinvError, match="NaN"):
        ParallelGeometry(16, [0.0, float("nan")])
    with pytest.raises(ScoreinvError):
        ParallelGeometry(16, [0.0], pixel_size=-1)
    op = ParallelBeamCT(16, dense_angles(5))
    with pytest.raises(ScoreinvError, match="size"):
        op(torch.zeros(1, 1, 17, 16))
    with pytest.raises(ScoreinvError):
        op(torch.zeros(16, 16))
    with pytest.raises(ScoreinvError, match="complex"):
        op(torch.zeros(1, 1, 16, 16, dtype=torch.complex64))
    y = op(torch.rand(1, 1, 16, 16))
    bad = y.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ScoreinvError, match="NaN"):
        op.fbp(bad)
    with pytest.raises(ScoreinvError, match="NaN"):
        op.adjoint(bad)
    with pytest.raises(ScoreinvError, match="shape"):
        op.adjoint(y[:, :3])
    with pytest.raises(ScoreinvError, match="filter"):
        op.fbp(y, "butterworth")
    with pytest.raises(ScoreinvError):
        op.fbp(y, cutoff=0.0)
