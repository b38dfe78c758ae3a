"""Poisson CT noise and complex Gaussian MRI noise: distributions, seeding, validation."""
import math

import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.noise import add_complex_gaussian, add_poisson_noise, poisson_counts


def test_poisson_counts_mean_and_variance():
    p = torch.full((4, 50_000), 1.0)
    c = poisson_counts(p, 1000.0, torch.Generator().manual_seed(0)).double()
    lam = 1000 * math.exp(-1.0)
    n = c.numel()
    assert abs(float(c.mean()) - lam) < 5 * math.sqrt(lam / n)
    # sample variance of a Poisson law: Var = λ, its standard error ≈ λ sqrt(2 / n)
    assert abs(float(c.var()) - lam) < 5 * lam * math.sqrt(2 / n)


def test_electronic_noise_and_scatter_add_variance():
    p = torch.full((2, 100_000), 2.0)
    g = torch.Generator().manual_seed(1)
    c = poisson_counts(p, 500.0, g, scatter=20.0, electronic_sigma=7.0).double()
    lam = 500 * math.exp(-2.0) + 20
    assert abs(float(c.mean()) - lam) < 0.5
    assert float(c.var()) == pytest.approx(lam + 49.0, rel=0.03)


def test_log_transform_unbiased_at_high_dose_and_clamped_at_zero():
    p = torch.linspace(0.0, 3.0, 64).repeat(200, 1)
    noisy = add_poisson_noise(p, 1e6, torch.Generator().manual_seed(2))
    assert noisy.shape == p.shape and noisy.dtype == p.dtype
    assert float((noisy - p).mean().abs()) < 1e-3
    # expected std of -log(counts/I0) ≈ 1/sqrt(I0 e^{-p})
    sd = (noisy - p).std(0)
    want = 1 / torch.sqrt(1e6 * torch.exp(-p[0]))
    assert float(((sd - want).abs() / want).max()) < 0.3
    # photon starvation: zero counts become one count, p̃ = log(I0)
    starved = add_poisson_noise(torch.full((1, 100), 40.0), 10.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(starved, torch.full((1, 100), math.log(10.0)))


def test_seeding():
    p = torch.rand(2, 30)
    a = add_poisson_noise(p, 100.0, torch.Generator().manual_seed(5))
    b = add_poisson_noise(p, 100.0, torch.Generator().manual_seed(5))
    c = add_poisson_noise(p, 100.0, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_complex_gaussian():
    y = torch.zeros(3, 200, 200, dtype=torch.complex64)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    out = add_complex_gaussian(y, sigma, torch.Generator().manual_seed(0))
    for i, s in enumerate(sigma.tolist()):
        assert float(out[i].real.std()) == pytest.approx(s, rel=0.02)
        assert float(out[i].imag.std()) == pytest.approx(s, rel=0.02)
        assert abs(float(out[i].real.mean())) < 0.02 * s
    mask = torch.zeros(200, 200, dtype=torch.bool)
    mask[:, ::4] = True
    m = add_complex_gaussian(y, 1.0, torch.Generator().manual_seed(0), mask=mask)
    assert float(m[:, ~mask].abs().max()) == 0 and float(m[:, mask].abs().min()) > 0
    a = add_complex_gaussian(y, 1.0, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, add_complex_gaussian(y, 1.0, torch.Generator().manual_seed(9)))


def test_bad_inputs():
    with pytest.raises(ScoreinvError, match="NaN"):
        add_poisson_noise(torch.tensor([[float("nan")]]), 100.0)
    with pytest.raises(ScoreinvError, match="i0"):
        add_poisson_noise(torch.zeros(1, 3), -5.0)
    with pytest.raises(ScoreinvError, match="Generator"):
        add_poisson_noise(torch.zeros(1, 3), 10.0, generator=42)
    with pytest.raises(ScoreinvError, match="electronic_sigma"):
        add_poisson_noise(torch.zeros(1, 3), 10.0, electronic_sigma=-1.0)
    with pytest.raises(ScoreinvError, match="complex"):
        add_complex_gaussian(torch.zeros(1, 4), 0.1)
    with pytest.raises(ScoreinvError, match="sigma"):
        add_complex_gaussian(torch.zeros(2, 4, dtype=torch.complex64), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ScoreinvError, match="sigma"):
        add_complex_gaussian(torch.zeros(2, 4, dtype=torch.complex64), -0.1)
    with pytest.raises(ScoreinvError, match="mask"):
        add_complex_gaussian(torch.zeros(2, 4, dtype=torch.complex64), 0.1, mask=torch.ones(5, dtype=torch.bool))
