"""`scoreinv tune`: search space, presets, a study interrupted and resumed, refusals."""
import optuna
import pytest
import torch
import yaml

from scoreinv import tune as T
from scoreinv.cli import main
from scoreinv.errors import Diverged, ScoreinvError
from scoreinv.sampling import settings as S
from scoreinv.sampling.solvers import solver_config




@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


def _args(ckpt, tmp_path, trials, *extra):
    return ["tune", "--checkpoint", ckpt, "--task", "ct", "--views", "6", "--data", "phantoms", "--solver",
            "projection", "--trials", str(trials), "--steps", "2", "--num-images", "2", "--study-name", "s",
            "--storage", f"sqlite:///{tmp_path / 'db' / 'study.db'}", "--out", str(tmp_path / "best.yaml"), *extra]


def _trials(tmp_path):
    st = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db' / 'study.db'}")
    return st.get_trials(deepcopy=False)


def test_search_space_bounds():
    assert T.search_space("projection", "ct", solver_config("projection", "ct")) == {
        "snr": (0.0, 0.4, False), "lam": (0.0, 1.0, False)}
    assert T.search_space("baseline", "mri", solver_config("baseline", "mri")) == {
        "snr": (0.2, 0.8, False), "r": (0.1, 20.0, True)}
    assert T.search_space("langevin_projection", "mar", solver_config("langevin_projection", "mar"))["snr"] == \
        (0.0, 0.4, False)
    # the MAR projection preset is predictor-only: snr has no effect and is not searched
    assert T.search_space("projection", "mar", solver_config("projection", "mar")) == {"lam": (0.0, 1.0, False)}
    assert T.search_space("dds", "ct", solver_config("dds", "ct")) == {"lam": (0.0, 1.0, False),
                                                                      "eta": (0.0, 1.0, False)}
    # ddrm and diffpir also search the factor on their fresh noise, and σ_w when they warm-start
    assert T.search_space("ddrm", "mri", solver_config("ddrm", "mri")) == {
        "eta": (0.0, 1.0, False), "eta_b": (0.0, 1.0, False), "noise_scale": (0.01, 1.0, False)}
    warm = solver_config("diffpir", "ct", warm_start="classical")
    assert T.search_space("diffpir", "ct", warm) == {
        "hqs_lambda": (0.1, 100.0, True), "hqs_zeta": (0.0, 1.0, False), "noise_scale": (0.01, 1.0, False),
        "warm_sigma": (0.05, 10.0, True)}
    # a warm start from TV also searches the TV weight
    tv = solver_config("ddrm", "mri", warm_start="tv")
    assert T.search_space("ddrm", "mri", tv) == {
        "eta": (0.0, 1.0, False), "eta_b": (0.0, 1.0, False), "noise_scale": (0.01, 1.0, False),
        "warm_sigma": (0.05, 10.0, True), "warm_weight": (1e-5, 1e-1, True)}


def test_search_space_bound_overrides():
    base = solver_config("langevin", "ct")
    assert T.search_space("langevin", "ct", base, {"snr": (0.0, 1.0)}) == {"snr": (0.0, 1.0, False),
                                                                         "r": (0.1, 20.0, True)}
    assert T.search_space("langevin", "ct", base, {"r": ("0.5", "2")})["r"] == (0.5, 2.0, True)
    with pytest.raises(ScoreinvError, match="searches \\['r', 'snr'\\], not 'lam'"):
        T.search_space("langevin", "ct", base, {"lam": (0, 1)})
    with pytest.raises(ScoreinvError, match="LOW < HIGH"):
        T.search_space("langevin", "ct", base, {"snr": (0.5, 0.1)})
    with pytest.raises(ScoreinvError, match="log scale"):
        T.search_space("langevin", "ct", base, {"r": (0.0, 2.0)})
    with pytest.raises(ScoreinvError, match=r"--bound lam = 1.5 is outside its valid range \[0, 1\]"):
        T.search_space("projection", "ct", solver_config("projection", "ct"), {"lam": (0.5, 1.5)})


