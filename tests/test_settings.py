"""Solver settings have one home (scoreinv.sampling.settings): reconstruct, eval and tune resolve
the same inputs to the same SolverConfig, with one precedence (reference < tuned preset <
--steps < --set) and one --set grammar; shipped models bring their tuned presets."""
import dataclasses

import pytest
import torch
import yaml

from scoreinv import evaluate as E
from scoreinv import reconstruct as R
from scoreinv import tune as T
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.sampling import settings as S
from scoreinv.score import shipped_models
from scoreinv.tasks import build_problem, task_options


@pytest.fixture(scope="module")
def user_preset(tmp_path_factory):
    p = tmp_path_factory.mktemp("preset") / "mine.yaml"
    S.write_preset(p, S.Preset("dds", "mri", {"steps": 12, "eta": 0.3}, {"ssim": 0.5, "trials": 3}))
    return str(p)


def _three(task, solver, preset, steps, sets, noisy, checkpoint):
    """The SolverConfig each command resolves from the same inputs (as each command calls it)."""
    parsed = S.parse_sets(sets)
    rec = R.solver_settings(task, solver, preset, steps, parsed, noisy, checkpoint).cfg
    presets = [S.open_preset(preset, task=task)] if preset is not None else []
    ev = S.SolverConfig(**E.resolve_methods([solver], task, steps, parsed, presets, noisy, checkpoint)[0].params)
    tu = T.base_settings(task, solver, preset, steps, parsed, noisy, checkpoint).cfg
    return rec, ev, tu


TUNED_CT = yaml.safe_load((S.presets_dir() / "ct64" / "ct-projection.yaml").read_text())["params"]
ROWS = [  # task, solver, preset, steps, sets, noisy, checkpoint -> expected fields
    ("ct", "projection", None, None, [], False, "ct64",
     {"steps": TUNED_CT["steps"], "snr": TUNED_CT["snr"], "lam": TUNED_CT["lam"], "final_projection": True}),
    ("ct", "projection", "reference", None, [], False, "ct64", {"steps": 1000, "snr": 0.246, "lam": 0.841}),
    ("ct", "projection", None, 20, ["solver.steps=30"], False, "ct64", {"steps": 30, "snr": TUNED_CT["snr"]}),
    ("ct", "projection", None, 20, ["projection.lambda=0.5"], True, "ct64",
     {"steps": 20, "lam": 0.5, "final_projection": False}),
    ("ct", "projection", None, None, ["solver.final_projection=true"], True, None,
     {"steps": 1000, "final_projection": True}),
    ("mar", "projection", None, None, [], S.noisy_level("mar", 0.0), "ct64",
     {"steps": 50, "corrector": False, "final_projection": True}),
    ("mar", "projection", None, None, [], S.noisy_level("mar", 1e5), "ct64", {"final_projection": False}),
    ("mri", "langevin", None, None, ["langevin.r=2"], False, "mri64", {"steps": 50, "corrector_steps": 2, "r": 2.0}),
    ("mri", "dds", "USER", None, ["solver.final_projection=false"], False, "mri64",
     {"steps": 12, "eta": 0.3, "lam": 1.0, "final_projection": False}),
    ("ct", "dps", None, None, [], False, "ct64", {"steps": 200, "zeta": 1.0}),       # no tuned dps preset
    ("ct", "dds", None, 7, [], False, "SHIPPED_FILE", {"steps": 7, "eta": 1.0}),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}-{r[3]}-{'+'.join(r[4])}-{r[5]}")
def test_reconstruct_eval_and_tune_resolve_the_same_settings(row, user_preset, tiny_checkpoint):
    task, solver, preset, steps, sets, noisy, ck, expected = row
    preset = user_preset if preset == "USER" else preset
    ck = str(shipped_models()["ct64"]) if ck == "SHIPPED_FILE" else ck
    rec, ev, tu = _three(task, solver, preset, steps, sets, noisy, ck)
    assert rec == ev == tu
    assert {k: getattr(rec, k) for k in expected} == expected
    # a checkpoint that is not a shipped model brings no tuned preset
    if ck is not None and preset is None:
        plain, *_ = _three(task, solver, preset, steps, sets, noisy, tiny_checkpoint)
        ref, *_ = _three(task, solver, "reference", steps, sets, noisy, ck)
        assert plain == ref


