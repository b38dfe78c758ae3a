"""The problem builder shared by eval/tune/demo (scoreinv.tasks) on small images."""
import numpy as np
import pytest
import torch

from scoreinv import tasks

from scoreinv.errors import ScoreinvError
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.fourier_slice import FourierSliceCT, fourier_from_parallel
from scoreinv.physics.geometry import dense_angles
from scoreinv.physics.mar import MarOperator
from scoreinv.physics.mri import CartesianMRI
from scoreinv.tasks import (DEFAULT_CT_OPERATOR, DEFAULT_CT_VIEWS, build_problem, repeat_operator,
                            task_options)


def _images(b=2, n=32):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    out = []
    for k in range(b):
        body = ((xx / (0.8 - 0.1 * k)) ** 2 + (yy / 0.6) ** 2 < 1).float()
        img = 0.25 * body + 0.2 * ((xx - 0.2) ** 2 + (yy + 0.1 * k) ** 2 < 0.05).float()
        out.append(img + 0.05 * torch.sin(4 * xx + k) * body)
    return torch.stack(out)[:, None].clamp(0, 1)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_options_defaults_and_errors():
    ct = task_options("ct")
    assert (ct.views, ct.ct_operator, ct.upsample, ct.noise) == (DEFAULT_CT_VIEWS, DEFAULT_CT_OPERATOR, 4, 0.0)
    mri = task_options("mri", acceleration=8)
    assert (mri.acceleration, mri.mask, mri.views) == (8.0, "equispaced", None)
    assert task_options("mar").views is None and task_options("mar", views=10).views == 10
    assert "R=8" in mri.setting() and mri.slug() == "R8-equispaced-n0"
    with pytest.raises(ScoreinvError, match="--acceleration.*does not apply to task 'ct'|--acceleration"):
        task_options("ct", acceleration=4)
    with pytest.raises(ScoreinvError, match="--views"):
        task_options("mri", views=10)
    with pytest.raises(ScoreinvError, match="unknown task"):
        task_options("pet")
    with pytest.raises(ScoreinvError, match="--noise"):
        task_options("ct", noise=-1)
    with pytest.raises(ScoreinvError, match="--mask"):
        task_options("mri", mask="spiral")
    with pytest.raises(ScoreinvError, match="--ct-operator"):
        task_options("ct", ct_operator="astra")
    with pytest.raises(ScoreinvError, match="--views"):
        task_options("ct", views=0)


def test_ct_radon_sparse_views_without_inverse_crime():
    x = _images()
    p = build_problem(x, task_options("ct", views=8, ct_operator="radon"), _g())
    assert isinstance(p.op, ParallelBeamCT) and p.op is p.baseline_op and p.y is p.baseline_y
    idx = np.round(np.linspace(0, 31, 8)).astype(int)   # the paper's rows of the dense set
    assert np.allclose(p.op.geometry.angles, dense_angles(32)[idx])
    assert p.y.shape == (2, 8, p.op.geometry.n_det)
    rel = float((p.y - p.op.forward(x)).norm() / p.y.norm())
    assert 1e-4 < rel < 0.05, rel                       # finer-grid data: close to, not equal to, A x
    assert torch.allclose(p.naive, p.op.fbp(p.y)) and p.naive_name == "FBP"
    assert p.noise["model"] == "none" and p.metal_mask is None


def test_ct_fourier_uses_the_same_sinogram_converted():
    x = _images()
    pr = build_problem(x, task_options("ct", views=8, ct_operator="radon"), _g(3))
    pf = build_problem(x, task_options("ct", views=8, ct_operator="fourier"), _g(3))
    assert isinstance(pf.op, FourierSliceCT) and isinstance(pf.baseline_op, ParallelBeamCT)
    assert torch.equal(pf.baseline_y, pr.baseline_y)
    assert torch.allclose(pf.y, fourier_from_parallel(pr.op, pr.y)[1])
    mismatch = float((pf.op.forward(x) - pf.y).norm() / pf.y.norm())
    assert 0.005 < mismatch < 0.3, mismatch             # conversion + inverse-crime mismatch


def test_ct_poisson_noise():
    x = _images()
    clean = build_problem(x, task_options("ct", views=8), _g(1))
    noisy = build_problem(x, task_options("ct", views=8, noise=1e4), _g(1))
    assert noisy.noise["model"] == "poisson" and noisy.noise["photons"] == 1e4
    rel = float((noisy.y - clean.y).norm() / clean.y.norm())
    assert 1e-3 < rel < 0.2, rel
    again = build_problem(x, task_options("ct", views=8, noise=1e4), _g(1))
    assert torch.equal(again.y, noisy.y)                # seeded


