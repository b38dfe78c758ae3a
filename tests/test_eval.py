"""`scoreinv eval`: outputs, resume after interruption, refusal of another configuration, bad input."""
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from scoreinv import evaluate as E
from scoreinv.baselines import registry
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.metrics import psnr, ssim
from scoreinv.sampling.settings import Preset, parse_sets
from scoreinv.sampling.solvers import solver_config




@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


def _ct(ckpt, out, *extra, solvers="fbp,tv,projection", n=2):
    steps = ["--steps", "2"] if "projection" in solvers else []      # --steps needs a score solver
    return ["eval", "--checkpoint", ckpt, "--task", "ct", "--views", "6", "--data", "phantoms", "--solvers", solvers,
            *steps, "--num-images", str(n), "--batch-size", "2", "--out", str(out), "--val-images", "2", *extra]


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


def test_folder_of_other_images_is_refused(tmp_path, capsys):
    """--data-seed and (without a model) --image-size are not in eval.json: a folder evaluated on
    other images is refused, not resumed with the old results."""
    def cmd(*extra):
        return ["eval", "--task", "ct", "--views", "6", "--data", "phantoms", "--solvers", "fbp", "--num-images", "2",
                "--out", str(tmp_path / "ev"), "--image-size", "16", *extra]
    assert main(cmd()) == 0
    before = (tmp_path / "ev" / "summary.json").read_text()
    for extra in (["--data-seed", "3"], ["--image-size", "24"]):
        assert main(cmd(*extra)) == 2, extra
        assert "holds results for other images" in capsys.readouterr().err, extra
    assert (tmp_path / "ev" / "summary.json").read_text() == before
    assert main(cmd()) == 0                                      # the same images resume


def test_mar_and_mri_posterior_samples(ckpt, tmp_path, capsys):
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
    # the first of the K samples is scored alone on the same data, at NFE / K
    first = [r for r in rows if r["solver"] == "dds:first"]
    assert [r["image"] for r in first] == ["0", "1"] and all(r["estimate"] == "sample" for r in first)
    assert s["dds:first"]["nfe"] == solver_config("dds", "mar", steps=2).nfe() and s["dds:first"]["of_samples"] == 2
    mean = {r["image"]: float(r["psnr"]) for r in rows if r["solver"] == "dds"}
    assert any(abs(float(r["psnr"]) - mean[r["image"]]) > 1e-6 for r in first)
    # a part without the first-sample scores (computed before them): the rows are left out, said so, not mixed
    part = next((out / "parts" / "dds").glob("b*.npz"))
    kept = {k: v for k, v in np.load(part).items() if not k.startswith("m1_")}
    np.savez(part, **kept)
    assert main(["eval", "--checkpoint", ckpt, "--task", "mar", "--data", "phantoms", "--solvers", "li,nmar,dds",
                 "--steps", "2", "--samples", "2", "--num-images", "2", "--out", str(out)]) == 0
    assert not any(r["solver"] == "dds:first" for r in _rows(out))
    assert "dds:first left out: some batches were computed before" in capsys.readouterr().out
    out2 = tmp_path / "mri"
    assert main(["eval", "--checkpoint", ckpt, "--task", "mri", "--acceleration", "2", "--mask", "random",
                 "--data", "brain", "--solvers", "zero_filled,cs_tv", "--set", "cs_tv.weight=1e-3",
                 "--num-images", "2", "--out", str(out2)]) == 0
    s = {r["solver"]: r for r in json.loads((out2 / "summary.json").read_text())}
    assert s["cs_tv"]["psnr_mean"] > s["zero_filled"]["psnr_mean"] - 1.0 and s["zero_filled"]["psnr_mean"] > 10
    assert "dds:first" not in s and not any(":" in r["solver"] for r in _rows(out2))     # one sample: no extra rows


