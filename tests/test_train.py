"""Training: determinism, resume after SIGKILL, DDP under torchrun, refusal of mixed work dirs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoreinv import config as C
from scoreinv.errors import ScoreinvError
from scoreinv.score import load_score_model, read_checkpoint
from scoreinv.train import train
from tinymodel import TINY, RandomImages

ROOT = Path(__file__).resolve().parents[1]


def test_same_seed_same_loss_curve(tmp_path):
    cfg = C.load_config("ct64", TINY + ["train.max_steps=4"])
    a = train(cfg, tmp_path / "a", dataset=RandomImages(), progress=False)["losses"]
    b = train(cfg, tmp_path / "b", dataset=RandomImages(), progress=False)["losses"]
    c = train(C.load_config("ct64", TINY + ["train.max_steps=4", "train.seed=1"]), tmp_path / "c",
              dataset=RandomImages(), progress=False)["losses"]
    assert a == b and len(a) == 4
    assert a != c


def test_resume_continues_the_same_curve(tmp_path):
    cfg = C.load_config("ct64", TINY + ["train.max_steps=6", "train.meta_every=1"])
    full = train(cfg, tmp_path / "full", dataset=RandomImages(), progress=False)["losses"]
    first = train(cfg, tmp_path / "split", dataset=RandomImages(), progress=False, stop_after=3)
    assert first["step"] == 3
    second = train(cfg, tmp_path / "split", dataset=RandomImages(), progress=False)
    assert second["step"] == 6
    assert first["losses"] + second["losses"] == pytest.approx(full, rel=1e-5)


def test_workdir_of_another_configuration_is_refused(tmp_path):
    train(C.load_config("ct64", TINY + ["train.max_steps=1"]), tmp_path, dataset=RandomImages(), progress=False)
    with pytest.raises(ScoreinvError, match="another configuration"):
        train(C.load_config("ct64", TINY + ["train.max_steps=2", "model.nf=16"]), tmp_path,
              dataset=RandomImages(), progress=False)
    # a longer run of the same configuration resumes
    assert train(C.load_config("ct64", TINY + ["train.max_steps=2"]), tmp_path, dataset=RandomImages(),
                 progress=False)["step"] == 2


def test_checkpoint_checks(tmp_path):
    train(C.load_config("ct64", TINY + ["train.max_steps=1"]), tmp_path, dataset=RandomImages(), progress=False)
    with pytest.raises(ScoreinvError, match="32x32"):
        load_score_model(str(tmp_path), image_size=32)
    ck = read_checkpoint(tmp_path / "checkpoints-meta" / "checkpoint.pt")
    del ck["ema"]
    torch.save(ck, tmp_path / "noema.pt")
    with pytest.raises(ScoreinvError, match="EMA"):
        load_score_model(str(tmp_path / "noema.pt"))
    ck2 = read_checkpoint(tmp_path / "checkpoints-meta" / "checkpoint.pt")
    ck2["config"]["model"]["nf"] = 16  # weights of another architecture
    torch.save(ck2, tmp_path / "other.pt")
    with pytest.raises(ScoreinvError, match="does not fit"):
        load_score_model(str(tmp_path / "other.pt"))
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "noema.pt").read_bytes()[:500])
    with pytest.raises(ScoreinvError, match="cannot read checkpoint"):
        load_score_model(str(tmp_path / "trunc.pt"))


def _cli(*args):
    return [sys.executable, "-m", "scoreinv.cli", *args]


def test_sigkill_during_training_and_checkpoint_writes_resumes(tmp_path):
    """Kill -9 while a meta-checkpoint write is in flight (its temporary file exists), and once
    between writes; every restart resumes from the last good meta-checkpoint and the step
    counter continues."""
    wd = tmp_path / "run"
    sets = [a for kv in TINY + ["train.meta_every=1", "train.checkpoint_every=100000", "val.every=0"]
            for a in ("--set", kv)]
    args = ["train", "--config", "ct64", "--workdir", str(wd), "--data", "ellipses", "--no-progress", *sets,
            "--max-steps"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    meta = wd / "checkpoints-meta" / "checkpoint.pt"
    meta_dir = meta.parent
    last_step, kills_in_write = 0, 0
    for attempt in range(6):
        proc = subprocess.Popen(_cli(*args, "1000"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        in_write = False
        while time.time() < deadline and proc.poll() is None:
            if meta.exists() and attempt == 0 and read_checkpoint(meta)["step"] >= 3:
                break  # first kill: between writes
            if attempt > 0 and meta_dir.exists() and any(e.name.endswith(".tmp") for e in os.scandir(meta_dir)):
                in_write = True
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        in_write = in_write and any(e.name.endswith(".tmp") for e in os.scandir(meta_dir))
        kills_in_write += in_write
        step = read_checkpoint(meta)["step"]  # must be readable after every kill
        assert step >= last_step, "step counter went backwards"
        last_step = step
        if kills_in_write >= 2:
            break
    assert kills_in_write >= 1, "no kill landed inside a checkpoint write"
    out = subprocess.run(_cli(*args, str(last_step + 2)), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming at step {last_step}" in out.stdout
    assert read_checkpoint(meta)["step"] == last_step + 2
    assert not any(wd.glob("**/.*.tmp*"))


def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path):
    wd = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           str(ROOT / "tests" / "ddp_worker.py"), str(wd), *TINY, "train.max_steps=3", "data.dataset=ellipses"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    w0 = torch.load(wd / "weights_rank0.pt")
    w1 = torch.load(wd / "weights_rank1.pt")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert read_checkpoint(wd / "checkpoints-meta" / "checkpoint.pt")["step"] == 3


def test_export_float16_model_loads_and_scores_like_the_checkpoint(tmp_path):
    from scoreinv.export import export
    cfg = C.load_config("ct64", TINY + ["train.max_steps=2", "model.init_scale=1.0"])
    train(cfg, tmp_path / "run", dataset=RandomImages(), progress=False)
    path = export(str(tmp_path / "run"), "tiny", dest=str(tmp_path / "models"))
    m32, _ = load_score_model(str(tmp_path / "run"))
    m16, cfg16 = load_score_model(str(path))
    assert cfg16.data.image_size == 16
    ema = torch.load(path)["ema"]
    assert all(v.dtype == torch.float16 for k, v in ema.items() if v.is_floating_point() and not k.endswith("embed.W"))
    x, t = torch.rand(2, 1, 16, 16), torch.tensor([0.2, 0.7])
    a, b = m32.score(x, t), m16.score(x, t)
    assert (a - b).norm() / a.norm() < 1e-2