def test_steps_and_set_win_in_the_same_order_in_every_command(tiny_checkpoint, tmp_path, monkeypatch):
    """Through the command lines themselves: --set solver.steps beats --steps, and noisy CT data
    turn the final projection off, in reconstruct, eval and tune alike (each stopped at its first
    solver call)."""
    from scoreinv.sampling import solvers
    seen = {}

    def stop(name):
        def fn(*a, **k):
            cfg = next(x for x in (*a, *k.values()) if isinstance(x, (S.SolverConfig, E.Method)))
            seen[name] = S.SolverConfig(**cfg.params) if isinstance(cfg, E.Method) else cfg
            raise KeyboardInterrupt
        return fn

    meas = tmp_path / "ct.npz"
    img = tmp_path / "img.npy"
    import numpy as np
    np.save(img, np.random.default_rng(0).random((16, 16)))
    assert main(["simulate", "--task", "ct", "--views", "6", "--noise", "1e4", "--upsample", "1", "--input", str(img),
                 "--out", str(meas)]) == 0
    common = ["--steps", "7", "--set", "solver.steps=3", "--set", "solver.lambda=0.5"]
    monkeypatch.setattr(solvers, "posterior", stop("reconstruct"))
    assert main(["reconstruct", "--checkpoint", tiny_checkpoint, "--measurements", str(meas), "--out",
                 str(tmp_path / "r.npy"), "--solver", "projection", "--no-progress", *common]) == 130
    monkeypatch.setattr(E, "run_method", stop("eval"))
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--task", "ct", "--views", "6", "--noise", "1e4",
                 "--data", "phantoms", "--solvers", "projection", "--num-images", "1", "--out", str(tmp_path / "ev"),
                 *common]) == 130
    monkeypatch.setattr(T, "objective_value", stop("tune"))
    assert main(["tune", "--checkpoint", tiny_checkpoint, "--task", "ct", "--views", "6", "--noise", "1e4", "--data",
                 "phantoms", "--solver", "projection", "--trials", "1", "--num-images", "1", "--storage",
                 f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "p.yaml"), "--bound", "lam=0.5,0.6",
                 *common]) == 130
    fixed = {k: v for k, v in dataclasses.asdict(seen["reconstruct"]).items() if k not in ("snr", "lam")}
    assert seen["reconstruct"] == seen["eval"] and seen["reconstruct"].lam == 0.5
    assert {k: v for k, v in dataclasses.asdict(seen["tune"]).items() if k not in ("snr", "lam")} == fixed
    assert fixed["steps"] == 3 and fixed["final_projection"] is False


def test_noise_rule_is_the_same_for_files_and_task_options():
    """reconstruct reads the noise record of a file, eval and tune the --noise level: both say
    the same for every task (MAR at the paper's 2e7 photons counts as the reference)."""
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for task, levels in (("ct", (0.0, 1e4)), ("mri", (0.0, 0.05)), ("mar", (0.0, 1e5, 2e7))):
        for level in levels:
            extra = {"ct": {"views": 8}, "mri": {"mask": "random"}}.get(task, {})   # 16 columns: a mask with a centre
            prob = build_problem(x, task_options(task, noise=level, **extra), torch.Generator().manual_seed(1))
            assert S.noisy_record(task, prob.noise) == S.noisy_level(task, level), (task, level)
    assert not S.noisy_level("mar", 0.0) and S.noisy_level("mar", 1e5) and S.noisy_level("ct", 1e4)
    assert not S.noisy_record("ct", {"model": "none"})


