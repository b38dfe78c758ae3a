"""Bayesian optimisation of sampler hyperparameters on validation images (docs/design.md §4.3), and presets.

`tune(...)` searches, with optuna's Gaussian-process sampler (GPSampler: Matérn-5/2 GP, log
expected improvement; the first `startup_trials` points are uniform random):
- projection solvers (projection, langevin_projection): (snr, λ); λ ∈ [0, 1];
- likelihood solvers (baseline, langevin): (snr, r), r ∈ [0.1, 20] on a log scale;
- dds: (λ, eta), eta ∈ [0, 1]; dps: zeta ∈ [0.01, 10] (log);
- ddrm: (eta, eta_b) ∈ [0, 1]²; diffpir: hqs_lambda ∈ [0.1, 100] (log), hqs_zeta ∈ [0, 1]; both also
  noise_scale ∈ [0.01, 1], the factor on each step's fresh noise (docs/solver_factors.md: the
  largest single factor of the reference-to-tuned gain, and one that depends on image size and noise);
- with a warm start (warm_start: classical or tv among the fixed settings), also warm_sigma ∈ [0.05, 10]
  (log), and with warm_start tv the TV weight warm_weight ∈ [1e-5, 0.1] (log)
  (the tuned ct256 preset starts at σ_w 0.16 from TV at weight 5e-5: both inside);
with snr ∈ [0, 0.4] for CT and MAR, [0.2, 0.8] for MRI. snr is not searched when the solver
runs no corrector (the MAR projection preset is predictor-only). The objective is the mean of a
metric (SSIM by default) over validation images, with the same random seeds in every trial
(common random numbers, so trials differ only by their parameters). A trial whose sampler
diverges (NaN/Inf: steps too large) is completed with the metric's worst value rather than
failed, so the Gaussian process learns to stay away from it.

Persistence and parallelism: the study lives in an optuna storage (`sqlite:///study.db`, or
PostgreSQL `postgresql+psycopg2://user:password@host:5432/dbname` to tune across machines,
which needs the psycopg2 package) and every finished trial is committed, so an interrupted
run resumes with its earlier trials (load_if_exists). `trials` is the total number of
completed trials wanted: a rerun adds the missing ones, and several worker processes (same
command, same storage and study name, a different --worker number each) share one study and stop
together. Trials of a killed worker are marked failed by the storage heartbeat (after 2
minutes) and are not counted. A study records its configuration (the fixed solver settings
included); another configuration under the same name is refused. The best parameters are
written atomically after every trial as a YAML preset that `eval` and `reconstruct` read
(`sampling.settings.load_preset`); an existing file that is not this study's preset is refused
(`check_preset_output`). The fixed settings come from `base_settings`: the same precedence as
reconstruct and eval (reference < tuned preset < --steps < --set; `sampling.settings`).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import optuna
import torch
import yaml
from optuna.samplers import GPSampler
from optuna.trial import TrialState

from .atomic import check_new_output
from .data.base import derive_seed
from .errors import Diverged, ScoreinvError, check_choice, check_int
from .metrics import LOWER_IS_BETTER, METRICS, NEEDS_METAL_MASK, get_metric
from .runinfo import config_diff
from .sampling.settings import (SOLVERS, TASKS, USES, Preset, Resolved, SolverConfig, check_applies, check_param,
                                check_targets, open_preset, record, resolve, shipped_model, validate, write_preset)
from .sampling.inputs import problem_inputs
from .sampling.solvers import check_run, sigma_of, solve
from .tasks import Problem, slice_operator

SNR_BOUNDS = {"ct": (0.0, 0.4), "mar": (0.0, 0.4), "mri": (0.2, 0.8)}
NOISE_SCALE = {"noise_scale": (0.01, 1.0, False)}     # ddrm, diffpir (module docstring)
OBJECTIVES = tuple(m for m in METRICS if m not in LOWER_IS_BETTER)   # the metrics a study can maximise
HEARTBEAT_S, GRACE_S = 60, 120


def diverged_score(metric: str) -> float:
    """The objective of a trial whose sampler diverged: the metric's lowest possible value (SSIM −1;
    PSNR 0 dB, as images are clipped to [0, 1] so the MSE is at most 1)."""
    return -1.0 if metric.startswith("ssim") else 0.0


def search_space(solver: str, task: str, base: SolverConfig,
                 bounds: dict | None = None) -> dict[str, tuple[float, float, bool]]:
    """{parameter: (low, high, log scale)} searched for `solver` on `task` (module docstring);
    `bounds` {parameter: (low, high)} replaces the default range of a searched parameter."""
    space = _default_space(solver, task, base)
    for k, v in (bounds or {}).items():
        if k not in space:
            raise ScoreinvError(f"--bound {k}: {solver} on {task} searches {sorted(space)}, not {k!r}")
        try:
            lo, hi = (float(b) for b in v)
        except (TypeError, ValueError):
            raise ScoreinvError(f"--bound {k}: expected two numbers LOW,HIGH, got {v!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ScoreinvError(f"--bound {k}: expected finite LOW < HIGH, got {lo:g}, {hi:g}")
        log = space[k][2]
        if log and lo <= 0:
            raise ScoreinvError(f"--bound {k}: searched on a log scale, so LOW must be > 0 (got {lo:g})")
        for b in (lo, hi):      # both ends must be valid solver parameters
            check_param(k, b, "--bound ", solver)
        space[k] = (lo, hi, log)
    return space


def warm_space(base: SolverConfig) -> dict:
    """warm_sigma's range when the fixed settings warm-start (and warm_weight's, the TV weight, when they
    start from TV), else nothing."""
    if base.warm_start == "none":
        return {}
    weight = {"warm_weight": (1e-5, 1e-1, True)} if base.warm_start == "tv" else {}
    return {"warm_sigma": (0.05, 10.0, True), **weight}


def _default_space(solver: str, task: str, base: SolverConfig) -> dict[str, tuple[float, float, bool]]:
    check_choice("solver", solver, SOLVERS)
    check_choice("task", task, TASKS)
    snr = {"snr": (*SNR_BOUNDS[task], False)}
    if solver == "projection" and not base.corrector:
        snr = {}
    if solver in ("projection", "langevin_projection"):
        return {**snr, "lam": (0.0, 1.0, False), **warm_space(base)}
    if solver in ("baseline", "langevin"):
        return {**snr, "r": (0.1, 20.0, True), **warm_space(base)}
    warm = warm_space(base)
    if solver == "dds":
        return {"lam": (0.0, 1.0, False), "eta": (0.0, 1.0, False), **warm}
    if solver == "ddrm":
        return {"eta": (0.0, 1.0, False), "eta_b": (0.0, 1.0, False), **NOISE_SCALE, **warm}
    if solver == "diffpir":
        return {"hqs_lambda": (0.1, 100.0, True), "hqs_zeta": (0.0, 1.0, False), **NOISE_SCALE, **warm}
    return {"zeta": (0.01, 10.0, True), **warm}


def base_settings(task: str, solver: str, preset=None, steps=None, sets: dict | None = None, noisy: bool = False,
                  checkpoint: str | None = None) -> Resolved:
    """The settings a study starts from (its fixed parameters; the searched ones are replaced by
    each trial's): `settings.resolve`, as reconstruct and eval resolve theirs. preset: a file,
    'reference' or None (the shipped model's tuned preset); sets: parse_sets of --set."""
    sets = sets or {}
    check_targets(sets, ("solver", solver))
    check_applies(sets, [solver])
    return resolve(task, solver, preset=open_preset(preset, solver, task), model=shipped_model(checkpoint),
                   steps=steps, sets=sets, noisy=noisy)


def check_preset_output(path, study_name: str, overwrite: bool = False, storage: str | None = None,
                        inputs=()) -> Path:
    """Refuse, before any trial, an --out that cannot be written or that exists and is not this
    study's own preset (which a resumed study replaces); --overwrite replaces any preset file,
    never the database nor `inputs` (the files the run reads: --preset, the checkpoint)."""
    db = storage[len("sqlite:///"):] if storage and storage.startswith("sqlite:///") else None
    p = check_new_output(path, overwrite=True, flag="--out", inputs=[db, *inputs])
    if p.exists() and not overwrite:
        try:
            d = yaml.safe_load(p.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            d = None
        if not (isinstance(d, dict) and d.get("study") == study_name and {"solver", "task", "params"} <= set(d)):
            raise ScoreinvError(f"--out {p}: exists and is not the preset of study {study_name!r}; "
                                "pass --overwrite to replace it, or choose another --out")
    return p


def open_storage(url: str):
    """An optuna RDB storage with heartbeat for `url` (sqlite:///file.db, postgresql+psycopg2://...)."""
    if not isinstance(url, str) or "://" not in url:
        raise ScoreinvError(f"--storage {url!r}: expected a database URL such as sqlite:///study.db or "
                            "postgresql+psycopg2://user:password@host/dbname")
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if str(db) in ("", ":memory:"):
            raise ScoreinvError("--storage: an in-memory database cannot resume; give a file, sqlite:///study.db")
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():      # heartbeat_interval is marked experimental in optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as e:  # SQLAlchemy: unknown dialect, unreachable server, missing driver
        raise ScoreinvError(f"--storage {url!r}: cannot open ({type(e).__name__}: {str(e)[:200]})") from None


def objective_value(model, problem: Problem, cfg: SolverConfig, metric: str, batch_size: int, seed: int,
                    device="cpu") -> float:
    """Mean `metric` of one sample per validation image, solved in batches with fixed seeds."""
    fn = get_metric(metric)
    vals = []
    n = problem.x.shape[0]
    for b0 in range(0, n, batch_size):
        sl = slice(b0, min(b0 + batch_size, n))
        op = slice_operator(problem.op, sl)
        g = torch.Generator().manual_seed(derive_seed(seed, "tune", b0))
        x, _ = solve(model, op, problem.y[sl].to(device), cfg, g, **problem_inputs(problem, cfg, sl))
        x = (x.abs() if x.is_complex() else x).float().cpu()
        if not bool(torch.isfinite(x).all()):
            raise Diverged(f"reconstruction diverged (NaN/Inf) with {cfg}")
        ref = problem.x[sl]
        mm = problem.metal_mask[sl] if problem.metal_mask is not None else None
        try:
            vals.append(fn(x, ref, metal_mask=mm) if metric in NEEDS_METAL_MASK else fn(x, ref))
        except ScoreinvError as e:    # e.g. no second histogram peak in a failed reconstruction
            raise Diverged(f"{metric} undefined ({e}) with {cfg}") from None
    v = float(torch.cat(vals).mean())
    if math.isnan(v):
        raise Diverged(f"{metric} is NaN with {cfg}")
    return v


def tune(model, problem: Problem, solver: str, *, trials: int, storage: str, study_name: str, config: dict,
         metric: str = "ssim", base: Resolved | None = None, seed: int = 0, worker: int = 0,
         batch_size: int = 8, device="cpu", startup_trials: int = 10, out: str | None = None,
         bounds: dict | None = None, log=print) -> dict:
    """Run (or resume) the study until it holds `trials` completed trials; write the preset to `out`.

    problem: the validation problem (tasks.build_problem of validation images); base: the
    settings the study starts from (`base_settings`; default: the reference preset), whose
    unsearched parameters stay fixed and enter the study's configuration; config: what
    identifies the study (data, options, model, metric...), stored in the study and compared on
    resume; the preset written holds base's parameters above the reference (tuned preset,
    --steps, --set) and the best searched ones; seed: of the solvers (part of the
    objective); worker: enters only the sampler's seed (give parallel workers different ones);
    bounds: {parameter: (low, high)} replacing default search ranges (search_space).
    Returns {best_value, best_params, n_complete, preset}.
    """
    task = problem.task
    check_choice("metric", metric, OBJECTIVES)
    if metric in NEEDS_METAL_MASK and task != "mar":
        raise ScoreinvError(f"metric {metric!r} needs a metal mask; it applies to task mar only")
    check_int("--trials", trials)
    check_int("--startup-trials", startup_trials)
    base = base if base is not None else resolve(task, solver, preset="reference")
    if base.cfg.name != solver:
        raise ScoreinvError(f"tune: base settings are for solver {base.cfg.name!r}, not {solver!r}")
    space = search_space(solver, task, base.cfg, bounds)
    check_run(base.cfg, problem.op, model.sde)          # e.g. ddrm on an operator without the decomposition
    if "warm_sigma" in space:                            # the warm start must begin inside the model's range
        lo, hi, lg = space["warm_sigma"]
        top = 0.99 * sigma_of(model.sde, 1.0)
        if lo >= top:
            raise ScoreinvError(f"warm_sigma: the search range starts at {lo:g}, above the model's σ_max {top:.3g}")
        space["warm_sigma"] = (lo, min(hi, top), lg)
    fixed = record({k: getattr(base.cfg, k) for k in USES[solver] if k not in space})
    keep = {k: v for k, v in base.explicit().items() if k not in space}
    config = {**config, "solver": solver, "task": task, "metric": metric, "base": fixed,
              "space": {k: list(v) for k, v in space.items()}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage)
    study = optuna.create_study(storage=st, study_name=study_name, direction="maximize", load_if_exists=True)
    old = study.user_attrs.get("scoreinv_config")
    if old is None:
        study.set_user_attr("scoreinv_config", config)
    elif old != config:
        diff = config_diff(old, config)
        raise ScoreinvError(f"study {study_name!r} in {storage} was made with another configuration (differs in: "
                            f"{', '.join(diff)}); use another --study-name")
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    # a fresh sampler seed per start and worker, so a resumed or parallel run does not replay the
    # random start points
    study.sampler = GPSampler(seed=derive_seed(seed, worker, done, len(study.trials)) % 2 ** 31,
                              n_startup_trials=startup_trials)

    def objective(trial):
        params = {k: trial.suggest_float(k, lo, hi, log=lg) for k, (lo, hi, lg) in space.items()}
        cfg = validate(dataclasses.replace(base.cfg, **params))
        try:
            return objective_value(model, problem, cfg, metric, batch_size, seed, device)
        except Diverged as e:
            # scored, not failed: the Gaussian process ignores failed trials and would propose the
            # same diverging point again and again
            trial.set_user_attr("diverged", str(e)[:300])
            return diverged_score(metric)

    def write_best(study):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        finite = [t for t in done if "diverged" not in t.user_attrs]
        if not finite:            # none completed yet, or every one diverged: nothing to recommend
            return None
        best = max(finite, key=lambda t: t.value)
        if out:
            n = len(done)
            write_preset(out, Preset(solver, task, {**keep, **best.params},
                                     {metric: float(best.value), "trials": n, "study": study_name,
                                      "setting": config.get("setting"), "data": config.get("data"),
                                      "n_images": int(problem.x.shape[0]),
                                      **({"pick": config["pick"]} if "pick" in config else {})}))
        return best

    def after_trial(study, trial):
        best = write_best(study)
        if trial.state == TrialState.COMPLETE and "diverged" in trial.user_attrs:
            log(f"trial {trial.number}: diverged at {_fmt(trial.params)}, scored {metric} = {diverged_score(metric):g}")
        elif trial.state == TrialState.COMPLETE:
            n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            log(f"trial {trial.number}: {metric} {trial.value:.4f} at {_fmt(trial.params)}; best {best.value:.4f} "
                f"at {_fmt(best.params)} ({n}/{trials})")
        elif trial.state == TrialState.FAIL:
            log(f"trial {trial.number} failed at {_fmt(trial.params)}")

    if done < trials:
        cb = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE,))
        study.optimize(objective, n_trials=trials - done, callbacks=[cb, after_trial])
    else:
        log(f"study {study_name!r} already holds {done} completed trials (>= --trials {trials})")
    best = write_best(study)
    if best is None:
        raise ScoreinvError(f"study {study_name!r}: no trial gave a finite reconstruction (every one diverged "
                            "or failed); narrow the search with --bound or give the solver more --steps")
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return {"best_value": float(best.value), "best_params": dict(best.params), "n_complete": n,
            "preset": {**keep, **best.params}}


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())
