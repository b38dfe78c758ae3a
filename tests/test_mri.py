"""Single-coil and multi-coil MRI operators: unitarity, adjointness, decomposition, errors."""
import numpy as np
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import real_inner
from scoreinv.physics.masks import make_mask
from scoreinv.physics.mri import CartesianMRI, fft2c, ifft2c, kspace_rms
from scoreinv.physics.sense import (SenseMRI, birdcage_maps, calibration_width, check_coil_maps,
                                    estimate_coil_maps)


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_fft2c_matches_numpy_and_is_unitary():
    x = torch.randn(2, 12, 10, dtype=torch.float64, generator=_gen())
    k = fft2c(x)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.allclose(k.numpy(), ref, atol=1e-12)
    assert torch.allclose(k.abs().pow(2).sum(), x.pow(2).sum())
    assert torch.allclose(ifft2c(k).real, x, atol=1e-12)
    # DC at (H//2, W//2)
    assert torch.allclose(fft2c(torch.ones(12, 10, dtype=torch.float64))[6, 5].real, torch.tensor(np.sqrt(120.)))


@pytest.mark.parametrize("complex_image", [False, True])
def test_cartesian_adjoint(complex_image):
    mask = make_mask("random", (16, 12), 3, seed=1)
    op = CartesianMRI(mask, complex_image=complex_image)
    x = torch.randn(3, 1, 16, 12, generator=_gen(1), dtype=torch.float64)
    if complex_image:
        x = torch.complex(x, torch.randn(3, 1, 16, 12, generator=_gen(2), dtype=torch.float64))
    y = torch.randn(3, 16, 12, dtype=torch.complex128, generator=_gen(3))
    lhs, rhs = real_inner(op.forward(x), y), real_inner(x, op.adjoint(y))
    assert torch.allclose(lhs, rhs, rtol=1e-4)
    assert op.adjoint(y).is_complex() == complex_image


def test_cartesian_decomposition_and_projection():
    mask = make_mask("equispaced", (16, 16), 4)
    op = CartesianMRI(mask)
    x = torch.rand(2, 1, 16, 16, generator=_gen(4))
    # A = P(Λ) T, T_inv(T x) = x
    assert torch.allclose(op.forward(x), op.restrict(op.T(x)))
    assert torch.allclose(op.T_inv(op.T(x)), x, atol=1e-6)
    # measured entries zero off the mask
    assert bool((op.forward(x)[:, ~mask] == 0).all())
    # λ = 1 projection: replace the measured entries, transform back -> A x' = y exactly
    y = op.forward(torch.rand(2, 1, 16, 16, generator=_gen(5)))
    z = op.T(x)
    m = op.mask
    xp = op.T_inv(op.embed(y) * m + z * ~m)
    # real part kept: A x' equals the Hermitian-symmetric part of y; y from a real image is one
    assert torch.allclose(op.forward(xp), y, atol=1e-5)
    assert op.has_decomposition


def test_cartesian_float32_device_dtype():
    op = CartesianMRI(make_mask("radial", (8, 8), 2))
    y = op.forward(torch.rand(1, 1, 8, 8))
    assert y.dtype == torch.complex64 and y.shape == (1, 8, 8)
    assert op.adjoint(y).dtype == torch.float32


