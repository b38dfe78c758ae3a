"""The 3-D TV baseline (tv3d, D31): the adjoint pair grad/div along z, convergence on its own objective,
z_weight 0 = 2-D TV slice by slice, volume labels, and fewer inter-slice stripes than 2-D TV."""
import math

import numpy as np
import pytest
import torch

from scoreinv.baselines import get_baseline, tv_recon
from scoreinv.baselines.tv import div, grad, objective, tv3d_recon, tv_value, z_weights
from scoreinv.errors import ScoreinvError
from scoreinv.metrics import zgrad_rmse
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.fourier_slice import FourierSliceCT
from scoreinv.physics.geometry import sparse_view_angles
from scoreinv.physics.mri import CartesianMRI

S = 16


def blocks(depth: int = 6) -> torch.Tensor:
    """A piecewise-constant 3-D phantom (depth, 1, S, S) in [0, 1]: a body, a box spanning slices 1-3 and
    a bar through every slice."""
    v = torch.zeros(depth, 1, S, S)
    v[:, :, 3:13, 2:14] = 0.4
    v[1:4, :, 5:10, 4:9] = 0.9
    v[:, :, 8:11, 10:13] = 0.7
    return v


def ct(views: int = 6) -> ParallelBeamCT:
    return ParallelBeamCT(S, np.asarray(sparse_view_angles(S, views)))


def noisy(op, x, level: float, seed: int = 0) -> torch.Tensor:
    """op(x) plus independent Gaussian noise per slice, `level` times the RMS of the data."""
    y = op.forward(x)
    g = torch.Generator().manual_seed(seed)
    return y + level * y.abs().pow(2).mean().sqrt() * torch.randn(y.shape, generator=g, dtype=y.dtype)


def test_div_is_the_negative_adjoint_of_grad_along_z_too():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 6, 7, generator=g, dtype=torch.float64)
    z = z_weights(5, 0.3, torch.tensor([0, 0, 0, 1, 1]))
    assert z.tolist() == pytest.approx([0.3, 0.3, 0.0, 0.3])          # no difference across the two volumes
    q = torch.randn(5, 1, 3, 6, 7, generator=g, dtype=torch.float64)
    q[-1, :, 2] = 0                                                     # the last slice has no z difference
    assert float((grad(x, z) * q).sum()) == pytest.approx(-float((x * div(q, z)).sum()), abs=1e-10)
    gz = grad(x, z)
    assert torch.allclose(gz[1, 0, 2], 0.3 * (x[2, 0] - x[1, 0])) and gz[2, 0, 2].abs().max() == 0
    assert torch.equal(grad(x)[:, :, :2], gz[:, :, :2])                 # in-plane part: the 2-D gradient
    flat = torch.ones(4, 1, 5, 5)
    assert tv_value(flat, z_weights(4, 1.0)).abs().max() == 0


@pytest.mark.parametrize("opname", ["ct", "fourier", "mri"])
def test_z_weight_zero_is_2d_tv_slice_by_slice(opname):
    x = blocks(4)
    mask = torch.zeros(S, S, dtype=torch.bool)
    mask[:, ::3] = True
    mask[:, S // 2 - 1:S // 2 + 2] = True
    op = {"ct": ct(), "fourier": FourierSliceCT(S, angles=np.asarray(sparse_view_angles(S, 6))),
          "mri": CartesianMRI(mask)}[opname]
    y = noisy(op, x, 0.05)
    kw = dict(weight=3e-3, iters=60, box=(0.0, 1.0))
    flat = tv3d_recon(op, y, z_weight=0.0, **kw)
    assert flat.method == "tv3d" and flat.iters == 60
    assert torch.equal(flat.x, tv_recon(op, y, **kw).x)                 # the same iterates, bit for bit
    one_by_one = torch.cat([tv_recon(op, y[k:k + 1], **kw).x for k in range(4)])
    assert torch.allclose(flat.x, one_by_one, atol=1e-5)


def test_tv3d_converges_on_its_objective_and_beats_every_other_candidate():
    """From zeros, more iterations give a lower value of (D31)'s problem; the result is below the value at
    the ground truth and at the 2-D TV reconstruction (both feasible points of the same problem)."""
    x_true = blocks()
    op = ct()
    y = noisy(op, x_true, 0.05)
    w, beta = 2e-3, 0.5
    z = z_weights(len(x_true), beta)
    vals = [objective(op, tv3d_recon(op, y, w, z_weight=beta, iters=n, box=(0, 1)).x, y, w, z)
            for n in (5, 40, 400)]
    assert vals[0] > vals[1] > vals[2]
    best = tv3d_recon(op, y, w, z_weight=beta, iters=1500, box=(0, 1)).x
    f_best = objective(op, best, y, w, z)
    assert f_best <= vals[2] * (1 + 1e-4)
    assert f_best < objective(op, x_true, y, w, z)
    assert f_best < objective(op, tv_recon(op, y, w, iters=1500, box=(0, 1)).x, y, w, z)
    assert float(best.min()) >= 0 and float(best.max()) <= 1


def test_tv3d_removes_slice_to_slice_noise_that_2d_tv_leaves():
    """Every slice measured with its own noise: 3-D TV (the registry's tv3d, box [0, 1] by default) has a
    smaller z-gradient error than 2-D TV at the same weight, and a volume label splits the batch into
    volumes that are solved as if alone."""
    x_true = blocks(8)
    op = ct(5)
    y = noisy(op, x_true, 0.1, seed=1)
    w = 3e-3
    two = get_baseline("tv")(op, y, weight=w, iters=300).x
    three = get_baseline("tv3d")(op, y, weight=w, z_weight=1.0, iters=300)
    assert three.method == "tv3d" and float(three.x.min()) >= 0 and float(three.x.max()) <= 1
    e2, e3 = float(zgrad_rmse(two, x_true)), float(zgrad_rmse(three.x, x_true))
    assert e3 < 0.8 * e2, (e3, e2)                                  # measured: 0.046 vs 0.065
    lab = torch.tensor([0] * 5 + [1] * 3)
    both = tv3d_recon(op, y, w, z_weight=1.0, volume=lab, iters=200, box=(0, 1)).x
    apart = torch.cat([tv3d_recon(op, y[:5], w, z_weight=1.0, iters=200, box=(0, 1)).x,
                       tv3d_recon(op, y[5:], w, z_weight=1.0, iters=200, box=(0, 1)).x])
    assert torch.allclose(both, apart, atol=1e-5)


def test_bad_tv3d_inputs_are_refused():
    op = ct()
    y = op.forward(blocks(3))
    with pytest.raises(ScoreinvError, match="z_weight"):
        tv3d_recon(op, y, 1e-3, z_weight=-1.0)
    with pytest.raises(ScoreinvError, match="z_weight"):
        tv3d_recon(op, y, 1e-3, z_weight=math.inf)
    with pytest.raises(ScoreinvError, match="expected 3 integers"):
        tv3d_recon(op, y, 1e-3, volume=torch.tensor([0, 1]))
    with pytest.raises(ScoreinvError, match="regularisation weight"):
        tv3d_recon(op, y)
