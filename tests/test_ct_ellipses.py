"""Analytic ellipse phantoms and simulation without the inverse crime."""
import math

import numpy as np
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.ellipses import (ellipse_line_integrals, rasterize_ellipses, shepp_logan_ellipses,
                                       simulate_without_inverse_crime)
from scoreinv.physics.fanbeam import FanBeamCT
from scoreinv.physics.fourier_slice import FourierSliceCT
from scoreinv.physics.geometry import FanGeometry, ParallelGeometry, dense_angles


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_disk_line_integral_closed_form():
    # disk of radius r (normalised), value v, centred: p(s) = 2 v sqrt(R² - s²) in mm, R = r N h / 2
    n, h, r, v = 20, 1.5, 0.5, 0.8
    g = ParallelGeometry(n, dense_angles(7), pixel_size=h)
    p = ellipse_line_integrals([[v, r, r, 0.0, 0.0, 0.3]], g)[0]
    big_r = r * n * h / 2
    s = g.det_positions
    want = 2 * v * np.sqrt(np.clip(big_r ** 2 - s ** 2, 0, None))
    np.testing.assert_allclose(p.numpy(), np.broadcast_to(want, p.shape), rtol=1e-12, atol=1e-12)


def test_rotated_offset_ellipse_matches_rotated_geometry():
    # rotating the ellipse by φ is the same as rotating the view angles by -φ... checked through
    # an elongated ellipse whose projection width at θ is 2 sqrt(a² cos²(θ-φ) + b² sin²(θ-φ))
    g = ParallelGeometry(64, np.array([0.0, 0.4, 1.1]), det_spacing=0.25, n_det=600)
    a, b, phi = 0.6, 0.2, 0.4
    p = ellipse_line_integrals([[1.0, a, b, 0.1, -0.2, phi]], g)[0].numpy()
    for i, th in enumerate(g.angles):
        width = (p[i] > 0).sum() * 0.25
        want = 2 * math.sqrt((a * math.cos(th - phi)) ** 2 + (b * math.sin(th - phi)) ** 2) * 32
        assert abs(width - want) <= 0.5
        area = p[i].sum() * 0.25                    # ∫ p ds = value × area (mm²)
        assert area == pytest.approx(math.pi * a * b * 32 * 32, rel=1e-3)


def test_parallel_analytic_vs_fine_discrete_projection():
    geo = ParallelGeometry(24, dense_angles(15), pixel_size=0.5, center=(11.0, 13.5))
    exact = ellipse_line_integrals(shepp_logan_ellipses(), geo, subsamples=8)
    x = rasterize_ellipses(shepp_logan_ellipses(), 24 * 4, supersample=4).float()
    assert rel(ParallelBeamCT(geo.refine(4))(x), exact) < 0.01


def test_rasterize_area_and_batch():
    e = torch.tensor([[[1.0, 0.5, 0.25, 0.2, 0.1, 0.7]], [[2.0, 0.3, 0.3, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    img = rasterize_ellipses(e, 64, supersample=4)
    assert img.shape == (2, 1, 64, 64)
    assert float(img[0].sum()) * (2 / 64) ** 2 == pytest.approx(math.pi * 0.5 * 0.25, rel=0.01)
    assert float(img[1].sum()) * (2 / 64) ** 2 == pytest.approx(2 * math.pi * 0.09, rel=0.01)
    # y points up: an ellipse centred at y0 = +0.5 lies in the top half (small row indices)
    top = rasterize_ellipses([[1.0, 0.2, 0.2, 0.0, 0.5, 0.0]], 32)
    assert float(top[0, 0, :16].sum()) > 0 and float(top[0, 0, 16:].sum()) == 0


@pytest.mark.parametrize("kind", ["parallel", "fan", "fourier"])
def test_simulation_without_inverse_crime(kind):
    n = 16
    if kind == "parallel":
        op = ParallelBeamCT(n, dense_angles(9))
    elif kind == "fan":
        op = FanBeamCT(FanGeometry(n, dense_angles(12, 2 * math.pi)))
    else:
        op = FourierSliceCT(n, dense_angles(9))
    def coarse(img):  # the same measurement made on the coarse grid
        return op.from_sinogram(ParallelBeamCT(op.geometry)(img)) if kind == "fourier" else op(img)

    const = torch.full((1, 1, n, n), 0.4)
    # a constant image is the same object on any grid: the same measurement (the fan-beam
    # footprint model is exact only to first order in pixel size, hence its looser bound)
    assert rel(simulate_without_inverse_crime(const, op, 2), coarse(const)) < (1e-3 if kind == "fan" else 1e-4)
    # a textured image is not: the data differ from the discrete model, but not wildly
    x = rasterize_ellipses(shepp_logan_ellipses(), n).float()
    d = rel(simulate_without_inverse_crime(x, op, 3), coarse(x))
    assert 1e-2 < d < 0.2


def test_bad_inputs():
    with pytest.raises(ScoreinvError, match="shape"):
        rasterize_ellipses(torch.zeros(3, 5), 8)
    with pytest.raises(ScoreinvError, match="semi-axes"):
        rasterize_ellipses([[1.0, 0.0, 0.2, 0, 0, 0]], 8)
    with pytest.raises(ScoreinvError, match="NaN"):
        ellipse_line_integrals([[1.0, 0.1, 0.2, float("nan"), 0, 0]], ParallelGeometry(8, [0.0]))
    op = ParallelBeamCT(8, dense_angles(3))
    with pytest.raises(ScoreinvError, match="upsample"):
        simulate_without_inverse_crime(torch.zeros(1, 1, 8, 8), op, 1)
    with pytest.raises(ScoreinvError, match="mode"):
        simulate_without_inverse_crime(torch.zeros(1, 1, 8, 8), op, 2, mode="lanczos")
    with pytest.raises(ScoreinvError, match="finer-grid"):
        simulate_without_inverse_crime(torch.zeros(1, 1, 8, 8), object(), 2)
