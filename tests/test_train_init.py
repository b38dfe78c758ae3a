"""`train --init`: weights, optimiser state and step from a file; architecture check; resume wins;
and the learning-rate schedule and EMA decay of long runs (optim.py)."""
import math

import pytest
import torch

from scoreinv import config as C
from scoreinv.errors import ScoreinvError
from scoreinv.export import export
from scoreinv.optim import build_optimizer, ema_beta, lr_at
from scoreinv.score import EMA, build_model, read_checkpoint
from scoreinv.train import dsm_loss, train
from scoreinv.train_init import load_init
from tinymodel import TINY, RandomImages


class Blobs(RandomImages):
    """Smooth random images (a blurred noise field, min-max scaled): learnable in a few steps."""

    def sample_batch(self, b, g):
        x = torch.nn.functional.avg_pool2d(torch.rand(b, 1, 16, 16, generator=g), 5, 1, 2, count_include_pad=False)
        lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
        return (x - lo) / (hi - lo)


def _cfg(*extra):
    return C.load_config("ct64", TINY + ["train.precision=fp32", "train.compile=off", "train.data_workers=0",
                                         *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 40 steps on Blobs: its work directory and its float16 export."""
    root = tmp_path_factory.mktemp("init")
    train(_cfg("train.max_steps=40", "train.lr=2e-3", "train.warmup=5"), root / "run", dataset=Blobs(), progress=False)
    return root / "run", export(str(root / "run"), "tinyblobs", dest=str(root / "models"))


def test_init_from_exported_model_gives_its_ema_weights_and_step(trained, tmp_path):
    _, path = trained
    out = train(_cfg("train.max_steps=100"), tmp_path, dataset=Blobs(), progress=False, init=str(path), stop_after=0)
    shipped = torch.load(path)["ema"]
    assert out["step"] == 40  # the step continues
    for k, v in shipped.items():
        assert torch.equal(out["ema"][k].cpu(), v.float()), k
        assert torch.equal(out["model"].net.state_dict()[k].cpu(), v.float()), k  # online weights too


def test_init_from_a_re_exported_model_without_an_image_count(trained, tmp_path):
    """A model file without the images-seen record (as the shipped ct64/mri64), exported again
    (its 'nimg' stored as None), still initialises a run."""
    _, path = trained
    ck = torch.load(path)
    del ck["nimg"]
    torch.save(ck, tmp_path / "old.pt")
    again = export(str(tmp_path / "old.pt"), "again", dest=str(tmp_path / "models"))
    assert torch.load(again)["nimg"] is None
    cfg = _cfg("train.max_steps=100")
    out = train(cfg, tmp_path / "run", dataset=Blobs(), progress=False, init=str(again), stop_after=0)
    assert out["step"] == 40


def test_loss_after_init_is_lower_than_from_scratch(trained, tmp_path):
    _, path = trained
    cfg = _cfg("train.max_steps=100")
    inited = train(cfg, tmp_path, dataset=Blobs(), progress=False, init=str(path), stop_after=0)["model"]
    torch.manual_seed(cfg.train.seed)
    scratch = build_model(cfg)
    x = Blobs().sample_batch(64, torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = float(dsm_loss(inited, x, torch.Generator().manual_seed(9), cfg.train.loss_weighting))
        b = float(dsm_loss(scratch, x, torch.Generator().manual_seed(9), cfg.train.loss_weighting))
    assert a < 0.8 * b


def test_mismatched_architecture_is_refused_naming_the_keys(trained, tmp_path):
    _, path = trained
    with pytest.raises(ScoreinvError, match=r"model\.nf: 8 \(file\) vs 16"):
        train(_cfg("train.max_steps=2", "model.nf=16"), tmp_path, dataset=Blobs(), progress=False, init=str(path))
    with pytest.raises(ScoreinvError, match=r"data\.image_size"):
        train(_cfg("train.max_steps=2", "data.image_size=32"), tmp_path / "b", dataset=Blobs(), progress=False,
              init=str(path))


def test_init_from_a_work_directory_loads_the_optimiser_and_skips_the_warmup(trained):
    wd, path = trained
    cfg = _cfg("train.max_steps=100", "train.lr=1e-3")
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model.parameters(), cfg.train, torch.device("cpu"))
    got = load_init(str(wd), cfg, model, EMA(model.net, 0.9), opt)
    ck = read_checkpoint(wd / "checkpoints-meta" / "checkpoint.pt")
    assert got["optimizer"] and got["warmup_from"] == 0 and got["step"] == 40
    assert opt.param_groups[0]["lr"] == 1e-3  # this run's settings, not the file's
    for i, st in ck["optimizer"]["state"].items():
        assert torch.equal(opt.state_dict()["state"][i]["exp_avg"], st["exp_avg"])
    for k, v in ck["model"].items():
        assert torch.equal(model.net.state_dict()[k], v)
    # an EMA-only file: fresh Adam, warm-up again from the file's step
    got = load_init(str(path), cfg, model, EMA(model.net, 0.9), build_optimizer(model.parameters(), cfg.train,
                                                                                   torch.device("cpu")))
    assert not got["optimizer"] and got["warmup_from"] == 40


def test_resume_wins_and_a_different_init_is_refused(trained, tmp_path):
    wd, path = trained
    cfg = _cfg("train.max_steps=42", "train.meta_every=1")
    assert train(cfg, tmp_path, dataset=Blobs(), progress=False, init=str(path), stop_after=1)["step"] == 41
    ck = read_checkpoint(tmp_path / "checkpoints-meta" / "checkpoint.pt")
    assert ck["nimg"] == 41 * 4 and ck["init"]["spec"] == str(path)  # images seen go on from the file's
    assert train(cfg, tmp_path, dataset=Blobs(), progress=False, init=str(path))["step"] == 42  # resumed
    with pytest.raises(ScoreinvError, match="holds a run started from"):
        train(_cfg("train.max_steps=43"), tmp_path, dataset=Blobs(), progress=False, init=str(wd))
    train(_cfg("train.max_steps=1"), tmp_path / "scratch", dataset=Blobs(), progress=False)
    with pytest.raises(ScoreinvError, match="started from scratch"):
        train(_cfg("train.max_steps=2"), tmp_path / "scratch", dataset=Blobs(), progress=False, init=str(path))


def test_learning_rate_schedules():
    assert lr_at(0, 1.0, 10) == pytest.approx(0.1) and lr_at(9, 1.0, 10) == 1.0
    # rsqrt: constant up to the reference step, then 1/sqrt; no horizon
    assert lr_at(500, 1.0, 10, "rsqrt", ref_steps=1000) == 1.0
    assert lr_at(4000, 1.0, 10, "rsqrt", ref_steps=1000) == pytest.approx(0.5)
    # cosine: from lr after the warm-up to min_ratio * lr at the horizon, then flat
    kw = dict(schedule="cosine", decay_steps=110, min_ratio=0.1)
    assert lr_at(10, 1.0, 10, **kw) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, **kw) == pytest.approx(0.55)
    assert lr_at(110, 1.0, 10, **kw) == pytest.approx(0.1) == lr_at(500, 1.0, 10, **kw)
    # a re-warm-up from step 1600 (a fresh Adam after --init) keeps the schedule's position
    assert lr_at(1600, 1.0, 100, "rsqrt", ref_steps=400, warmup_from=1600) == pytest.approx(0.01 * 0.5)
    with pytest.raises(ScoreinvError, match="lr_decay_steps"):
        lr_at(5, 1.0, 10, "cosine", decay_steps=5)


def test_ema_half_life_is_in_images_and_ramps_up():
    # after h images the old average weighs one half, whatever the batch size
    for b in (8, 32):
        beta = ema_beta(10 ** 9, b, halflife_kimg=1.0, rampup=0.0, rate=0.9)
        assert beta ** (1000 / b) == pytest.approx(0.5)
    # ramp-up: the half-life is at most 5 % of the images seen; 0 images -> the EMA takes the weights
    assert ema_beta(0, 8, 500.0, 0.05, 0.9) == 0.0
    assert ema_beta(16000, 8, 500.0, 0.05, 0.9) == pytest.approx(0.5 ** (8 / 800))
    assert ema_beta(123, 8, 0.0, 0.05, 0.9) == 0.9  # half-life 0: the fixed per-step rate
    assert math.isclose(ema_beta(10 ** 9, 8, 500.0, 0.05, 0.9), 0.5 ** (8 / 5e5))


def test_long_run_settings_are_checked_and_may_change_on_resume(tmp_path):
    for bad, key in (("train.lr_schedule=linear", "train.lr_schedule"), ("val.every=-1", "val.every"),
                     ("train.ema_rampup=-0.1", "train.ema_rampup"), ("train.compile=maybe", "train.compile"),
                     ("val.sigmas=[]", "val.sigmas"), ("train.data_workers=-2", "train.data_workers"),
                     ("train.lr_schedule=cosine train.max_steps=100", "train.lr_decay_steps")):
        with pytest.raises(ScoreinvError, match=key.replace(".", r"\.")):
            C.load_config("ct64", bad.split())
    assert C.load_config("ct64", ["train.compile=off", "train.channels_last=true"]).train.compile == "off"
    train(_cfg("train.max_steps=1"), tmp_path, dataset=Blobs(), progress=False)
    # schedule, EMA, speed and validation settings may change between working days; the model may not
    more = _cfg("train.max_steps=2", "train.lr_schedule=cosine", "train.lr_decay_steps=1000",
                "train.ema_halflife_kimg=0", "val.every=7", "train.precision=bf16")
    assert train(more, tmp_path, dataset=Blobs(), progress=False)["step"] == 2
