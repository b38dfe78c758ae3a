"""NCSN++ and the score wrapper."""
import pytest
import torch

from scoreinv import config as C
from scoreinv.nets.layers import FIRResample
from scoreinv.nets.ncsnpp import NCSNpp, build_network
from scoreinv.score import ScoreModel, build_model
from scoreinv.sde import VESDE, VPSDE


def tiny(**kw):
    args = dict(image_size=16, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    args.update(kw)
    return NCSNpp(**args)


@pytest.mark.parametrize("prog,prog_in,rb", [("output_skip", "input_skip", "biggan"), ("residual", "residual", "biggan"),
                                             ("none", "none", "ddpm")])
def test_shapes_and_variants(prog, prog_in, rb):
    net = tiny(progressive=prog, progressive_input=prog_in, resblock_type=rb, init_scale=1.0)
    x = torch.randn(3, 1, 16, 16)
    y = net(x, torch.randn(3))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_fir_resampling_preserves_constants_and_shapes():
    x = torch.full((1, 2, 8, 8), 3.0)
    d = FIRResample(up=False)(x)
    u = FIRResample(up=True)(x)
    assert d.shape == (1, 2, 4, 4) and u.shape == (1, 2, 16, 16)
    assert torch.allclose(d[..., 1:-1, 1:-1], torch.full_like(d[..., 1:-1, 1:-1], 3.0))
    assert torch.allclose(u[..., 2:-2, 2:-2], torch.full_like(u[..., 2:-2, 2:-2], 3.0))


def test_paper_preset_builds_paper_architecture():
    cfg = C.load_config("lidc320")
    assert cfg.model.ch_mult == [1, 1, 2, 2, 2, 2, 2] and cfg.model.attn_resolutions == [20]
    net = build_network(cfg.model, cfg.data.image_size)
    # 7 levels, 2 res blocks each, attention only at 20x20 (level 4), NCSN++ with FIR
    assert len(net.down) == 7 and all(len(b) == 2 for b in net.down)
    assert set(net.up_attn.keys()) == {"4"}
    n = sum(p.numel() for p in net.parameters())
    assert 2e6 < n < 2e7


def _gaussian_net_edm(m, s, sd):
    """An F that makes the EDM-preconditioned model exact for data N(m, s²) per pixel."""
    class F(torch.nn.Module):
        def forward(self, x_in, log_sigma):
            sigma = torch.exp(log_sigma).reshape(-1, 1, 1, 1).double()
            c_in = 1 / torch.sqrt(sigma ** 2 + sd ** 2)
            y = x_in.double() / c_in
            d = (s ** 2 * y + sigma ** 2 * m) / (s ** 2 + sigma ** 2)  # exact posterior mean
            c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
            c_out = sigma * sd / torch.sqrt(sigma ** 2 + sd ** 2)
            return ((d - c_skip * y) / c_out).float()
    return F()


@pytest.mark.parametrize("sde", [VESDE(0.01, 30.0), VPSDE()])
def test_edm_preconditioning_gives_the_exact_gaussian_score(sde):
    m, s, sd = 0.4, 0.3, 0.5
    model = ScoreModel(_gaussian_net_edm(m, s, sd), sde, "edm", sd)
    t = torch.tensor([0.05, 0.5, 0.9], dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4)
    a, b = sde.marginal_coeffs(t)
    a, b = a.reshape(-1, 1, 1, 1), b.reshape(-1, 1, 1, 1)
    exact = -(x.double() - a * m) / (a ** 2 * s ** 2 + b ** 2)
    assert torch.allclose(model.score(x, t).double(), exact, rtol=1e-4, atol=1e-4)
    # Tweedie denoiser equals the posterior mean of x0
    den = model.denoise(x, t).double()
    post = (s ** 2 * x.double() / a + (b / a) ** 2 * m) / (s ** 2 + (b / a) ** 2)
    assert torch.allclose(den, post, rtol=1e-4, atol=1e-4)


def test_paper_scaling_divides_by_sigma():
    class One(torch.nn.Module):
        def forward(self, x, c):
            return torch.ones_like(x)
    sde = VESDE(0.01, 30.0)
    model = ScoreModel(One(), sde, "paper")
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    s = model.score(torch.zeros(2, 1, 2, 2), t)
    assert torch.allclose(s[:, 0, 0, 0], (1 / sde.sigma(t)).float())


def test_build_model_from_cpu_preset_runs():
    cfg = C.load_config("ct64", ["model.nf=8", "data.image_size=16", "model.attn_resolutions=[4]"])
    model = build_model(cfg)
    out = model.score(torch.rand(2, 1, 16, 16), torch.tensor([0.1, 0.9]))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
