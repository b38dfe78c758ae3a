"""Fan-beam CT: adjointness, agreement with exact ellipse line integrals, FBP (full and short scan)."""
import math

import numpy as np
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import real_inner
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.ellipses import ellipse_line_integrals, rasterize_ellipses, shepp_logan_ellipses
from scoreinv.physics.fanbeam import FanBeamCT
from scoreinv.physics.geometry import FanGeometry, dense_angles


def rel(a, b):
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def psnr(ref, x):
    return float(10 * torch.log10(1.0 / ((x.double() - ref.double()) ** 2).mean()))


@pytest.mark.parametrize("detector", ["equiangular", "flat"])
def test_adjointness(detector):
    g = torch.Generator().manual_seed(0)
    op = FanBeamCT(FanGeometry(20, dense_angles(15, 2 * math.pi) + 0.2, detector=detector,
                               pixel_size=1.5, center=(9.0, 10.5)))
    x = torch.rand(2, 1, 20, 20, generator=g)
    y = torch.randn(2, *op.meas_shape, generator=g)
    lhs, rhs = real_inner(op(x), y), real_inner(x, op.adjoint(y))
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4 * float(lhs.abs().max()))


@pytest.mark.parametrize("detector", ["equiangular", "flat"])
def test_matches_exact_ellipse_integrals_on_a_fine_grid(detector):
    geo = FanGeometry(24, dense_angles(12, 2 * math.pi), detector=detector, pixel_size=2.0)
    exact = ellipse_line_integrals(shepp_logan_ellipses(), geo, subsamples=8)
    errs = []
    for up in (1, 4):
        x = rasterize_ellipses(shepp_logan_ellipses(), 24 * up, supersample=4).float()
        errs.append(rel(FanBeamCT(geo.refine(up))(x), exact))
    assert errs[1] < 0.01 and errs[1] < errs[0] / 4


@pytest.mark.parametrize("detector", ["equiangular", "flat"])
def test_fbp_full_and_short_scan(detector):
    n = 48
    x = rasterize_ellipses(shepp_logan_ellipses(), n, supersample=4).float()
    ref = psnr(x, ParallelBeamCT(n).fbp(ParallelBeamCT(n)(x)))
    op = FanBeamCT(FanGeometry(n, dense_angles(2 * n, 2 * math.pi), detector=detector))
    full = op.fbp(op(x))
    assert psnr(x, full) > ref - 1.0
    assert abs(float(full.sum() / x.sum()) - 1) < 0.01
    fan = 2 * float(np.abs(op.geometry.fan_angles()).max())
    arc = math.pi + fan + 0.1
    views = int(round(arc / (2 * math.pi) * 2 * n))
    short = FanBeamCT(op.geometry.with_angles(np.arange(views) * arc / views))
    assert psnr(x, short.fbp(short(x))) > psnr(x, full) - 1.0


def test_fbp_rejects_too_short_scan_and_bad_inputs():
    op = FanBeamCT(FanGeometry(16, dense_angles(20, math.pi)))
    with pytest.raises(ScoreinvError, match="180"):
        op.fbp(torch.zeros(1, *op.meas_shape))
    full = FanBeamCT(16)
    with pytest.raises(ScoreinvError, match="filter"):
        full.fbp(torch.zeros(1, *full.meas_shape), "nope")
    with pytest.raises(ScoreinvError, match="size"):
        full(torch.zeros(1, 1, 15, 15))
    with pytest.raises(ScoreinvError, match="inside"):
        FanGeometry(16, [0.0], source_distance=5.0)
    with pytest.raises(ScoreinvError, match="detector"):
        FanGeometry(16, [0.0], detector="curved")
