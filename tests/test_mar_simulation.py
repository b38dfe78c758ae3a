"""MAR simulation on a small CT-like image, the metal trace, LI, and the MAR operator."""
import math

import numpy as np
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import real_inner
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.mar import (MarOperator, mar_ct, mar_keep, mar_measurement, mar_pixel_size, metal_trace,
                                  simulate_mar)
from scoreinv.physics.mar_metal import implant_mask
from scoreinv.physics.mar_spectra import hu_to_mu, hu_to_unit, unit_to_hu

N = 40


def _body(n=N):
    """A water ellipse with a bone ring and a soft-tissue insert, in the [0, 1] scale."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    hu = np.full((n, n), -1000.0)
    r = (xx / 0.85) ** 2 + (yy / 0.7) ** 2
    hu[r < 1] = 0.0
    hu[(r < 0.55) & (r > 0.4)] = 1200.0
    hu[(xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.02] = 60.0
    return torch.tensor(hu_to_unit(hu), dtype=torch.float32)[None, None]


@pytest.fixture(scope="module")
def scan():
    x = _body()
    ct = mar_ct(N)
    metal = implant_mask("rod", (N, N), (0.25, -0.3), mar_pixel_size(N) / 10, angle=0.6, length_cm=1.2,
                         width_cm=0.25)[None, None]
    return x, ct, metal, simulate_mar(x, ct, metal=metal, generator=torch.Generator().manual_seed(0))


def _psnr_outside(a, b, metal):
    a, b = a.clamp(0, 1).clone(), b.clamp(0, 1).clone()
    a[metal], b[metal] = 0, 0
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_geometry_matches_paper():
    ct = mar_ct(64)
    g = ct.geometry
    assert g.n_views == 64 and g.n_det == math.ceil(math.sqrt(2) * 64)
    assert g.pixel_size == pytest.approx(0.3 * 512 / 64)
    assert g.n_det * g.det_spacing == pytest.approx(math.sqrt(2) * 64 * g.pixel_size)  # the diagonal


def test_outputs_shapes_and_ranges(scan):
    x, ct, metal, r = scan
    for im in (r.artifact_image, r.li_image, r.poly_image, r.ground_truth):
        assert im.shape == (1, 1, N, N) and torch.isfinite(im).all()
    assert r.sinogram.shape == r.metal_trace.shape == (1, N, ct.geometry.n_det)
    assert torch.equal(r.metal_mask, metal)
    # the metal is far brighter than bone in the artifact image (titanium ≈ 11 500 HU)
    assert float(r.artifact_image[metal].mean()) > 1.5
    # the no-metal scan reproduces the image well (noise + beam hardening only)
    assert _psnr_outside(r.poly_image, x, metal) > 30


def test_metal_trace_covers_implant_projection(scan):
    x, ct, metal, r = scan
    g = ct.geometry
    iy, ix = metal[0, 0].nonzero(as_tuple=True)
    h = (N - 1) / 2
    px, py = (ix.double() - h) * g.pixel_size, (h - iy.double()) * g.pixel_size
    th = torch.as_tensor(g.angles)
    s = px[:, None] * th.cos() + py[:, None] * th.sin()  # (P, V) detector coordinate of each metal pixel
    k = torch.round(s / g.det_spacing + (g.n_det - 1) / 2).long()
    views = torch.arange(g.n_views).expand_as(k)
    assert bool(r.metal_trace[0][views, k].all())
    # and the trace is not everything: rays far from the implant are off it
    assert 0.02 < float(r.metal_trace.float().mean()) < 0.5


def test_li_beats_metal_artifact_image(scan):
    x, ct, metal, r = scan
    ma, li = _psnr_outside(r.artifact_image, x, metal), _psnr_outside(r.li_image, x, metal)
    assert li > ma + 2, (ma, li)  # measured: 26.7 vs 29.7 dB
    # LI only changes the trace
    assert torch.equal(r.li_sinogram[~r.metal_trace], r.sinogram[~r.metal_trace])


def test_mar_measurement_is_linear_in_image():
    x = _body()
    ct = mar_ct(N)
    p = ct.forward(hu_to_mu(unit_to_hu(x.double()))) / 10  # monochromatic line integrals (μ·cm)
    assert torch.allclose(mar_measurement(ct, p), ct.forward(x), rtol=1e-4, atol=1e-4)


def test_mar_operator_adjoint_and_masking(scan):
    x, ct, metal, r = scan
    keep = mar_keep(r.metal_trace, n_views=10)
    assert int(keep.any(-1).sum()) <= 10 and not bool((keep & r.metal_trace).any())
    op = MarOperator(ct, keep)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 1, N, N, generator=g, dtype=torch.float64)
    v = torch.randn(1, *op.meas_shape, generator=g, dtype=torch.float64)
    lhs, rhs = real_inner(op.forward(u), v), real_inner(u, op.adjoint(v))
    assert torch.allclose(lhs, rhs, rtol=1e-4)
    assert bool((op.forward(u)[~keep] == 0).all())
    with pytest.raises(ScoreinvError, match="per sample"):
        op.forward(torch.rand(2, 1, N, N))
    with pytest.raises(ScoreinvError, match="keep"):
        MarOperator(ct, torch.ones(3, 3, dtype=torch.bool))
    shared = MarOperator(ct, keep[0])
    assert shared.forward(torch.rand(3, 1, N, N)).shape == (3, *ct.meas_shape)


def test_sparse_view_mar_and_errors():
    x = _body()
    r = simulate_mar(x, n_views=12, n_implants=2, generator=torch.Generator().manual_seed(3))
    assert r.metal_mask.any() and r.li_image.shape == (1, 1, N, N)
    with pytest.raises(ScoreinvError, match="square"):
        simulate_mar(torch.rand(1, 1, 8, 10))
    with pytest.raises(ScoreinvError, match="metal"):
        simulate_mar(x, metal=torch.zeros(1, 1, N, N, dtype=torch.bool))
    with pytest.raises(ScoreinvError, match="ct operator"):
        simulate_mar(x, ct=ParallelBeamCT(16))
    with pytest.raises(ScoreinvError, match="NaN"):
        simulate_mar(torch.full((1, 1, N, N), float("nan")))


def test_metal_trace_helper():
    ct = ParallelBeamCT(16)
    m = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    assert not metal_trace(ct, m).any()
    m[0, 0, 8, 8] = True
    t = metal_trace(ct, m)
    assert bool(t.any(-1).all())  # every view sees the pixel
    assert int(t.sum(-1).max()) <= 3  # a pixel covers at most ~√2 bins