def test_cartesian_errors():
    mask = make_mask("equispaced", (16, 16), 4)
    with pytest.raises(ScoreinvError, match="does not fit"):
        CartesianMRI(mask, image_shape=(16, 12))
    with pytest.raises(ScoreinvError, match="0 or 1"):
        CartesianMRI(torch.full((4, 4), 0.5))
    with pytest.raises(ScoreinvError, match="samples no"):
        CartesianMRI(torch.zeros(4, 4))
    op = CartesianMRI(mask)
    with pytest.raises(ScoreinvError, match="16, 16"):
        op.forward(torch.rand(1, 1, 8, 8))
    with pytest.raises(ScoreinvError, match="NaN"):
        op.forward(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(ScoreinvError, match="complex image"):
        op.forward(torch.rand(1, 1, 16, 16, dtype=torch.complex64))
    with pytest.raises(ScoreinvError, match="expected"):
        op.adjoint(torch.zeros(1, 8, 8, dtype=torch.complex64))
    # 1-D column mask is expanded to rows
    col = CartesianMRI(mask[0], image_shape=(10, 16))
    assert col.mask.shape == (10, 16)


def test_kspace_rms():
    y = torch.zeros(2, 4, 4, dtype=torch.complex64)
    m = torch.zeros(4, 4, dtype=torch.bool)
    m[:, 1] = True
    y[0][m] = 3.0
    y[1][m] = 4j
    y[:, 0, 0] = 100  # off the mask: ignored
    assert torch.allclose(kspace_rms(y, m), torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize("mask", ["random", "equispaced"])
def test_complex_gaussian_noise_at_256(mask):
    """simulate_mri at 256: noise only on the sampled columns, E|n|^2 = sigma^2 with sigma = level x the
    RMS of the sampled k-space, real and imaginary parts independent with equal variance."""
    from scoreinv.tasks import simulate_mri
    x = torch.rand(2, 1, 256, 256, generator=_gen(7), dtype=torch.float64)
    clean = simulate_mri(x, _gen(8), mask, 8.0)
    noisy = simulate_mri(x, _gen(8), mask, 8.0, noise=0.05)         # same seed: the same mask
    assert torch.equal(clean.op.mask, noisy.op.mask) and int(noisy.op.mask[0].sum()) == 32
    n = noisy.y - clean.y
    m = noisy.op.mask
    assert bool((n[:, ~m] == 0).all())
    sigma = 0.05 * kspace_rms(clean.y, m)
    assert torch.allclose(torch.tensor(noisy.noise["sigma"], dtype=torch.float64), sigma, rtol=1e-2)
    got = (n[:, m].abs() ** 2).mean(1).sqrt()                        # 8192 samples per image
    assert torch.allclose(got, sigma, rtol=0.03)
    re, im = n[:, m].real, n[:, m].imag
    assert abs(float(re.var() / im.var()) - 1) < 0.06 and abs(float((re * im).mean() / re.var())) < 0.03


@pytest.mark.parametrize("complex_image", [False, True])
def test_sense_adjoint_and_lstsq(complex_image):
    maps = birdcage_maps(4, (12, 12), dtype=torch.complex128)
    assert torch.allclose(maps.abs().pow(2).sum(0), torch.ones(12, 12, dtype=torch.float64))
    op = SenseMRI(maps, make_mask("random", (12, 12), 2, center_fraction=0.2, seed=3),
                  complex_image=complex_image)
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64, generator=_gen(6))
    if complex_image:
        x = x + 1j * torch.randn(2, 1, 12, 12, dtype=torch.float64, generator=_gen(7))
    y = torch.randn(2, 4, 12, 12, dtype=torch.complex128, generator=_gen(8))
    assert torch.allclose(real_inner(op.forward(x), y), real_inner(x, op.adjoint(y)), rtol=1e-4)
    # hard data consistency through the generic CG solve: A x' = A x_true
    yt = op.forward(x)
    xs = op.lstsq(yt, torch.zeros_like(x), reg=0.0, iters=150, tol=1e-12)
    assert torch.linalg.vector_norm(op.forward(xs) - yt) < 1e-3 * torch.linalg.vector_norm(yt)


def test_sense_fully_sampled_adjoint_inverts():
    maps = birdcage_maps(3, (10, 10))
    op = SenseMRI(maps, torch.ones(10, 10))
    x = torch.rand(1, 1, 10, 10)
    assert torch.allclose(op.adjoint(op.forward(x)), x, atol=1e-5)  # Σ|S_c|² = 1


def test_sense_errors():
    with pytest.raises(ScoreinvError, match="does not fit"):
        SenseMRI(birdcage_maps(4, (12, 10)), torch.ones(12, 12))
    with pytest.raises(ScoreinvError, match=r"\(C, H, W\)"):
        SenseMRI(torch.ones(12, 12, dtype=torch.complex64), torch.ones(12, 12))
    with pytest.raises(ScoreinvError, match="NaN"):
        check_coil_maps(torch.full((2, 4, 4), float("nan")))
    with pytest.raises(ScoreinvError, match="n_coils"):
        birdcage_maps(0, (4, 4))


def test_estimate_coil_maps_close_to_true_maps():
    h = w = 48
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = ((xx ** 2 / 0.7 + yy ** 2 / 0.5) < 1).double() * (1.0 + 0.2 * xx)  # smooth-ish object
    true = birdcage_maps(6, (h, w), dtype=torch.complex128)
    mask = make_mask("random", (h, w), 3, center_fraction=0.25, seed=0)
    calib = calibration_width(mask)
    assert calib == round(w * 0.25)
    k = fft2c(true * img) * mask
    est = estimate_coil_maps(k, calib)
    inner = (xx ** 2 / 0.7 + yy ** 2 / 0.5) < 0.6  # well inside the object
    err = (est - true).abs().pow(2).sum(0).sqrt()[inner]
    assert float(err.median()) < 0.05 and float(err.max()) < 0.2
    with pytest.raises(ScoreinvError, match="calib"):
        estimate_coil_maps(k, 0)