def test_method_resolution_precedence_and_errors():
    p = Preset("projection", "ct", {"snr": 0.3, "lam": 0.5, "steps": 7}, source="p.yaml")
    ms = E.resolve_methods("tv,projection", "ct", steps=3, sets=parse_sets(["projection.lambda=0.9"]), presets=[p])
    proj = ms[1].params
    assert (proj["snr"], proj["lam"], proj["steps"]) == (0.3, 0.9, 3) and ms[0].params == {}
    assert "preset p.yaml: snr; --steps: steps; --set: lam" in ms[1].origin
    noisy = E.resolve_methods(["projection"], "ct", noisy=True)[0].params
    assert noisy["final_projection"] is False
    assert E.resolve_methods(["projection"], "mri")[0].params["snr"] == 0.517   # task preset
    with pytest.raises(ScoreinvError, match="unknown solver.*li: not a ct method"):
        E.resolve_methods("fbp,li", "ct")
    with pytest.raises(ScoreinvError, match="unknown solver"):
        E.resolve_methods("fbp,magic", "ct")
    with pytest.raises(ScoreinvError, match="not among the solvers"):
        E.resolve_methods("fbp", "ct", sets=parse_sets(["tv.weight=1"]))
    with pytest.raises(ScoreinvError, match="one parameter, weight"):
        E.resolve_methods("tv", "ct", sets=parse_sets(["tv.iters=1"]))
    with pytest.raises(ScoreinvError, match="--set solver.lam = 2 is outside"):
        E.resolve_methods("projection", "ct", sets=parse_sets(["solver.lam=2"]))
    with pytest.raises(ScoreinvError, match="tuned for task 'ct'"):
        E.resolve_methods("projection", "mri", presets=[p])
    with pytest.raises(ScoreinvError, match="TARGET.KEY=VALUE"):
        parse_sets(["snr=0.3"])
    with pytest.raises(ScoreinvError, match="--steps = 0: expected a positive integer"):
        E.resolve_methods("projection", "ct", steps=0)
    with pytest.raises(ScoreinvError, match="--steps 5: no score solver"):
        E.resolve_methods("fbp,tv", "ct", steps=5)
    with pytest.raises(ScoreinvError, match="solver.zeta: not a parameter of projection, dds"):
        E.resolve_methods("projection,dds", "ct", sets=parse_sets(["solver.zeta=0.5"]))
    with pytest.raises(ScoreinvError, match="--set projection.eta: solver projection has no parameter 'eta'"):
        E.resolve_methods("projection,dds", "ct", sets=parse_sets(["projection.eta=0.5"]))
    with pytest.raises(ScoreinvError, match=r"--set tv.weight = 'abc': expected a positive number"):
        E.resolve_methods("tv", "ct", sets=parse_sets(["tv.weight=abc"]))
    with pytest.raises(ScoreinvError, match="--set sirt.iters = 2.5: expected a positive integer"):
        E.resolve_methods("sirt", "ct", sets=parse_sets(["sirt.iters=2.5"]))
    assert E.resolve_methods("tv", "ct", sets=parse_sets(["tv.weight=1e-3"]))[0].params == {"weight": 1e-3}
    # solver.KEY reaches the solvers that use it: eta only dds
    ms = E.resolve_methods("projection,dds", "ct", sets=parse_sets(["solver.eta=0.5", "solver.steps=4"]))
    assert ms[1].params["eta"] == 0.5 and ms[0].params["eta"] == 0.85 and ms[0].params["steps"] == 4


def test_weight_search_resumes_after_the_last_saved_candidate(ckpt, tmp_path, monkeypatch):
    """A kill during the TV weight search loses at most the candidate being computed: the rerun
    computes only the candidates not yet saved, and chooses what an uninterrupted search chooses."""
    real = registry.BASELINES["tv"]
    grid = real.default_grid
    calls = []

    def counting(limit=None):
        def fn(op, y, **kw):
            calls.append(kw["weight"])
            if limit is not None and len(calls) > limit:
                raise KeyboardInterrupt
            return real.fn(op, y, **kw)
        return fn

    args = _ct(ckpt, tmp_path / "ev", solvers="fbp,tv", n=1)
    monkeypatch.setitem(registry.BASELINES, "tv", dataclasses.replace(real, fn=counting(limit=3)))
    assert main(args) == 130
    saved = json.loads((tmp_path / "ev" / "weights.json").read_text())
    (entry,) = saved.values()
    assert [w for w, _ in entry["tv"]["partial"]["scores"]] == list(grid[:3])
    calls.clear()
    monkeypatch.setitem(registry.BASELINES, "tv", dataclasses.replace(real, fn=counting()))
    assert main(args) == 0
    resumed = next(iter(json.loads((tmp_path / "ev" / "weights.json").read_text()).values()))["tv"]
    # only the remaining candidates, then the test image with the chosen weight
    assert calls == [*grid[3:], resumed["value"]]
    calls.clear()
    assert main(_ct(ckpt, tmp_path / "fresh", solvers="fbp,tv", n=1)) == 0
    fresh = next(iter(json.loads((tmp_path / "fresh" / "weights.json").read_text()).values()))["tv"]
    assert calls == [*grid, fresh["value"]] and resumed == fresh