def test_mri_problem_and_noise_level():
    x = _images(n=24)
    p = build_problem(x, task_options("mri", acceleration=4, mask="random", noise=0.05), _g(2))
    assert isinstance(p.op, CartesianMRI) and p.y.shape == (2, 24, 24) and p.y.is_complex()
    resid = (p.y - p.op.forward(x))[:, p.op.mask]
    assert float(resid.abs().pow(2).mean().sqrt()) == pytest.approx(float(np.mean(p.noise["sigma"])), rel=0.3)
    assert torch.allclose(p.naive, p.op.adjoint(p.y)) and p.naive_name == "zero-filled"


def test_mar_problem_extras_and_repeat():
    x = _images(n=24)
    p = build_problem(x, task_options("mar", views=12), _g(4))
    assert isinstance(p.op, MarOperator)
    mm = p.metal_mask
    assert mm.shape == (2, 1, 24, 24) and mm.dtype == torch.bool and bool(mm.flatten(1).any(1).all())
    assert torch.equal(p.op.keep, ~p.extras["metal_trace"] & p.op.keep)
    assert bool((p.y[~p.op.keep] == 0).all())
    assert int(p.op.keep[0].any(-1).sum()) <= 12        # sparse-view MAR: measured views only
    assert torch.equal(p.naive, p.extras["artifact_image"])
    op2 = repeat_operator(p.op, 3)
    assert op2.keep.shape == (6, *p.op.keep.shape[1:])
    assert torch.allclose(op2.forward(x.repeat(3, 1, 1, 1)), p.op.forward(x).repeat(3, 1, 1))
    ct = build_problem(x, task_options("ct", views=6), _g())
    assert repeat_operator(ct.op, 3) is ct.op           # shared operators are reused


def test_build_problem_rejects_bad_images():
    with pytest.raises(ScoreinvError, match=r"\[0, 1\]"):
        build_problem(_images() * 3, task_options("ct", views=4), _g())
    with pytest.raises(ScoreinvError, match="square"):
        build_problem(torch.rand(1, 1, 16, 20), task_options("ct", views=4), _g())
    with pytest.raises(ScoreinvError, match="--views 40"):
        build_problem(_images(1), task_options("ct", views=40), _g())
    with pytest.raises(ScoreinvError, match="NaN"):
        build_problem(torch.full((1, 1, 16, 16), float("nan")), task_options("mri"), _g())
    with pytest.raises(ScoreinvError, match="TaskOptions"):
        build_problem(_images(1), "ct", _g())


def test_mri_coils_option_builds_a_sense_problem_and_is_recorded():
    """task_options(coils=C > 1): SENSE with C birdcage maps for every method; named in the setting and
    the record (a single coil leaves earlier records unchanged); refused with a smooth phase or for CT."""
    from scoreinv.physics.sense import SenseMRI
    opts = tasks.task_options("mri", acceleration=4, mask="random", coils=4)
    assert opts.setting() == "R=4 mask=random coils=4 noise=0" and opts.slug() == "R4-random-n0-c4"
    assert opts.to_dict()["coils"] == 4 and "coils" not in tasks.task_options("mri", coils=1).to_dict()
    assert tasks.task_options("mri", coils=1) == tasks.task_options("mri")
    x = torch.rand(2, 1, 32, 32)
    p = tasks.build_problem(x, opts, torch.Generator().manual_seed(0))
    assert isinstance(p.op, SenseMRI) and p.op.maps.shape[0] == 4 and p.y.shape == (2, 4, 32, 32)
    assert p.baseline_op is p.op and torch.allclose(p.naive, p.op.adjoint(p.y))
    # TaskOptions.decomposes says what build_problem's operator has (eval refuses ddrm by it)
    for o in (opts, tasks.task_options("mri", acceleration=4, mask="random"),
              tasks.task_options("mri", acceleration=4, mask="random", phase="smooth"),
              tasks.task_options("ct", views=6, ct_operator="fourier"), tasks.task_options("ct", views=6)):
        assert o.decomposes == tasks.build_problem(x, o, torch.Generator().manual_seed(0)).op.has_decomposition, o
    for bad in (dict(coils=0), dict(coils=2, phase="smooth")):
        with pytest.raises(ScoreinvError, match="--coils|--phase"):
            tasks.task_options("mri", **bad)
    with pytest.raises(ScoreinvError, match="--coils"):
        tasks.task_options("ct", coils=4)
