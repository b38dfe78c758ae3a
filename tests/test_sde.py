"""SDEs against closed forms (docs/design.md §2.1)."""
import math

import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.sde import SubVPSDE, VESDE, VPSDE, build_sde



@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_ve_sigma_and_marginal():
    sde = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(sde.sigma(t), torch.tensor([0.01, math.sqrt(0.01 * 50.0), 50.0]))
    x0 = torch.ones(3, 1, 2, 2)
    mean, std = sde.marginal_prob(x0, t)
    assert torch.equal(mean, x0) and torch.allclose(std, sde.sigma(t))


def test_ve_diffusion_integrates_to_marginal_variance():
    # d sigma^2/dt = g(t)^2  =>  int_0^t g^2 = sigma(t)^2 - sigma(0)^2
    sde = VESDE(0.01, 30.0)
    ts = torch.linspace(0, 1, 20001)
    _, g = sde.sde(torch.zeros(1), ts)
    integral = torch.trapezoid(g ** 2, ts)
    assert integral.item() == pytest.approx(30.0 ** 2 - 0.01 ** 2, rel=1e-5)


def test_ve_discretisation_telescopes():
    sde = VESDE(0.01, 30.0, N=100)
    ts = torch.linspace(1, 0, 101)[:-1]  # i/N grid
    _, G = sde.discretize(torch.zeros(100), ts)
    assert (G ** 2).sum().item() == pytest.approx(30.0 ** 2, rel=1e-6)


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE])
def test_vp_family_marginal_by_simulation(cls):
    """Euler–Maruyama of the forward SDE reproduces the closed-form mean and variance."""
    sde = cls(0.1, 20.0)
    g = torch.Generator().manual_seed(0)
    x = torch.full((20000,), 1.5)
    n = 2000
    for i in range(n):
        t = torch.full((1,), i / n)
        drift, diff = sde.sde(x, t)
        x = x + drift / n + diff * math.sqrt(1 / n) * torch.randn(x.shape, generator=g)
    a, b = sde.marginal_coeffs(torch.tensor([1.0]))
    assert x.mean().item() == pytest.approx(1.5 * a.item(), abs=0.03)
    # variance of x_1 given x_0: beta^2
    assert x.var().item() == pytest.approx(b.item() ** 2, rel=0.05)


def test_vp_marginals_closed_form():
    vp, sub = VPSDE(), SubVPSDE()
    t = torch.linspace(0.01, 1, 7)
    a, b = vp.marginal_coeffs(t)
    assert torch.allclose(a ** 2 + b ** 2, torch.ones_like(t))
    a2, b2 = sub.marginal_coeffs(t)
    assert torch.allclose(a2, a) and torch.allclose(b2, 1 - a ** 2)


def test_prior_sampling_scale():
    g = torch.Generator().manual_seed(1)
    x = VESDE(0.01, 30.0).prior_sampling((4000, 1, 4, 4), g, dtype=torch.float64)
    assert x.std().item() == pytest.approx(30.0, rel=0.02)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_probability_flow_ode_maps_prior_to_gaussian_data(name):
    """Data N(m, s²): exact score; integrating the probability-flow ODE backwards from the prior gives N(m, s²)."""
    m, s = 0.3, 0.2
    sde = build_sde(name, sigma_min=0.01, sigma_max=20.0)

    def score(x, t):
        a, b = sde.marginal_coeffs(t)
        a, b = a.reshape(-1, 1), b.reshape(-1, 1)
        return -(x - a * m) / (a ** 2 * s ** 2 + b ** 2)

    rev = sde.reverse(score, probability_flow=True)
    g = torch.Generator().manual_seed(0)
    x = sde.prior_sampling((5000, 1), g, dtype=torch.float64)
    a1, b1 = sde.marginal_coeffs(torch.tensor([1.0]))
    x = x * torch.sqrt(a1 ** 2 * s ** 2 + b1 ** 2) / (x.std()) + a1 * m  # exact p_1
    ts = torch.linspace(1.0, sde.eps, 2001)
    for i in range(2000):
        t = ts[i].expand(5000)
        drift, _ = rev.sde(x, t)
        x = x + drift * (ts[i + 1] - ts[i])
    assert x.mean().item() == pytest.approx(m, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=0.03)


def test_unknown_sde():
    with pytest.raises(ScoreinvError, match="unknown SDE"):
        build_sde("ode")