def test_out_folder_of_something_else_is_refused(ckpt, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("my own notes")
    args = ["--solvers", "fbp", "--num-images", "1"]
    for out, msg in ((mine, "holds no evaluation record (eval.json)"),
                     (tmp_path / "file", "is not a folder")):
        (tmp_path / "file").write_text("x")
        argv = ["eval", "--task", "ct", "--views", "6", "--data", "phantoms", "--image-size", "16", *args,
                "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and str(out) in err
    assert (mine / "summary.json").read_text() == "my own notes"
    ev = tmp_path / "ev"
    base = ["eval", "--task", "ct", "--views", "6", "--data", "phantoms", "--image-size", "16", *args, "--out", str(ev)]
    assert main(base) == 0
    (ev / ".summary.json.abc.tmp").write_text("")           # an atomic write cut short: still ours
    assert main(base) == 0
    summary = json.loads((ev / "summary.json").read_text())
    env = summary[0]["environment"]
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__ and env["device"] == "cpu"
    (ev / "notes.txt").write_text("mine")
    assert main(base) == 2
    assert "files an evaluation does not write (notes.txt)" in capsys.readouterr().err


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


def test_rows_name_their_estimate_and_the_new_solvers_run(ckpt, tmp_path, capsys):
    """metrics.csv, summary.json and the printed table say what each row scores (a single sample, the
    mean of K, a Tweedie estimate at σ_end, a classical reconstruction); ddrm and diffpir run on MRI,
    diffpir warm-started from the classical image."""
    out = tmp_path / "mri"
    assert main(["eval", "--checkpoint", ckpt, "--task", "mri", "--acceleration", "2", "--mask", "random",
                 "--data", "brain", "--solvers", "zero_filled,ddrm,diffpir", "--steps", "3",
                 "--set", "diffpir.sigma_end=0.5", "--set", "diffpir.warm_start=classical",
                 "--set", "diffpir.warm_sigma=2", "--num-images", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert {r["solver"]: r["estimate"] for r in rows} == {"zero_filled": "classical", "ddrm": "sample",
                                                          "diffpir": "tweedie@0.5"}
    s = {r["solver"]: r for r in json.loads((out / "summary.json").read_text())}
    assert s["ddrm"]["estimate"] == "sample" and s["ddrm"]["nfe"] == 3 and s["diffpir"]["nfe"] == 3
    assert s["diffpir"]["params"]["warm_start"] == "classical" and s["ddrm"]["psnr_mean"] > 5
    assert not any(":" in r["solver"] for r in rows) and not any(":" in k for k in s)   # one sample: no NAME:first
    table = capsys.readouterr().out
    assert "estimate" in table and any(ln.split()[:2] == ["diffpir", "tweedie@0.5"] for ln in table.splitlines())


def test_ddrm_without_a_decomposition_and_a_warm_start_out_of_range_are_refused_first(ckpt, tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(_ct(ckpt, out, solvers="fbp,ddrm", n=2)) == 2
    err = capsys.readouterr().err
    assert "solver ddrm needs an operator with the A = P(Λ)T decomposition" in err and "--ct-operator fourier" in err
    assert not (out / "eval.json").exists()
    for extra in (["--coils", "4"], ["--phase", "smooth", "--mask", "random"]):     # SENSE, phased: no decomposition
        mri = tmp_path / f"mri{extra[0]}"
        assert main(["eval", "--checkpoint", ckpt, "--task", "mri", "--acceleration", "2", *extra, "--data", "brain",
                     "--solvers", "zero_filled,ddrm", "--steps", "2", "--num-images", "2", "--out", str(mri)]) == 2
        err = capsys.readouterr().err
        assert "solver ddrm needs an operator with the A = P(Λ)T decomposition" in err and "SENSE (--coils)" in err
        assert not (mri / "eval.json").exists()
    assert main(_ct(ckpt, tmp_path / "ct2", "--set", "solver.warm_start=classical", "--set",
                    "solver.warm_sigma=100", solvers="fbp,projection", n=2)) == 2
    assert "warm_sigma = 100: the warm start must begin inside the model's noise range" in capsys.readouterr().err
    assert not (tmp_path / "ct2" / "eval.json").exists()
