"""The GPU script's CPU dry run (scripts/device_check.sh with a tiny budget, 1 thread) and its parts."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from scoreinv.bench.device_check import _before_after, parse_priors
from scoreinv.errors import ScoreinvError
from scoreinv.score import load_score_model, shipped_models

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_dry_run_trains_both_priors_and_writes_what_can_be_shipped(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), OMP_NUM_THREADS="1", DEVICE_CHECK_DEVICE="cpu",
               DEVICE_CHECK_MINUTES="0.1", DEVICE_CHECK_BATCH="2", DEVICE_CHECK_BENCH_GROUPS="",
               DEVICE_CHECK_BENCH_SECONDS="0.01", DEVICE_CHECK_WORK=str(tmp_path / "work"),
               DEVICE_CHECK_SET="val.images=2;val.recon_images=1;val.recon_steps=2",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["ct_cpu.pt", "device_check.log", "logs.tar.gz", "mri_cpu.pt", "summary.json"]
    assert all(p.is_file() for p in out.iterdir())  # nothing below OUT: it comes back as it is
    s = json.loads((out / "summary.json").read_text())
    assert s["bench"]["chosen_images_per_s"] > 0 and "matmul_peak_gflops" in s["bench"]
    for name, preset in (("ct", "ct64"), ("mri", "mri64")):
        p = s["priors"][name]
        shipped = torch.load(shipped_models()[preset], weights_only=False)["step"]
        assert p["before_step"] == shipped < p["after_step"] == p["steps"]  # from the shipped weights, validated
        assert {"denoise_mse_mean", "recon_psnr"} <= set(p["before"]) and isinstance(p["beats_init"], bool)
        model, cfg = load_score_model(str(out / f"{name}_cpu.pt"))
        assert cfg.preset == preset and torch.load(out / f"{name}_cpu.pt")["step"] == p["steps"]
    names = tarfile.open(out / "logs.tar.gz").getnames()
    assert {"ct/validation.jsonl", "mri/config.yaml", "mri/tb"} <= set(names)
    log = (out / "device_check.log").read_text()
    assert "tests marked cuda" in log and "# bench train" in log
    assert "6 skipped" in log or torch.cuda.is_available()


def test_priors_are_named_with_their_preset_and_init():
    assert parse_priors("ct=ct64:ct64, mri=mri64:none") == [("ct", "ct64", "ct64"), ("mri", "mri64", None)]
    with pytest.raises(ScoreinvError, match="NAME=PRESET:INIT"):
        parse_priors("ct64")
    with pytest.raises(ScoreinvError, match="at least one"):
        parse_priors(" , ")


def test_beats_init_needs_both_numbers_better_and_a_step():
    rec = lambda step, mse, psnr: {"step": step, "denoise_mse_mean": mse, "recon_psnr": psnr}
    assert _before_after([rec(0, 1.0, 20.0), rec(5, 0.9, 21.0)])["beats_init"]
    assert not _before_after([rec(0, 1.0, 20.0), rec(5, 0.9, 19.0)])["beats_init"]
    assert not _before_after([rec(0, 1.0, 20.0), rec(5, 1.1, 21.0)])["beats_init"]
    assert not _before_after([rec(5, 1.0, 20.0)])["beats_init"]
    assert not _before_after([rec(0, 1.0, 20.0), rec(5, 0.995, 21.0)])["beats_init"]   # within the margins
    assert not _before_after([rec(0, 1.0, 20.0), rec(5, 0.9, 20.01)])["beats_init"]
    assert _before_after([]) == {}


def test_an_occupied_out_is_refused_before_any_training(tmp_path, monkeypatch):
    """A second check into the same folder must not spend its device budget and then fail at export."""
    import scoreinv.bench.device_check as dc

    def boom(*a, **k):
        raise AssertionError("benchmark started")
    monkeypatch.setattr(dc, "bench_train", boom)
    (tmp_path / "ct_cpu.pt").write_bytes(b"weights of an earlier check")
    with pytest.raises(ScoreinvError, match="ct_cpu.pt: exists"):
        dc.run(tmp_path, 0.1, parse_priors("ct=ct64:ct64"), 2, 0.1, ("layouts",), 0, device="cpu")
    assert (tmp_path / "ct_cpu.pt").read_bytes() == b"weights of an earlier check"
