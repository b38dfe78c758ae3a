"""Patch prior (nets/patch.py): tiling bookkeeping, training windows, and the score interface."""
import pytest
import torch
import torch.nn as nn

from scoreinv import config as C
from scoreinv.errors import ScoreinvError
from scoreinv.loss import dsm_loss
from scoreinv.nets.patch import PatchNet, position_grid
from scoreinv.score import build_model


class Probe(nn.Module):
    """A pixel-wise 'network' whose output reveals what it was given: a x + b u + c v, per pixel,
    scaled by the noise conditioning (so a wrong c_noise per patch shows too)."""

    def forward(self, x, c_noise):
        img, u, v = x[:, :1], x[:, 1:2], x[:, 2:3]
        return (2 * img + 10 * u + 100 * v) * c_noise.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("h,w", [(64, 64), (100, 72), (37, 130), (256, 256)])
def test_tiling_equals_whole_image_for_every_offset(h, w):
    net = PatchNet(Probe(), 16, max_patches=7)
    x = torch.randn(3, 1, h, w)
    c = torch.tensor([0.5, -1.0, 2.0])
    pos = position_grid(torch.arange(h), torch.arange(w), h, w)
    want = (2 * x + 10 * pos[0] + 100 * pos[1]) * c.reshape(-1, 1, 1, 1)
    offsets = set()
    for _ in range(12):
        state = net.offsets.get_state()
        offsets.add(tuple(int(v) for v in torch.randint(0, 16, (2,), generator=torch.Generator().set_state(state))))
        got = net(x, c)
        assert got.shape == x.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert len(offsets) > 3  # the offset changes from call to call


def test_positions_span_the_image():
    g = position_grid(torch.arange(4), torch.arange(8), 4, 8)
    assert g.shape == (2, 4, 8)
    torch.testing.assert_close(g[0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(g[1, 0, :2], torch.tensor([-0.875, -0.625]))
    assert torch.all(g[0] == g[0][:, :1]) and torch.all(g[1] == g[1][:1])


def test_crop_windows_match_the_image_and_its_positions():
    net = PatchNet(Probe(), 16)
    x = torch.randn(200, 1, 40, 50)
    patches, pos, inside = net.crop(x, torch.Generator().manual_seed(1))
    assert patches.shape == (200, 1, 16, 16) and pos.shape == (200, 2, 16, 16) and inside.shape == (200, 1, 16, 16)
    partial = 0
    for k in range(200):
        # row/column of each window pixel from its position channels
        r = torch.round((pos[k, 0] + 1) * 40 / 2 - 0.5).long()
        c = torch.round((pos[k, 1] + 1) * 50 / 2 - 0.5).long()
        ok = (r >= 0) & (r < 40) & (c >= 0) & (c < 50)
        assert torch.equal(ok, inside[k, 0].bool())
        assert torch.equal(patches[k, 0][ok], x[k, 0][r[ok], c[ok]])
        assert torch.all(patches[k, 0][~ok] == 0)
        partial += int(not ok.all())
    assert 0 < partial < 200   # windows hang over the edge sometimes, as on the sampling canvas


def _patch_cfg(**kw):
    sets = ["model.patch_size=16", "data.image_size=48", "model.nf=8", "model.ch_mult=[1,2]",
            "model.attn_resolutions=[]"] + [f"{k}={v}" for k, v in kw.items()]
    return C.load_config("ct64", sets)


def test_patch_model_scores_any_size_and_trains():
    cfg = _patch_cfg()
    model = build_model(cfg)
    assert model.patch_size == 16
    for h, w in [(48, 48), (33, 70)]:
        s = model.score(torch.rand(2, 1, h, w), torch.tensor([0.3, 0.6]))
        assert s.shape == (2, 1, h, w) and torch.isfinite(s).all()
    x0 = torch.rand(4, 1, 48, 48)
    loss = dsm_loss(model, x0, torch.Generator().manual_seed(0), "edm")
    loss.backward()
    assert torch.isfinite(loss) and model.net.inner.conv_in.weight.grad.abs().sum() > 0
    assert model.net.inner.conv_in.weight.shape[1] == 3   # image + two position channels


class Outside(nn.Module):
    """Output `big` on window pixels outside the image (|u| > 1 or |v| > 1), else the image."""

    def __init__(self, big):
        super().__init__()
        self.big = big

    def forward(self, x, c_noise):
        out = (x[:, 1:2].abs() > 1) | (x[:, 2:3].abs() > 1)
        return torch.where(out, torch.full_like(x[:, :1], self.big), x[:, :1])


def test_loss_ignores_pixels_outside_the_image():
    """What the network says outside the image cannot change the loss."""
    model = build_model(_patch_cfg())
    x0 = torch.rand(64, 1, 48, 48)
    losses = []
    for big in (0.0, 1e4):
        model.net.inner = Outside(big)
        losses.append(dsm_loss(model, x0, torch.Generator().manual_seed(5), "edm"))
    torch.testing.assert_close(losses[0], losses[1])
    model.net.inner = Outside(1e4)     # and the windows do reach outside: inside pixels differ
    model.net.crop = lambda x, g: (x[:, :, :16, :16], position_grid(torch.arange(-8, 8), torch.arange(16), 48, 48)
                                   .expand(x.shape[0], 2, 16, 16), torch.ones(x.shape[0], 1, 16, 16))
    assert dsm_loss(model, x0, torch.Generator().manual_seed(5), "edm") > 10 * losses[0]


def test_seeded_offsets_repeat():
    model = build_model(_patch_cfg())
    x = torch.rand(1, 1, 40, 40)
    model.reseed(3)
    a = model.score(x, torch.tensor([0.5]))
    b = model.score(x, torch.tensor([0.5]))
    model.reseed(3)
    assert torch.equal(model.score(x, torch.tensor([0.5])), a)
    assert not torch.equal(a, b)


def test_bad_patch_sizes_are_refused():
    with pytest.raises(ScoreinvError, match="model.patch_size"):
        C.load_config("ct64", ["model.patch_size=12"])
    with pytest.raises(ScoreinvError, match="model.patch_size"):
        C.load_config("ct64", ["model.patch_size=-8"])
