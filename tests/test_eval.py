"""`scoreinv eval`: outputs, resume after interruption, refusal of another configuration, bad input."""
import csv
import json

import numpy as np
import pytest
import torch

from scoreinv import evaluate as E
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.metrics import psnr, ssim
from scoreinv.sampling.solvers import solver_config
from scoreinv.tune import Preset




@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


def _ct(ckpt, out, *extra, solvers="fbp,tv,projection", n=2):
    return ["eval", "--checkpoint", ckpt, "--task", "ct", "--views", "6", "--data", "phantoms", "--solvers", solvers,
            "--steps", "2", "--num-images", str(n), "--batch-size", "2", "--out", str(out), "--val-images", "2",
            *extra]


def _rows(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_outputs_then_extension_resumes(ckpt, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(_ct(ckpt, out)) == 0
    first = np.load(out / "reconstructions.npz")["recon_projection"]
    weights_mtime = (out / "weights.json").stat().st_mtime_ns
    part = out / "parts" / "projection" / "b00000.npz"
    part_mtime = part.stat().st_mtime_ns
    assert main(_ct(ckpt, out, n=4)) == 0                        # 2 more images: batch 0 is reused
    assert part.stat().st_mtime_ns == part_mtime and (out / "weights.json").stat().st_mtime_ns == weights_mtime
    text = capsys.readouterr().out
    table = text[text.rindex("PSNR (dB)"):].splitlines()
    assert [ln.split()[0] for ln in table[1:4]] == ["fbp", "tv", "projection"] and "±" in table[1]
    rows = _rows(out)
    assert len(rows) == 12 and {r["solver"] for r in rows} == {"fbp", "tv", "projection"}
    assert set(rows[0]) >= {"image", "psnr", "ssim", "psnr_circle", "ssim_circle", "psnr_hist", "ssim_hist",
                            "nmse", "seconds", "nfe"}
    rec = np.load(out / "reconstructions.npz")
    assert np.array_equal(rec["recon_projection"][:2], first)
    gt = torch.from_numpy(rec["ground_truth"])
    summary = json.loads((out / "summary.json").read_text())
    assert [s["solver"] for s in summary] == ["fbp", "tv", "projection"]
    for s in summary:
        x = torch.from_numpy(rec[f"recon_{s['solver']}"])
        p, q = psnr(x, gt).numpy(), ssim(x, gt).numpy()
        csv_p = [float(r["psnr"]) for r in rows if r["solver"] == s["solver"]]
        assert np.allclose(csv_p, p) and s["psnr_mean"] == pytest.approx(p.mean())
        assert s["psnr_std"] == pytest.approx(p.std()) and s["ssim_mean"] == pytest.approx(q.mean())
        assert s["n_images"] == 4 and s["task"] == "ct" and "full image" in s["metric_variant"]
        assert s["setting"] == "views=6 noise=0 operator=radon" and s["sec_per_image"] >= 0
    proj = summary[2]
    assert proj["nfe"] == solver_config("projection", "ct", steps=2).nfe() and summary[0]["nfe"] == 0
    w = json.loads((out / "weights.json").read_text())
    chosen = w["ct|views=6 noise=0 operator=radon|phantoms"]["tv"]
    assert summary[1]["params"]["weight"] == chosen["value"] == chosen["grid"][int(np.argmax(chosen["scores"]))]
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_run_resumes_to_the_same_result(ckpt, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    assert main(_ct(ckpt, ref, "--set", "tv.weight=1e-3", n=4)) == 0
    calls = {"n": 0}
    real = E.run_method

    def flaky(method, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:                                      # batch 2, second solver
            raise KeyboardInterrupt
        return real(method, *a, **k)

    monkeypatch.setattr(E, "run_method", flaky)
    out = tmp_path / "ev"
    assert main(_ct(ckpt, out, "--set", "tv.weight=1e-3", n=4)) == 130
    assert not (out / "summary.json").exists()
    done = sorted(p.relative_to(out).as_posix() for p in (out / "parts").rglob("*.npz"))
    assert "parts/fbp/b00001.npz" in done and "parts/tv/b00001.npz" not in done
    monkeypatch.setattr(E, "run_method", real)
    assert main(_ct(ckpt, out, "--set", "tv.weight=1e-3", n=4)) == 0
    a, b = np.load(ref / "reconstructions.npz"), np.load(out / "reconstructions.npz")
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k
    assert not (out / "weights.json").exists()                 # fixed weight: nothing chosen


def test_directory_of_another_configuration_is_refused(ckpt, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(_ct(ckpt, out, "--set", "tv.weight=1e-3", solvers="fbp,tv")) == 0
    capsys.readouterr()
    changed = _ct(ckpt, out, "--set", "tv.weight=1e-3", solvers="fbp,tv")
    changed[changed.index("--views") + 1] = "7"
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "task.views: 6 there, 7 now" in err
    assert main(_ct(ckpt, out, "--set", "tv.weight=1e-2", solvers="fbp,tv")) == 2
    assert "tv.weight" in capsys.readouterr().err
    # adding a solver to the same configuration extends the folder
    assert main(_ct(ckpt, out, "--set", "tv.weight=1e-3", "--set", "sirt.iters=20", solvers="fbp,tv,sirt")) == 0
    assert {r["solver"] for r in _rows(out)} == {"fbp", "tv", "sirt"}


def test_mar_and_mri_posterior_samples(ckpt, tmp_path):
    out = tmp_path / "mar"
    assert main(["eval", "--checkpoint", ckpt, "--task", "mar", "--data", "phantoms", "--solvers", "li,nmar,dds",
                 "--steps", "2", "--samples", "2", "--num-images", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert {"psnr_mar", "ssim_mar"} <= set(rows[0]) and "psnr_hist" not in rows[0]
    rec = np.load(out / "reconstructions.npz")
    assert rec["std_dds"].shape == (2, 1, 16, 16) and float(rec["std_dds"].max()) > 0
    assert rec["metal_mask"].dtype == bool and "std_li" not in rec.files
    s = {r["solver"]: r for r in json.loads((out / "summary.json").read_text())}
    assert s["dds"]["nfe"] == 2 * solver_config("dds", "mar", steps=2).nfe() and s["dds"]["samples"] == 2
    out2 = tmp_path / "mri"
    assert main(["eval", "--checkpoint", ckpt, "--task", "mri", "--acceleration", "2", "--mask", "random",
                 "--data", "brain", "--solvers", "zero_filled,cs_tv", "--set", "cs_tv.weight=1e-3",
                 "--num-images", "2", "--out", str(out2)]) == 0
    s = {r["solver"]: r for r in json.loads((out2 / "summary.json").read_text())}
    assert s["cs_tv"]["psnr_mean"] > s["zero_filled"]["psnr_mean"] - 1.0 and s["zero_filled"]["psnr_mean"] > 10


def test_method_resolution_precedence_and_errors():
    p = Preset("projection", "ct", {"snr": 0.3, "lam": 0.5, "steps": 7}, source="p.yaml")
    ms = E.resolve_methods("tv,projection", "ct", steps=3, sets=E.parse_sets(["projection.lam=0.9"]), presets=[p])
    proj = ms[1].params
    assert (proj["snr"], proj["lam"], proj["steps"]) == (0.3, 0.9, 3) and ms[0].params == {}
    noisy = E.resolve_methods(["projection"], "ct", noise=1e4)[0].params
    assert noisy["final_projection"] is False
    assert E.resolve_methods(["projection"], "mri")[0].params["snr"] == 0.517   # task preset
    with pytest.raises(ScoreinvError, match="unknown solver.*li: not a ct method"):
        E.resolve_methods("fbp,li", "ct")
    with pytest.raises(ScoreinvError, match="unknown solver"):
        E.resolve_methods("fbp,magic", "ct")
    with pytest.raises(ScoreinvError, match="not among the solvers"):
        E.resolve_methods("fbp", "ct", sets=E.parse_sets(["tv.weight=1"]))
    with pytest.raises(ScoreinvError, match="one parameter, weight"):
        E.resolve_methods("tv", "ct", sets=E.parse_sets(["tv.iters=1"]))
    with pytest.raises(ScoreinvError, match="lam"):
        E.resolve_methods("projection", "ct", sets=E.parse_sets(["solver.lam=2"]))
    with pytest.raises(ScoreinvError, match="tuned for task 'ct'"):
        E.resolve_methods("projection", "mri", presets=[p])
    with pytest.raises(ScoreinvError, match="TARGET.PARAM=VALUE"):
        E.parse_sets(["snr=0.3"])
    with pytest.raises(ScoreinvError, match="--steps"):
        E.resolve_methods("projection", "ct", steps=0)


def test_bad_input(ckpt, tmp_path, capsys):
    assert main(_ct(ckpt, tmp_path / "a", n=257)) == 2                 # phantoms test split: 256 images
    assert "holds only 256" in capsys.readouterr().err
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"s{i}.npy", np.random.default_rng(i).random((20, 20)))
    base = ["eval", "--checkpoint", ckpt, "--task", "ct", "--views", "6", "--solvers", "fbp", "--out",
            str(tmp_path / "b")]
    assert main(base + ["--data", str(folder), "--split", "all", "--num-images", "4"]) == 2
    assert "holds only 3" in capsys.readouterr().err
    assert main(base + ["--data", str(folder), "--split", "all", "--num-images", "3"]) == 0
    assert np.load(tmp_path / "b" / "reconstructions.npz")["ground_truth"].shape == (3, 1, 16, 16)  # resized
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing to read")
    assert main(base[:-1] + [str(tmp_path / "c"), "--data", str(empty), "--split", "all"]) == 2
    assert "no readable" in capsys.readouterr().err
    assert main(base[:-1] + [str(tmp_path / "d"), "--data", "nowhere"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    bad_task = _ct(ckpt, tmp_path / "e")
    bad_task[bad_task.index("--task") + 1] = "pet"
    assert main(bad_task) == 2 and "unknown task" in capsys.readouterr().err
    assert main(_ct(ckpt, tmp_path / "f", "--preset", str(tmp_path / "none.yaml"))) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "--task", "ct", "--data", "phantoms", "--solvers", "projection", "--image-size", "16",
                 "--out", str(tmp_path / "g")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
