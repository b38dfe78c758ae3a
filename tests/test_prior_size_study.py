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


def test_smaller_windows_come_in_a_larger_batch_with_the_same_pixels(study):
    args = study.argparse.Namespace(config="ct256", out="o", minutes=5.0, seed=0)
    for p, batch in ((64, 24), (32, 96), (128, 6)):
        cmd = study.command(args, 16, p, 24, 64)
        assert f"train.batch_size={batch}" in cmd and f"model.patch_size={p}" in cmd and "model.nf=16" in cmd
        assert cmd[cmd.index("--max-minutes") + 1] == "5"


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
