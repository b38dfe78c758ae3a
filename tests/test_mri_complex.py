"""Complex MR images with a smooth phase (docs/design.md §3.5): the phase-corrected operator
A' = P(Λ) fft2c diag(e^{iφ̂}) on real images, the phase estimate from the k-space centre, and the
task option that simulates it (`--phase smooth`)."""
import math

import numpy as np
import pytest
import torch

from scoreinv import tasks
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import real_inner
from scoreinv.physics.masks import make_mask
from scoreinv.physics.mri import CartesianMRI, PhasedMRI, centre_box, estimate_phase, fft2c, smooth_phase
from scoreinv.sampling.conditioning import Projection
from scoreinv.sde import VESDE


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _phantom(b=2, n=64, seed=0) -> torch.Tensor:
    """(B, 1, n, n) float64 magnitudes: smooth-edged discs of random brightness on a zero background."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, n, dtype=torch.float64),) * 2, indexing="ij")
    out = torch.zeros(b, 1, n, n, dtype=torch.float64)
    for i in range(b):
        for _ in range(6):
            c = 1.2 * torch.rand(2, generator=g, dtype=torch.float64) - 0.6
            r = 0.1 + 0.3 * float(torch.rand(1, generator=g))
            d = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2).sqrt()
            out[i, 0] += float(torch.rand(1, generator=g)) * torch.sigmoid((r - d) * n / 2)
    return (out / out.amax((-2, -1), keepdim=True)).clamp(0, 1)


def _measure(x, phi, mask):
    """k-space of the complex images |x| e^{iφ}: (B, H, W)."""
    return fft2c(x[:, 0] * torch.polar(torch.ones_like(phi), phi)) * mask


def test_smooth_phase_is_seeded_smooth_and_of_the_given_amplitude():
    a = smooth_phase(3, (64, 48), _gen(1))
    assert a.shape == (3, 64, 48) and a.dtype == torch.float32
    assert torch.equal(a, smooth_phase(3, (64, 48), _gen(1)))
    assert not torch.equal(a, smooth_phase(3, (64, 48), _gen(2)))
    span = a.flatten(1).amax(1) - a.flatten(1).amin(1)
    assert bool((span <= 2 * math.pi + 1e-5).all()) and bool((span >= math.pi * 0.95).all())   # |φ − φ0| reaches π
    assert float(a.diff(dim=1).abs().max()) < 0.5 and float(a.diff(dim=2).abs().max()) < 0.5  # smooth per pixel
    half = smooth_phase(3, (64, 48), _gen(1), amplitude=math.pi / 2).double()
    full = a.double()
    c = full[:, 32, 24:25].unsqueeze(-1)                                       # φ0 + a p(centre): same draws
    assert torch.allclose(half - half[:, 32, 24:25].unsqueeze(-1), (full - c) / 2, atol=1e-5)
    with pytest.raises(ScoreinvError, match="amplitude"):
        smooth_phase(1, (8, 8), _gen(), amplitude=4.0)


def test_phased_operator_adjoint_is_exact():
    mask = make_mask("random", (24, 20), 3, seed=1)
    phi = smooth_phase(3, (24, 20), _gen(2), dtype=torch.float64)
    op = PhasedMRI(mask, phi)
    x = torch.randn(3, 1, 24, 20, generator=_gen(3), dtype=torch.float64)
    y = torch.randn(3, 24, 20, generator=_gen(4), dtype=torch.complex128)
    assert torch.allclose(real_inner(op.forward(x), y), real_inner(x, op.adjoint(y)), rtol=1e-10, atol=1e-10)
    assert not op.adjoint(y).is_complex() and not op.has_decomposition
    assert bool((op.forward(x)[:, ~mask] == 0).all())


def test_zero_and_constant_phase_reduce_to_the_magnitude_operator():
    mask = make_mask("equispaced", (16, 16), 4)
    x = torch.rand(2, 1, 16, 16, generator=_gen(5), dtype=torch.float64)
    y = torch.randn(2, 16, 16, generator=_gen(6), dtype=torch.complex128)
    plain = CartesianMRI(mask)
    zero = PhasedMRI(mask, torch.zeros(16, 16, dtype=torch.float64))
    assert torch.allclose(zero.forward(x), plain.forward(x), atol=1e-12)
    assert torch.allclose(zero.adjoint(y), plain.adjoint(y), atol=1e-12)
    const = PhasedMRI(mask, torch.full((16, 16), 0.7, dtype=torch.float64))
    assert torch.allclose(const.forward(x), plain.forward(x) * complex(math.cos(0.7), math.sin(0.7)), atol=1e-12)


def test_with_the_exact_phase_the_magnitude_is_data_consistent_and_projection_reaches_the_data():
    """With φ̂ = φ the real magnitude |x| satisfies A'|x| = y, so the solvers' projection step (CG
    path, docs/design.md §2.6) keeps |x| and from any start reaches A' x' = y."""
    x = _phantom(2, 32)
    mask = make_mask("random", (32, 32), 4, seed=0)
    phi = smooth_phase(2, (32, 32), _gen(7), dtype=torch.float64)
    y = _measure(x, phi, mask)
    op = PhasedMRI(mask, phi)
    assert torch.allclose(op.forward(x), y, atol=1e-12)
    proj = Projection(op, y, VESDE(), lam=1.0, cg_iters=60)
    assert torch.allclose(proj.project(x, y), x, atol=1e-8)                  # already consistent: unchanged
    start = torch.rand(2, 1, 32, 32, generator=_gen(8), dtype=torch.float64)

    def residual(o, v):
        return (o.forward(v) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)

    # CG converges more slowly than at φ = 0 (A'ᵀA' has a spread spectrum; docs/design.md §3.5)
    assert bool((residual(op, proj.project(start, y)) < 5e-3).all()) and bool((residual(op, start) > 1).all())
    # the wrong (zero) phase cannot fit the same data with a real image
    wrong = Projection(PhasedMRI(mask, torch.zeros(32, 32, dtype=torch.float64)), y, VESDE(), lam=1.0, cg_iters=60)
    assert float(residual(wrong.op, wrong.project(start, y)).min()) > 0.05


@pytest.mark.parametrize("mask_kind,r,n", [("random", 4, 64), ("random", 8, 128), ("equispaced", 4, 256),
                                          ("equispaced", 8, 256)])
def test_estimated_phase_gives_nearly_the_true_phase_zero_filled_image(mask_kind, r, n):
    x = _phantom(3, n, seed=1)
    mask = make_mask(mask_kind, (n, n), r, seed=2)
    phi = smooth_phase(3, (n, n), _gen(9), dtype=torch.float64)
    y = _measure(x, phi, mask)
    est = estimate_phase(y, mask)
    inside = x[:, 0] > 0.2
    err = torch.angle(torch.polar(torch.ones_like(est), est - phi))           # wrapped difference
    assert float(err[inside].abs().mean()) < 0.1
    z_true = PhasedMRI(mask, phi).adjoint(y).abs()
    z_est = PhasedMRI(mask, est).adjoint(y).abs()
    assert float((z_est - z_true).norm() / z_true.norm()) < 0.05
    # and it is far better than ignoring the phase (the real part of the plain zero-filled image)
    z_none = CartesianMRI(mask).adjoint(y)
    assert float((z_none - x).norm()) > 2 * float((z_est - x).norm())


def test_centre_box_and_errors():
    assert centre_box(make_mask("random", (256, 256), 8, seed=0))[1] >= 10
    assert centre_box(make_mask("equispaced", (256, 256), 4)) == (256, 16)
    assert centre_box(make_mask("variable_density", (64, 64), 4, seed=0))[0] >= round(0.04 * 64)
    m = make_mask("equispaced", (32, 32), 8)            # the reference's rule: a centre band of round(0.128) = 0
    assert centre_box(m) == (0, 0)
    y = _measure(_phantom(1, 32), torch.zeros(1, 32, 32, dtype=torch.float64), m)
    with pytest.raises(ScoreinvError, match="fully sampled centre"):
        estimate_phase(y, m)
    with pytest.raises(ScoreinvError, match="complex"):
        estimate_phase(y.real, make_mask("random", (64, 64), 4, seed=0))
    mask = make_mask("random", (16, 16), 2, seed=0)
    with pytest.raises(ScoreinvError, match="phase: expected shape"):
        PhasedMRI(mask, torch.zeros(16, 12))
    with pytest.raises(ScoreinvError, match="real radians"):
        PhasedMRI(mask, torch.zeros(16, 16, dtype=torch.complex64))
    with pytest.raises(ScoreinvError, match="NaN"):
        PhasedMRI(mask, torch.full((16, 16), float("nan")))
    op = PhasedMRI(mask, torch.zeros(3, 16, 16))
    with pytest.raises(ScoreinvError, match="per image for 3 images"):
        op.forward(torch.rand(2, 1, 16, 16))
    with pytest.raises(ScoreinvError, match="complex image"):
        op.forward(torch.rand(3, 1, 16, 16, dtype=torch.complex64))


def test_task_option_simulates_and_builds_the_phase_corrected_problem():
    opts = tasks.task_options("mri", acceleration=4, mask="random", phase="smooth")
    assert opts.setting() == "R=4 mask=random phase=smooth noise=0" and opts.slug() == "R4-random-n0-phase"
    plain = tasks.task_options("mri", acceleration=4, mask="equispaced")
    assert "phase" not in plain.to_dict() and plain.slug() == "R4-equispaced-n0"
    assert tasks.task_options("mri", phase="none") == tasks.task_options("mri")
    with pytest.raises(ScoreinvError, match="--phase"):
        tasks.task_options("ct", phase="smooth")
    with pytest.raises(ScoreinvError, match="--phase"):
        tasks.task_options("mri", phase="random")
    x = _phantom(3, 64, seed=3).float()
    p = tasks.build_problem(x, opts, _gen(11))
    assert isinstance(p.op, PhasedMRI) and p.op.phase.shape == (3, 64, 64)
    phi = p.extras["true_phase"]
    assert torch.allclose(p.y, _measure(x.double(), phi.double(), p.op.mask).to(p.y.dtype), atol=1e-4)
    assert torch.allclose(p.op.phase, estimate_phase(p.y, p.op.mask))         # from the data only
    assert torch.allclose(p.naive, p.op.adjoint(p.y))
    again = tasks.build_problem(x, opts, _gen(11))
    assert torch.equal(again.y, p.y)
    # per-image phases follow the batch through slicing and repetition (eval's K-sample mean)
    part = tasks.slice_operator(p.op, slice(1, 3))
    assert torch.allclose(part.forward(x[1:3]), p.op.forward(x)[1:3])
    rep = tasks.repeat_operator(p.op, 2)
    assert torch.allclose(rep.forward(x.repeat(2, 1, 1, 1)), p.op.forward(x).repeat(2, 1, 1))
    with pytest.raises(ScoreinvError, match="single-coil"):
        tasks.simulate_mri(x, _gen(), "random", 4.0, coils=4, phase="smooth")


def test_simulate_phase_flag_checks(tmp_path):
    img = tmp_path / "img.npy"
    np.save(img, _phantom(1, 32).numpy()[:, 0].astype(np.float32))
    out = tmp_path / "o.npz"
    assert main(["simulate", "--task", "ct", "--phase", "smooth", "--input", str(img), "--out", str(out)]) == 2
    assert main(["simulate", "--task", "mri", "--phase", "smooth", "--coils", "2", "--input", str(img),
                 "--out", str(out)]) == 2
    assert main(["simulate", "--task", "mri", "--phase", "smooth", "--mask", "equispaced", "--acceleration", "8",
                 "--input", str(img), "--out", str(out)]) == 2                # centre band of 0 columns at 32
    assert not out.exists()


def test_simulate_phase_round_trip_and_reconstruct(tmp_path, tiny_checkpoint, capsys):
    """--phase smooth is stored in the measurement file (operator phased_mri with the estimated
    phase, extra_true_phase) and `reconstruct` solves with it."""
    from scoreinv.physics.measurements import load_measurements
    img = tmp_path / "img.npy"
    np.save(img, _phantom(2, 16, seed=4).numpy()[:, 0].astype(np.float32))
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "mri", "--phase", "smooth", "--mask", "random", "--acceleration", "2",
                 "--input", str(img), "--out", str(meas)]) == 0
    m = load_measurements(meas)
    op = m.operator()
    assert isinstance(op, PhasedMRI) and op.phase.shape == (2, 16, 16)
    assert torch.allclose(op.phase, estimate_phase(m.y, op.mask))
    phi = torch.as_tensor(m.extras["true_phase"])
    assert torch.allclose(m.y, _measure(m.ground_truth.double(), phi.double(), op.mask).to(m.y.dtype), atol=1e-4)
    assert torch.allclose(m.take(1).operator().phase, op.phase[1:2])
    out = tmp_path / "r.npy"
    assert len(m.noise["phase_misfit"]) == 2 and min(m.noise["phase_misfit"]) > 0       # σ_φ travels in the file
    capsys.readouterr()
    assert main(["reconstruct", "--checkpoint", tiny_checkpoint, "--measurements", str(meas), "--out", str(out),
                 "--solver", "dds", "--steps", "3", "--no-progress"]) == 0
    assert "final projection off" in capsys.readouterr().out        # phased data count as noisy
    r = np.load(out)
    assert r.shape[0] == 2 and np.isfinite(r).all()


def test_phase_misfit_measures_what_no_real_image_fits_and_keeps_the_data_step_from_fitting_it():
    """(D32): σ_φ tracks the misfit of the true magnitude seen through the estimated phase (and
    vanishes with the true phase); as σ_y it keeps DiffPIR's data step near the truth, where a
    noise-free σ_y makes the step fit the misfit (the brain2 failure: 11 dB below zero-filled)."""
    from scoreinv.sampling.conditioning import DiffPIRStep
    from scoreinv.sampling.inputs import measurement_sigma, phase_misfit
    from scoreinv.sampling.settings import noisy_level, noisy_record
    x = _phantom(3, 64, seed=3).float()
    p = tasks.build_problem(x, tasks.task_options("mri", acceleration=4, mask="random", phase="smooth"), _gen(11))
    op, y = p.op, p.y
    m = op.mask.float()
    true = ((op.forward(x) - y).abs() ** 2 * m).flatten(1).sum(1).div(m.sum()).sqrt().double()
    est = phase_misfit(op, y)
    assert bool((true > 0.01).all()) and torch.allclose(est, true, rtol=0.25)
    exact = phase_misfit(PhasedMRI(op.mask, p.extras["true_phase"]), y)
    assert bool((exact < 0.15 * true).all())
    assert torch.allclose(measurement_sigma({"model": "none"}, "mri", op, op, y), est)
    # simulate_mri stores σ_φ per slice in the noise record; a slice of the batch reads its rows
    assert torch.allclose(torch.tensor(p.noise["phase_misfit"], dtype=torch.float64), est)
    part = tasks.slice_operator(op, slice(1, 3))
    assert torch.allclose(measurement_sigma(p.noise, "mri", part, part, y[1:3], index=[1, 2]), est[1:3])
    assert torch.allclose(measurement_sigma({"model": "none"}, "mri", part, part, y[1:3]), est[1:3])
    loud = {"model": "gaussian", "sigma": 1.0}
    assert torch.equal(measurement_sigma(loud, "mri", op, op, y), torch.ones(3, dtype=torch.float64))
    plain = tasks.build_problem(x, tasks.task_options("mri", acceleration=4, mask="random"), _gen(11))
    assert torch.equal(measurement_sigma(plain.noise, "mri", plain.op, plain.op, plain.y), torch.zeros(3).double())

    def err(sigma_y):
        step = DiffPIRStep(op, y, None, sigma_y, lam=1.0, floor=1e-3, cg_iters=50)
        xp = step.prox(x, torch.full((3,), 0.02))
        return (xp - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert bool((err(0.0) > 0.1).all()) and bool((err(est) < 0.02).all())
    # the closing hard projection is off for phased data, as for noisy data
    assert noisy_level("mri", 0.0, "smooth") and not noisy_level("mri", 0.0, "none")
    assert noisy_record("mri", {"model": "none"}, phased=True) and not noisy_record("mri", {"model": "none"})
