"""Training speed: the probe cache and the `auto` choices, the data stream, and `bench train` at a
tiny size (1 thread, a few hundredths of a second per variant: numbers here are not measurements)."""
import json

import pytest
import torch

from scoreinv import config as C
from scoreinv.bench.train import GROUPS, check_groups
from scoreinv.bench.train import run as bench_train
from scoreinv.data import build_dataset
from scoreinv.errors import ScoreinvError
from scoreinv.train import train
from scoreinv.train_speed import (DEFAULTS, PROBE_MIN_STEPS, batch_stream, cache_path, compile_pays, probe,
                                  probe_key, resolve_speed, save_record)
from tinymodel import TINY, RandomImages

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_batch_stream_is_the_same_inline_in_workers_and_after_a_restart():
    ds = build_dataset("phantoms", "train", 16)
    inline = _take(batch_stream(ds, 3, 5, 0, 0), 5)
    for workers in (1, 2):
        got = _take(batch_stream(ds, 3, 5, 0, 0, workers), 5)
        assert all(torch.equal(a, b) for a, b in zip(inline, got))
    assert all(torch.equal(a, b) for a, b in zip(inline[2:], _take(batch_stream(ds, 3, 5, 0, 2), 3)))
    assert not torch.equal(inline[0], _take(batch_stream(ds, 3, 5, 1, 0), 1)[0])  # another rank, other data


def test_training_with_a_data_worker_repeats_inline_training(tmp_path):
    cfg = lambda w: C.load_config("ct64", TINY + ["train.max_steps=3", "train.precision=fp32",
                                                  "train.compile=off", f"train.data_workers={w}"])
    a = train(cfg(0), tmp_path / "a", dataset=RandomImages(), progress=False)
    b = train(cfg(1), tmp_path / "b", dataset=RandomImages(), progress=False)
    assert a["speed"].data_workers == 0 and b["speed"].data_workers == 1
    assert a["losses"] == b["losses"]


def _rec(eager=10.0, compiled=20.0, compile_s=30.0, precision="bf16", channels_last=False):
    return {"batch": 4, "variants": {}, "best": "x", "precision": precision, "channels_last": channels_last,
            "eager_images_per_s": eager, "compile_s": compile_s, "compiled_images_per_s": compiled}


def test_compile_is_chosen_only_when_it_pays_over_the_run():
    # gain 4/10 - 4/20 = 0.2 s per step; twice the compile time is 60 s: pays from 300 steps on
    assert not compile_pays(_rec(), 299) and compile_pays(_rec(), 301)
    assert not compile_pays(_rec(compiled=8.0), 10 ** 6)
    assert not compile_pays(_rec(compile_s=None, compiled=None), 10 ** 6)


def test_auto_settings_come_from_the_cache_or_the_defaults(cache_dir):
    long = C.load_config("ct64", TINY + [f"train.max_steps={10 * PROBE_MIN_STEPS}"])
    short = C.load_config("ct64", TINY + ["train.max_steps=10"])
    # no record, short run: the defaults, nothing measured or written
    s = resolve_speed(short, CPU, allow_probe=True)
    assert (s.precision, s.channels_last, s.compile, s.source) == ("fp32", DEFAULTS.channels_last, False, "defaults")
    assert not cache_path().exists()
    save_record(probe_key(long, CPU, long.train.batch_size), _rec(compile_s=1.0))
    assert cache_path().is_relative_to(cache_dir)
    s = resolve_speed(long, CPU, allow_probe=False)
    assert (s.precision, s.channels_last, s.compile, s.source) == ("bf16", False, True, "cached probe")
    # explicit settings win; a step near the end leaves too few steps for a compile to pay
    s = resolve_speed(C.load_config("ct64", TINY + [f"train.max_steps={10 * PROBE_MIN_STEPS}", "train.precision=fp32",
                                                    "train.channels_last=on"]), CPU, step=10 * PROBE_MIN_STEPS - 5,
                      allow_probe=False)
    assert (s.precision, s.channels_last, s.compile) == ("fp32", True, False)
    # the old spelling train.bf16 = true
    assert resolve_speed(C.load_config("ct64", TINY + ["train.bf16=true"]), CPU).precision == "bf16"
    with pytest.raises(ScoreinvError, match="train.bf16"):
        C.load_config("ct64", ["train.bf16=true", "train.precision=fp32"])


def test_probe_measures_every_layout():
    cfg = C.load_config("ct64", TINY)
    rec = probe(cfg, CPU, seconds=0.01, with_compile=False, log=lambda m: None)
    assert set(rec["variants"]) == {"fp32", "fp32_cl", "bf16", "bf16_cl"}
    assert all(v > 0 for v in rec["variants"].values())
    assert rec["variants"][rec["best"]] == max(rec["variants"].values()) == rec["eager_images_per_s"]


def test_bench_train_reports_each_variant_and_writes_the_probe_cache():
    res = bench_train("ct64", overrides=TINY, seconds=0.01, groups=("layouts", "adam", "data", "batch"),
                      batch_sizes=[2], log=lambda m: None)
    names = ["fp32", "fp32_cl", "bf16", "bf16_cl", "adam_foreach", "adam_loop", "data_inline", "data_workers",
             "batch_2", "chosen"]
    for n in names:
        assert res[f"{n}_images_per_s"] > 0
        frac = res[f"{n}_images_per_s"] * res["gflop_per_image"] / res["matmul_peak_gflops"]
        assert res[f"{n}_peak_fraction"] == pytest.approx(frac)
    assert res["chosen"] in ("fp32", "fp32_cl", "bf16", "bf16_cl")
    assert res["chosen_images_per_s"] == res[f"{res['chosen']}_images_per_s"]
    saved = json.loads(cache_path().read_text())
    cfg = C.load_config("ct64", TINY)
    assert saved[probe_key(cfg, CPU, 4)]["best"] == res["chosen"]
    assert resolve_speed(cfg, CPU).source == "cached probe"


def test_bench_train_checks_its_arguments():
    with pytest.raises(ScoreinvError, match="--batch-size"):
        bench_train("ct64", batch_size=0, overrides=TINY)
    with pytest.raises(ScoreinvError, match="nosuch"):
        check_groups("layouts,nosuch")
    assert check_groups(" layouts , adam") == ("layouts", "adam") and set(GROUPS) >= {"compile"}


@pytest.mark.slow
def test_bench_train_compiles_and_reports_compile_seconds_apart():
    res = bench_train("ct64", overrides=TINY, seconds=0.2, groups=("compile",), log=lambda m: None)
    assert res["compile_s"] > 0 and res["compiled_images_per_s"] > 0