def test_preset_roundtrip_and_errors(tmp_path):
    p = tmp_path / "p.yaml"
    S.write_preset(p, S.Preset("dds", "mri", {"lam": 0.7, "eta": 0.5, "steps": 20}, {"ssim": 0.9}))
    got = S.load_preset(p, solver="dds", task="mri")
    assert got.params == {"lam": 0.7, "eta": 0.5, "steps": 20} and got.meta["ssim"] == 0.9
    with pytest.raises(ScoreinvError, match="not 'projection'"):
        S.load_preset(p, solver="projection")
    with pytest.raises(ScoreinvError, match="tuned for task 'mri'"):
        S.load_preset(p, task="ct")
    with pytest.raises(ScoreinvError, match="no such file"):
        S.load_preset(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("solver: [unclosed")
    with pytest.raises(ScoreinvError, match="not a readable YAML"):
        S.load_preset(tmp_path / "bad.yaml")
    (tmp_path / "lam.yaml").write_text(yaml.safe_dump({"solver": "projection", "task": "ct", "params": {"lam": 2}}))
    with pytest.raises(ScoreinvError, match="lam"):
        S.load_preset(tmp_path / "lam.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ScoreinvError, match="solver, task and params"):
        S.load_preset(tmp_path / "list.yaml")


def test_interrupted_study_resumes_with_its_trials(ckpt, tmp_path, monkeypatch):
    assert main(_args(ckpt, tmp_path, 3)) == 0
    first = [(t.number, t.params, t.value) for t in _trials(tmp_path)]
    assert len(first) == 3 and all(t.state.name == "COMPLETE" for t in _trials(tmp_path))
    for _, params, _ in first:
        assert 0 <= params["snr"] <= 0.4 and 0 <= params["lam"] <= 1
    # a second run asking for 5 is interrupted during its first trial (as Ctrl-C would)
    real = T.objective_value
    monkeypatch.setattr(T, "objective_value", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(_args(ckpt, tmp_path, 5)) == 130
    monkeypatch.setattr(T, "objective_value", real)
    assert [t.state.name for t in _trials(tmp_path)] == ["COMPLETE"] * 3 + ["FAIL"]
    gp = []
    real_rel = optuna.samplers.GPSampler.sample_relative

    def spy(self, study, trial, space):
        out = real_rel(self, study, trial, space)
        gp.append(out)
        return out

    monkeypatch.setattr(optuna.samplers.GPSampler, "sample_relative", spy)
    # resume: 2 more completed trials, proposed by the Gaussian process (3 startup trials exist)
    assert main(_args(ckpt, tmp_path, 5, "--startup-trials", "3")) == 0
    assert len(gp) == 2 and all(set(p) == {"snr", "lam"} for p in gp)
    trials = _trials(tmp_path)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 5 and [(t.number, t.params, t.value) for t in done[:3]] == first
    assert [t.params for t in done[3:]] == gp
    best = max(done, key=lambda t: t.value)
    preset = S.load_preset(tmp_path / "best.yaml", solver="projection", task="ct")
    assert preset.params == {"steps": 2, **best.params} and preset.meta["ssim"] == pytest.approx(best.value)
    assert preset.meta["trials"] == 5
    assert main(_args(ckpt, tmp_path, 5)) == 0                   # nothing left to do
    assert len(_trials(tmp_path)) == len(trials)
    # the preset is accepted by eval
    assert main(["eval", "--checkpoint", ckpt, "--task", "ct", "--views", "6", "--data", "phantoms", "--solvers",
                 "fbp,projection", "--preset", str(tmp_path / "best.yaml"), "--num-images", "1",
                 "--out", str(tmp_path / "ev")]) == 0


def test_diverged_trials_are_scored_not_failed(ckpt, tmp_path, monkeypatch, capsys):
    """A diverging sampler completes its trial with the floor score (a failed trial would be
    invisible to the GP, which then proposes the same point forever); its parameters never
    become the preset."""
    real = T.objective_value

    def flaky(model, problem, cfg, *a, **k):
        if cfg.snr > 0.2:
            raise Diverged("sampler diverged: NaN/Inf at noise level 2 of 2")
        return real(model, problem, cfg, *a, **k)

    monkeypatch.setattr(T, "objective_value", flaky)
    assert main(_args(ckpt, tmp_path, 6, "--startup-trials", "3")) == 0
    trials = _trials(tmp_path)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    bad = [t for t in trials if t.params["snr"] > 0.2]
    assert bad and all(t.value == T.diverged_score("ssim") == -1.0 and "diverged" in t.user_attrs for t in bad)
    assert "diverged at snr=" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["params"]["snr"] <= 0.2
    # a study in which every trial diverges recommends nothing
    monkeypatch.setattr(T, "objective_value", lambda *a, **k: (_ for _ in ()).throw(Diverged("NaN")))
    other = _args(ckpt, tmp_path, 2, "--study-name", "all-bad", "--out", str(tmp_path / "none.yaml"))
    assert main(other) == 2
    assert "no trial gave a finite reconstruction" in capsys.readouterr().err
    assert not (tmp_path / "none.yaml").exists()


def test_objective_uses_fixed_seeds(ckpt):
    from scoreinv.evaluate import load_images
    from scoreinv.data import build_dataset
    from scoreinv.score import load_score_model
    from scoreinv.tasks import build_problem, task_options
    model, _ = load_score_model(ckpt)
    x = load_images(build_dataset("phantoms", "val", 16), range(3))
    prob = build_problem(x, task_options("ct", views=6), torch.Generator().manual_seed(0))
    cfg = solver_config("projection", "ct", steps=2)
    a = T.objective_value(model, prob, cfg, "psnr", batch_size=2, seed=0)
    assert a == T.objective_value(model, prob, cfg, "psnr", batch_size=2, seed=0)   # common random numbers
    assert a != T.objective_value(model, prob, cfg, "psnr", batch_size=2, seed=1)


def test_refusals(ckpt, tmp_path, capsys):
    assert main(_args(ckpt, tmp_path, 1, "--split", "test")) == 2
    assert "test images" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--metric", "nmse")) == 2
    assert "unknown --metric 'nmse'" in capsys.readouterr().err
    bad = _args(ckpt, tmp_path, 1)
    bad[bad.index("--solver") + 1] = "tv"
    assert main(bad) == 2 and "unknown --solver 'tv'" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--num-images", "65")) == 2   # phantoms val split: 64 images
    assert "holds only 64" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--storage", "study.db")) == 2
    assert "database URL" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1)) == 0
    other = _args(ckpt, tmp_path, 2)
    other[other.index("--views") + 1] = "5"
    assert main(other) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--metric", "ssim_mar")) == 2
    assert "mar only" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--bound", "snr=0.5")) == 2
    assert "PARAM=LOW,HIGH" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--bound", "eta=0,1")) == 2
    assert "not 'eta'" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--bound", "snr=0,1", "--bound", "snr=0,2")) == 2
    assert "given twice" in capsys.readouterr().err


def test_out_that_is_not_the_studys_preset_is_refused(ckpt, tmp_path, capsys):
    """tune replaces its own preset on resume; any other existing file needs --overwrite, and the
    check comes before any trial (no study is created)."""
    out = tmp_path / "best.yaml"
    out.write_text("my notes\n")
    assert main(_args(ckpt, tmp_path, 1)) == 2
    assert "is not the preset of study 's'" in capsys.readouterr().err
    assert out.read_text() == "my notes\n" and not (tmp_path / "db").exists()
    S.write_preset(out, S.Preset("projection", "ct", {"snr": 0.1}, {"study": "other", "trials": 1}))
    assert main(_args(ckpt, tmp_path, 1)) == 2 and "study 's'" in capsys.readouterr().err
    assert main(_args(ckpt, tmp_path, 1, "--overwrite")) == 0
    assert S.load_preset(out).meta["study"] == "s"
    assert main(_args(ckpt, tmp_path, 2)) == 0                  # its own preset: replaced on resume
    assert S.load_preset(out).meta["trials"] == 2
    db = tmp_path / "db" / "study.db"
    assert main(_args(ckpt, tmp_path, 2, "--out", str(db), "--overwrite")) == 2
    assert "is the input file" in capsys.readouterr().err


def test_out_equal_to_the_preset_or_checkpoint_read_is_refused(ckpt, tmp_path, capsys):
    """--out never replaces a file the run reads, even with --overwrite: the --preset it starts
    from (which would change the study's fixed settings under it) or the checkpoint."""
    start = tmp_path / "start.yaml"
    S.write_preset(start, S.Preset("projection", "ct", {"snr": 0.1}, {"study": "s", "trials": 1}))
    before = start.read_text()
    ck = f"{ckpt}/checkpoints-meta/checkpoint.pt"
    for out in (start, ck):
        assert main(_args(ckpt, tmp_path, 1, "--preset", str(start), "--out", str(out), "--overwrite")) == 2
        assert "is the input file" in capsys.readouterr().err
    assert start.read_text() == before and not (tmp_path / "db").exists()


def test_pick_spread_tunes_on_images_spread_over_the_split_and_is_part_of_the_study(ckpt, tmp_path, monkeypatch,
                                                                                    capsys):
    """--pick spread: the objective's images are spread evenly over the split (as eval's --pick spread),
    and a study made with one pick refuses to resume with the other."""
    from scoreinv.data.base import Subset, spread_indices
    from scoreinv.data.registry import build_dataset
    from scoreinv.evaluate import load_images
    seen = []
    real = T.tune

    def spy(model, problem, *a, **k):
        seen.append(problem.x.clone())
        return real(model, problem, *a, **k)

    monkeypatch.setattr("scoreinv.commands.tune.tune", spy)
    assert main(_args(ckpt, tmp_path, 1, "--pick", "spread")) == 0
    ds = build_dataset("phantoms", "val", 16, seed=0)
    idx = spread_indices(2, len(ds))
    assert idx[-1] == len(ds) - 1 and torch.equal(seen[0], load_images(Subset(ds, idx), range(2)))
    assert not torch.equal(seen[0], load_images(ds, range(2)))
    assert S.load_preset(tmp_path / "best.yaml").meta["pick"] == "spread"      # the preset says how it was tuned
    capsys.readouterr()
    assert main(_args(ckpt, tmp_path, 2)) == 2                    # the same study with the first images
    assert "another configuration" in capsys.readouterr().err
