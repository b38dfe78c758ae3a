"""Validation during training: noise levels, fixed noise, the JSONL log and its place in a run."""
import json
import math

import pytest
import torch
import torch.nn as nn

from scoreinv import config as C
from scoreinv.errors import ScoreinvError
from scoreinv.score import ScoreModel
from scoreinv.sde import VESDE, VPSDE
from scoreinv.train import train
from scoreinv.validation import ValidationLog, Validator, time_of_sigma
from tinymodel import TINY, RandomImages


class ZeroNet(nn.Module):
    """F = 0: with the paper's output scaling the score is 0 and the denoiser returns x_t / α."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x, log_sigma):
        return x * self.w


class FixedImages:
    """A validation split of 8 smooth 16x16 images in [0, 1]."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
        return (0.5 + 0.4 * torch.sin(3 * xx + i) * torch.cos(2 * yy - i)).reshape(1, 16, 16)


def _images():
    return torch.stack([FixedImages()[i] for i in range(8)])


@pytest.mark.parametrize("sde", [VESDE(0.01, 30.0), VPSDE()])
def test_time_of_sigma_inverts_the_noise_level(sde):
    for s in (0.02, 0.5, 10.0):
        t = time_of_sigma(sde, s)
        assert float(sde.sigma_eff(torch.tensor([t], dtype=torch.float64))) == pytest.approx(s, rel=1e-9)
    with pytest.raises(ScoreinvError, match="val.sigmas"):
        time_of_sigma(VESDE(0.01, 30.0), 100.0)


def test_denoising_error_uses_the_stated_noise_levels_and_fixed_noise():
    sde = VESDE(0.01, 30.0)
    model = ScoreModel(ZeroNet(), sde, "paper").eval()
    v = Validator(_images(), sde, [0.1, 1.0, 5.0], n_images=6, task="none", batch=4)
    out = v.denoise_mse(model)
    z2 = float((v.z ** 2).mean())
    for s in (0.1, 1.0, 5.0):  # D(x_0 + σ z) = x_0 + σ z: the error is σ² mean(z²)
        assert out[f"denoise_mse_{s:g}"] == pytest.approx(s ** 2 * z2, rel=1e-5)
    assert out["denoise_mse_mean"] == pytest.approx(z2 * (0.01 + 1 + 25) / 3, rel=1e-5)
    assert v.denoise_mse(model) == out  # the same noise every time
    assert Validator(_images(), sde, [1.0], 6, "none").z.equal(v.z)


def test_reconstruction_psnr_is_repeatable():
    sde = VESDE(0.01, 30.0)
    v = Validator(_images(), sde, [1.0], 2, task="ct", recon_images=2, recon_steps=3)
    model = ScoreModel(ZeroNet(), sde, "paper").eval()
    a, b = v.recon_psnr(model), v.recon_psnr(model)
    assert a == b and math.isfinite(a)
    assert "ct views=16" in v.task
    assert "recon_psnr" not in Validator(_images(), sde, [1.0], 2, task="ct", recon_images=0)(model)


def test_log_drops_records_after_the_resumed_step(tmp_path):
    p = tmp_path / "validation.jsonl"
    p.write_text("".join(json.dumps({"step": s, "x": 1.0}) + "\n" for s in (0, 100, 200)))
    log = ValidationLog(p, resume_step=150)
    assert log.steps() == {0, 100}
    log.add({"step": 200, "x": 2.0})
    assert [json.loads(line)["x"] for line in p.read_text().splitlines()] == [1.0, 1.0, 2.0]


def test_a_run_validates_at_its_start_every_n_steps_and_at_its_end(tmp_path):
    cfg = C.load_config("ct64", TINY + ["train.max_steps=5", "train.meta_every=1", "val.every=2",
                                        "val.images=4", "val.recon_images=2", "val.recon_steps=2",
                                        "train.precision=fp32", "train.compile=off"])
    first = train(cfg, tmp_path, dataset=RandomImages(), val_dataset=FixedImages(), progress=False, stop_after=3)
    assert [r["step"] for r in first["validation"]] == [0, 2]
    second = train(cfg, tmp_path, dataset=RandomImages(), val_dataset=FixedImages(), progress=False)
    assert [r["step"] for r in second["validation"]] == [4, 5]
    recs = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 2, 4, 5]
    assert all(b["wall_s"] >= a["wall_s"] for a, b in zip(recs, recs[1:]))
    assert recs[2]["kimg"] == pytest.approx(4 * 4 / 1000)  # 4 steps of 4 images
    assert {"denoise_mse_0.02", "denoise_mse_10", "recon_psnr", "val_s"} <= set(recs[0])
    assert any((tmp_path / "tb").iterdir())