def test_shipped_presets_travel_with_the_package_and_are_fast():
    """Every shipped model has its tuned presets as package data (the only copy; docs/presets
    points here); each reads as a preset of the (task, solver) its name says, at <= 100 levels."""
    root = S.presets_dir()
    for model in shipped_models():
        files = sorted((root / model).glob("*.yaml"))
        assert files, model
        for f in files:
            task, solver = f.stem.split("-", 1)
            p = S.shipped_preset(model, task, solver)
            assert (p.task, p.solver) == (task, solver) and p.params["steps"] <= 100
            assert p.label.startswith((f"preset {model}/{f.stem} (tuned at ", f"preset {model}/{f.stem} (chosen on validation at "))
    assert {f.stem.split("-")[0] for f in (root / "ct64").glob("*.yaml")} == {"ct", "mar"}
    assert {f.stem.split("-")[0] for f in (root / "mri64").glob("*.yaml")} == {"mri"}
    assert S.shipped_model("ct64") == "ct64" and S.shipped_model("runs/ct64") is None
    assert S.shipped_preset("mri64", "ct", "projection") is None


def test_the_documented_presets_read_as_the_task_and_solver_their_names_say():
    """docs/presets/MODEL/TASK-SOLVER[-variant].yaml (the measured, unshipped presets the results cite
    for --preset) each load as a preset of that task and solver with tuned parameters."""
    from pathlib import Path
    files = sorted((Path(__file__).resolve().parents[1] / "docs" / "presets").glob("*/*.yaml"))
    assert len(files) >= 3
    for f in files:
        task, solver = f.stem.split("-")[:2]
        p = S.load_preset(f, solver=solver, task=task)
        assert p.params and p.params["steps"] <= 100, f


def test_set_grammar_and_refusals():
    assert S.parse_sets(["solver.snr=0.3", "projection.λ=0.9", "tv.weight=1e-3", "solver.order=paper"]) == {
        "solver": {"snr": 0.3, "order": "paper"}, "projection": {"lam": 0.9}, "tv": {"weight": 1e-3}}
    for bad, msg in ((["snr=0.3"], "TARGET.KEY=VALUE"), (["solver.=1"], "TARGET.KEY=VALUE"),
                     (["solver.lam=1", "solver.lambda=0.5"], "solver.lam is given twice"),
                     (["solver.snr=[1"], "cannot read the value")):
        with pytest.raises(ScoreinvError, match=msg):
            S.parse_sets(bad)
    for sets, msg in ((["solver.order=sideways"], "unknown --set solver.order 'sideways'"),
                      (["solver.snr=.inf"], "expected a finite number"),
                      (["solver.cg_iters=0"], "--set solver.cg_iters = 0: expected a positive integer"),
                      (["solver.predictor=false", "solver.corrector=false"], "cannot both be false")):
        with pytest.raises(ScoreinvError, match=msg):
            S.resolve("ct", "projection", sets=S.parse_sets(sets))
    with pytest.raises(ScoreinvError, match="'tv' is not a target here"):
        R.solver_settings("ct", "projection", sets=S.parse_sets(["tv.weight=1"]))
    with pytest.raises(ScoreinvError, match="--preset 'fast': expected a preset file or 'reference'"):
        S.resolve("ct", "projection", preset="fast")


def test_tune_writes_the_tuned_layers_and_records_the_fixed_ones(tiny_checkpoint, tmp_path, capsys):
    """A study started from a preset keeps its fixed parameters (corrector_steps) in the preset it
    writes, so that the written preset reproduces the study's setting; the study's configuration
    holds every fixed parameter (final_projection included)."""
    import optuna
    start = tmp_path / "start.yaml"
    S.write_preset(start, S.Preset("langevin", "ct", {"steps": 2, "corrector_steps": 2, "snr": 0.3, "r": 1.0}))
    out = tmp_path / "best.yaml"
    argv = ["tune", "--checkpoint", tiny_checkpoint, "--task", "ct", "--views", "6", "--data", "phantoms",
            "--solver", "langevin", "--trials", "1", "--num-images", "1", "--storage",
            f"sqlite:///{tmp_path / 's.db'}", "--study-name", "s", "--out", str(out), "--preset", str(start)]
    assert main(argv) == 0
    assert f"preset {start}: corrector_steps, r, snr, steps" in capsys.readouterr().out
    written = S.load_preset(out)
    assert written.params["corrector_steps"] == 2 and written.params["steps"] == 2
    assert set(written.params) == {"steps", "corrector_steps", "snr", "r"}
    cfg = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").user_attrs["scoreinv_config"]
    assert cfg["base"] == {"steps": 2, "cg_iters": 10, "final_projection": True, "corrector_steps": 2}
