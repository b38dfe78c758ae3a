"""benchmarks/prior_size_study.py: variants, equal pixels per step, the resumable table."""
import importlib.util
import json
from pathlib import Path

import pytest

from scoreinv.errors import ScoreinvError


@pytest.fixture(scope="module")
def study():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "prior_size_study.py"
    spec = importlib.util.spec_from_file_location("prior_size_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_parse_and_bad_ones_name_the_flag(study):
    assert study.parse_variant("nf24:p32") == (24, 32)
    for bad in ("nf24", "24:32", "nf24:p8", "nfx:p64"):
        with pytest.raises(ScoreinvError, match="--variants"):
            study.parse_variant(bad)


def test_smaller_windows_come_in_a_larger_batch_with_the_same_pixels_on_the_cpu(study):
    args = study.argparse.Namespace(config="ct256", out="o", minutes=5.0, seed=0, threads=2)
    for p, batch in ((64, 24), (32, 96), (128, 6)):
        cmd = study.command(args, 16, p, 24, 64)
        assert f"train.batch_size={batch}" in cmd and f"model.patch_size={p}" in cmd and "model.nf=16" in cmd
        assert cmd[cmd.index("--max-minutes") + 1] == "5" and cmd[cmd.index("--device") + 1] == "cpu"
        assert "train.num_threads=2" in cmd and "train.snapshot_every=0" in cmd


class FakeRun:
    """Stands in for `scoreinv train`: writes the closing validation record and the checkpoint the
    table reads, then exits with `rc`."""
    rc = 0
    calls: list = []

    def __init__(self, cmd, stdout=None, stderr=None):
        import torch
        work = Path(cmd[cmd.index("--workdir") + 1])
        FakeRun.calls.append(work.name)
        assert not (work / "stale").exists()                  # an unfinished run's directory is gone
        (work / "checkpoints-meta").mkdir(parents=True)
        batch = int(next(c for c in cmd if c.startswith("train.batch_size=")).split("=")[1])
        (work / "validation.jsonl").write_text(json.dumps({"step": 0, "denoise_mse_mean": 0.03}) + "\n" + json.dumps(
            {"step": 10, "denoise_mse_mean": 0.004, "recon_psnr": 30.0}) + "\n")
        torch.save({"config": {"train": {"batch_size": batch}}, "n_params": 1.24e6, "step": 10, "nimg": 10 * batch,
                    "wall_s": 9.0}, work / "checkpoints-meta" / "checkpoint.pt")

    def wait(self):
        return FakeRun.rc


def test_unfinished_variants_restart_from_scratch_failures_and_other_settings_are_refused(study, tmp_path,
                                                                                          monkeypatch, capsys):
    monkeypatch.setattr(study.subprocess, "Popen", FakeRun)
    FakeRun.calls, FakeRun.rc = [], 0
    (tmp_path / "nf16_p32").mkdir()
    (tmp_path / "nf16_p32" / "stale").write_text("killed mid-run")
    argv = ["--config", "ct256", "--minutes", "1", "--variants", "nf16:p64,nf16:p32,nf16:p64", "--out", str(tmp_path)]
    assert study.main(argv) == 0
    out = capsys.readouterr().out
    assert FakeRun.calls == ["nf16_p64", "nf16_p32"]                       # the repeated variant ran once
    assert "nf16:p32: an unfinished run" in out and "| nf16:p32 | 1.24 M | 96 | 10 | 960 | 0.90 |" in out
    assert study.main(argv) == 0 and FakeRun.calls == ["nf16_p64", "nf16_p32"]   # finished: nothing reruns
    with pytest.raises(ScoreinvError, match="other settings"):
        study.main(argv[:3] + ["2"] + argv[4:])
    FakeRun.rc = 1
    with pytest.raises(ScoreinvError, match="training of nf24:p64 failed"):
        study.main(["--config", "ct256", "--minutes", "1", "--variants", "nf24:p64", "--out", str(tmp_path)])


def test_a_finished_variant_is_recognised_by_its_closing_record(study, tmp_path):
    assert study.finished(tmp_path) is None
    f = tmp_path / "validation.jsonl"
    f.write_text(json.dumps({"step": 0, "denoise_mse_mean": 0.1}) + "\n")
    assert study.finished(tmp_path) is None                     # only the start record: not finished
    f.write_text(f.read_text() + json.dumps({"step": 7, "denoise_mse_mean": 0.05}) + "\n")
    assert study.finished(tmp_path)["step"] == 7


@pytest.mark.slow
def test_two_variants_train_and_tabulate_and_a_rerun_trains_nothing(study, tmp_path, capsys):
    argv = ["--config", "ct64", "--minutes", "0.05", "--variants", "nf8:p32,nf8:p64", "--out", str(tmp_path)]
    assert study.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("training") == 2 and "| nf8:p32 | 0.31 M | 96 |" in out and "| nf8:p64 | 0.31 M | 24 |" in out
    assert study.main(argv) == 0
    again = capsys.readouterr().out
    assert "training" not in again.split("Prior size study")[0] and "| nf8:p32 |" in again
