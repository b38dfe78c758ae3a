"""Solver settings, in one place (docs/design.md §6.5): the solver table, the reference presets, tuned preset files,
the `--set` grammar and the precedence rule that `reconstruct`, `eval`, `tune` and `demo` share.

Precedence, per parameter, later layers win (`resolve`):
1. SolverConfig defaults;
2. the reference preset of (task, solver): the published hyperparameters (REFERENCE;
   docs/design.md §2.10), and the data rule for `final_projection` (below);
3. a tuned preset: a preset file (`--preset FILE`, written by `scoreinv tune`), else the preset
   that a shipped model brings (`--checkpoint ct64` -> resources/presets/ct64/TASK-SOLVER.yaml);
   `--preset reference` skips this layer;
4. `--steps`;
5. `--set solver.KEY=VALUE` (every score solver), then `--set SOLVER.KEY=VALUE` (that solver).

The `--set` grammar (one for every command): TARGET.KEY=VALUE, where TARGET is `solver` or a
method name (eval: also a classical baseline, e.g. tv.weight=1e-3), KEY a SolverConfig field
('lambda' and 'λ' are aliases of lam), VALUE a YAML scalar (0.3, 1e-3, true, paper).

The final hard projection (λ = 1 with y, after the Tweedie step; docs/design.md §2.9) assumes
noise-free y: with noisy y it puts the noise back into the measured components.
It is on unless the data carry more noise than the reference acquisition: CT and MRI with noise
added, MAR with fewer photons per ray than the paper's 2e7 (at 2e7 the noise is negligible and
the hard projection gains 0.2-0.4 dB, measured on 4 held-out phantoms with ct64), and MRI seen
through an estimated phase (`--phase smooth`), whose misfit no real image fits
(docs/design.md §3.5, (D32)); such data are labelled "noisy data" in the printed origin of the settings.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .. import atomic
from ..errors import ScoreinvError, check_choice, check_int, check_range
from ..physics.mar_spectra import PHOTONS as MAR_PHOTONS
from ..score import shipped_models
from ..tasks import TASKS

SOLVERS = ("baseline", "langevin", "langevin_projection", "projection", "dds", "dps", "ddrm", "diffpir")
WARM_STARTS = ("none", "classical", "tv")
COUPLINGS = ("none", "ztv")
COUPLED_SOLVERS = ("projection", "langevin_projection", "dds", "diffpir")   # a data-consistency step to couple
REFERENCE_KEYWORD = "reference"      # --preset reference: the reference preset, no tuned one
ALIASES = {"lambda": "lam", "λ": "lam"}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class SolverConfig:
    """One solver's settings (the fields of the parameter table PARAMS)."""
    name: str = "projection"
    steps: int = 1000             # noise levels
    snr: float = 0.16             # Langevin corrector signal-to-noise ratio
    lam: float = 1.0              # λ of the projection
    r: float = 1.0                # likelihood std rate (projection_sigma_rate) for baseline/langevin
    corrector_steps: int = 1
    predictor: bool = True        # projection: False = corrector only
    corrector: bool = True        # projection: False = predictor only (the MAR reference)
    order: str = "code"           # code | paper (Eq. 7)
    eta: float = 0.85             # dds stochasticity
    rho: float = 7.0              # EDM schedule exponent (dds, dps)
    zeta: float = 1.0             # dps step
    cg_iters: int = 10            # CG iterations for operators without an exact T
    final_projection: bool = True
    eta_b: float = 1.0            # ddrm: weight of y on measured coefficients (Kawar et al. η_b)
    hqs_lambda: float = 7.0       # diffpir: λ of ρ_t = λ σ_n²/σ_t² (Zhu et al.)
    hqs_zeta: float = 0.3         # diffpir: ζ, share of fresh noise in the re-noising
    sigma_floor: float = 1e-3     # diffpir: σ_n floor (x ‖A‖) for noise-free data
    noise_scale: float = 1.0      # ddrm, diffpir: factor on the noise of each step (1 = the papers)
    warm_start: str = "none"      # none | classical | tv: start at warm_sigma from that reconstruction
    warm_sigma: float = 2.0       # σ the warm start begins at (image units)
    warm_weight: float = 1e-3     # warm_start tv: the TV weight (relative to ‖A‖², as the tv baseline)
    sigma_end: float = 0.0        # > 0: end the schedule at σ_end; its Tweedie estimate is the output
    coupling: str = "none"        # none | ztv: z-TV across the slices of a volume in every data-consistency step
    ztv_lambda: float = 0.01      # λ_z of the z-TV term (image units, against ½‖x − x̂‖²; docs/design.md §9.1)
    admm_iters: int = 4           # ADMM iterations per data-consistency step (warm-started across steps)
    admm_rho: float = 1.0         # ADMM penalty ρ (image units, as λ_z)

    def nfe(self) -> int:
        """Network evaluations per sample (a warm start runs the same number of levels over the
        shorter range [warm_sigma, σ_min], so the count does not change)."""
        if self.name in ("langevin", "langevin_projection"):
            return self.steps * self.corrector_steps + 1
        if self.name in ("dds", "dps", "ddrm", "diffpir"):
            return self.steps
        per = (self.corrector_steps if self.corrector else 0) + (1 if self.predictor else 0)
        return self.steps * per - (1 if self.predictor else 0) + 1


# parameter -> (type, low, high or choices); every solver uses steps, cg_iters, final_projection
PARAMS = {"steps": (int, 1, None), "snr": (float, 0.0, None), "lam": (float, 0.0, 1.0), "r": (float, 1e-6, None),
          "corrector_steps": (int, 1, None), "predictor": (bool, None, None), "corrector": (bool, None, None),
          "order": (str, ("code", "paper"), None), "eta": (float, 0.0, 1.0), "rho": (float, 1e-3, None),
          "zeta": (float, 0.0, None), "cg_iters": (int, 1, None), "final_projection": (bool, None, None),
          "eta_b": (float, 0.0, 1.0), "hqs_lambda": (float, 0.0, None), "hqs_zeta": (float, 0.0, 1.0),
          "sigma_floor": (float, 0.0, None), "noise_scale": (float, 0.0, 1.0),
          "warm_start": (str, WARM_STARTS, None), "warm_sigma": (float, 1e-6, None),
          "warm_weight": (float, 1e-12, None), "sigma_end": (float, 0.0, None),
          "coupling": (str, COUPLINGS, None), "ztv_lambda": (float, 0.0, None), "admm_iters": (int, 1, None),
          "admm_rho": (float, 1e-6, None)}
_COMMON = ("steps", "cg_iters", "final_projection", "warm_start", "warm_sigma", "warm_weight", "sigma_end")
_COUPLING = ("coupling", "ztv_lambda", "admm_iters", "admm_rho")     # the solvers of COUPLED_SOLVERS
USES = {"projection": _COMMON + ("snr", "lam", "corrector_steps", "predictor", "corrector", "order") + _COUPLING,
        "langevin_projection": _COMMON + ("snr", "lam", "corrector_steps", "order") + _COUPLING,
        "baseline": _COMMON + ("snr", "r", "corrector_steps"),
        "langevin": _COMMON + ("snr", "r", "corrector_steps"),
        "dds": _COMMON + ("lam", "eta", "rho") + _COUPLING,
        "dps": _COMMON + ("rho", "zeta"),
        "ddrm": _COMMON + ("eta", "eta_b", "rho", "noise_scale"),
        "diffpir": _COMMON + ("hqs_lambda", "hqs_zeta", "sigma_floor", "rho", "noise_scale") + _COUPLING}

# The published hyperparameters (docs/design.md §2.10) per (task, solver); dds and dps
# are not in the paper: their fast defaults. ddrm: Kawar et al.'s η = 0.85, η_b = 1 (also
# deepinv's defaults); diffpir: λ = 7 (deepinv's default; the paper's range 3-25), ζ = 0.3 (the
# DiffPIR code pairs λ = 7 with ζ = 0.28), σ_n floor 1e-3 (the DiffPIR code's max(0.001, σ_n)).
# ddrm has no MAR entry: the MAR operator has no decomposition.
REFERENCE: dict[tuple[str, str], dict] = {
    ("ct", "projection"): dict(snr=0.246, lam=0.841),
    ("ct", "langevin_projection"): dict(snr=0.246, lam=0.841, steps=700, corrector_steps=3),
    ("ct", "baseline"): dict(snr=0.246, r=1.231),
    ("ct", "langevin"): dict(snr=0.212, r=0.713, steps=700, corrector_steps=3),
    ("mri", "projection"): dict(snr=0.517, lam=1.0),
    ("mri", "baseline"): dict(snr=0.608, r=1.231),
    ("mri", "langevin"): dict(snr=0.212, r=0.713, steps=700, corrector_steps=3),
    ("mri", "langevin_projection"): dict(snr=0.386, lam=1.0, steps=700, corrector_steps=3),
    ("mar", "projection"): dict(lam=0.355, corrector=False),
    ("mar", "langevin_projection"): dict(snr=0.261, lam=0.865, steps=700, corrector_steps=3),
    ("mar", "baseline"): dict(snr=0.246, r=1.231),
    ("mar", "langevin"): dict(snr=0.212, r=0.713, steps=700, corrector_steps=3),
    **{(t, "dds"): dict(steps=50, lam=1.0, eta=0.85) for t in TASKS},
    **{(t, "dps"): dict(steps=200, zeta=1.0) for t in TASKS},
    **{(t, "ddrm"): dict(steps=50, eta=0.85, eta_b=1.0) for t in ("ct", "mri")},
    **{(t, "diffpir"): dict(steps=50, hqs_lambda=7.0, hqs_zeta=0.3, sigma_floor=1e-3) for t in TASKS},
}


# --- one parameter, one configuration -----------------------------------------------------------
def check_param(key: str, value, where: str = "solver.", solver: str | None = None):
    """`value` of solver parameter `key` (aliases allowed) checked against PARAMS (and against the
    parameters `solver` uses, when given) and converted to its type -> (key, value). `where`
    prefixes the name in errors, e.g. '--set solver.' or 'preset FILE: '."""
    k = ALIASES.get(str(key), str(key))
    name = f"{where}{key}"
    if k not in PARAMS:
        raise ScoreinvError(f"{name}: unknown solver parameter; expected one of {', '.join(PARAMS)} (or lambda)")
    if solver is not None and k not in USES[solver]:
        raise ScoreinvError(f"{name}: solver {solver} has no parameter {k!r}; it uses {', '.join(USES[solver])}")
    typ, lo, hi = PARAMS[k]
    if typ is int:
        return k, check_int(name, value, lo, hi)
    if typ is bool:
        if not isinstance(value, bool):
            raise ScoreinvError(f"{name} = {value!r}: expected true or false")
        return k, value
    if typ is str:
        return k, check_choice(name, str(value), lo)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):   # 1e-3 in a YAML file (YAML 1.1)
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScoreinvError(f"{name} = {value!r}: expected a finite number")
    return k, check_range(name, value, lo, hi)


def coerce(params: dict, where: str = "solver.", solver: str | None = None) -> dict:
    """check_param over a mapping; two spellings of one parameter (lam, lambda) are refused."""
    out = {}
    for key, v in params.items():
        k, val = check_param(key, v, where, solver)
        if k in out:
            raise ScoreinvError(f"{where}{key}: {k} is given twice")
        out[k] = val
    return out


def validate(c: SolverConfig, where: str = "solver.") -> SolverConfig:
    """Raise unless every field of `c` is valid (PARAMS) and the combination can run."""
    check_choice("solver", c.name, SOLVERS)
    coerce({k: getattr(c, k) for k in PARAMS}, where)
    if c.name == "projection" and not (c.predictor or c.corrector):
        raise ScoreinvError(f"{where}predictor and {where}corrector cannot both be false")
    if c.coupling != "none" and c.name not in COUPLED_SOLVERS:
        raise ScoreinvError(check_coupling(c.name, c.coupling, f"{where}coupling"))
    if c.warm_start != "none" and c.sigma_end > 0 and c.sigma_end >= c.warm_sigma:
        raise ScoreinvError(f"{where}sigma_end = {c.sigma_end:g}: must be below {where}warm_sigma = "
                            f"{c.warm_sigma:g}, where the warm start begins")
    return c


def check_coupling(solver: str, coupling: str, flag: str = "--coupling") -> str:
    """The message refusing `coupling` for a solver without a data-consistency step to couple ('' if fine)."""
    if coupling == "none" or solver in COUPLED_SOLVERS:
        return ""
    why = ("its data step is a per-coefficient blend with noise, not a minimisation (docs/design.md §9.1)"
           if solver == "ddrm" else "it has no data-consistency step (the data enter through the score)")
    return (f"{flag} {coupling}: solver {solver} cannot couple slices: {why}; use one of "
            f"{', '.join(COUPLED_SOLVERS)}")


# Fields added after records of runs (eval.json, tune studies) were first written: a record leaves
# them out at their default value (off: no warm start, no σ_end; the new solvers' parameters), so
# a record made before they existed still matches (`record`).
LATER_FIELDS = ("eta_b", "hqs_lambda", "hqs_zeta", "sigma_floor", "noise_scale", "warm_start", "warm_sigma",
                "warm_weight", "sigma_end", "coupling", "ztv_lambda", "admm_iters", "admm_rho")


def record(params: dict) -> dict:
    """Solver parameters as a run's record identifies them: LATER_FIELDS at their defaults left out."""
    d = SolverConfig()
    return {k: v for k, v in params.items() if not (k in LATER_FIELDS and v == getattr(d, k))}


def estimate_name(c: SolverConfig | None, samples: int = 1) -> str:
    """What a reconstruction is, for tables and reports (docs/design.md §2.11): 'sample' (one chain's
    output), 'tweedie@S' (one chain stopped at σ_end = S and denoised: a partial posterior mean),
    'mean-of-K' or 'mean-of-K tweedie@S' (the mean of K such outputs); 'classical' without a
    score solver."""
    if c is None:
        return "classical"
    one = f"tweedie@{c.sigma_end:g}" if c.sigma_end > 0 else "sample"
    if samples > 1:
        return f"mean-of-{samples}" + ("" if one == "sample" else f" {one}")
    return one


MAR_TV_START = ("solver.warm_start = tv: not for MAR (TV would fit the metal trace); use warm_start classical, "
                "which begins from NMAR")


def check_task(task: str | None, cfg: SolverConfig) -> SolverConfig:
    """`cfg` if it can run on `task`: a MAR chain may not start from TV (MAR_TV_START). Called where a
    task and its settings first meet (resolve, solver_config, load_preset), so a command refuses before
    any work; `inputs.warm_image` checks the operator too, for library callers without a task."""
    if task == "mar" and cfg.warm_start == "tv":
        raise ScoreinvError(MAR_TV_START)
    return cfg


def solver_config(name: str, task: str | None = None, **overrides) -> SolverConfig:
    """The reference preset of (task, name) (none without a task) updated by `overrides`
    (parameter names of SolverConfig; None values ignored); validated. Library use: the
    commands resolve their settings with `resolve`."""
    check_choice("solver", name, SOLVERS)
    kw = dict(REFERENCE.get((task, name), {})) if task else {}
    kw.update(coerce({k: v for k, v in overrides.items() if v is not None}))
    return check_task(task, validate(SolverConfig(name=name, **kw)))


# --- preset files -------------------------------------------------------------------------------
@dataclass
class Preset:
    """A solver preset: solver name, task, SolverConfig overrides, metadata and where it came from."""
    solver: str
    task: str
    params: dict
    meta: dict = field(default_factory=dict)
    source: str = ""

    @property
    def label(self) -> str:
        """How the printed settings name it, e.g. 'preset ct64/ct-projection (tuned at views=10 ...)'."""
        at = f" at {self.meta['setting']}" if self.meta.get("setting") else ""
        how = " (tuned" + at + ")" if "trials" in self.meta else \
            " (chosen on validation" + at + ")" if "chosen" in self.meta else ""   # a hand comparison, not `tune`
        return f"preset {self.source}{how}"


def read_preset_file(path) -> dict:
    """The YAML mapping of a preset file (ScoreinvError if missing, unreadable or not a mapping
    with solver, task and params)."""
    try:
        d = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ScoreinvError(f"preset {str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ScoreinvError(f"preset {str(path)!r}: not a readable YAML file ({type(e).__name__})") from None
    if not isinstance(d, dict) or not {"solver", "task", "params"} <= set(d) or not isinstance(d["params"], dict):
        raise ScoreinvError(f"preset {str(path)!r}: expected a YAML mapping with solver, task and params "
                            "(as written by `scoreinv tune`)")
    return d


def load_preset(path, solver: str | None = None, task: str | None = None, source: str | None = None) -> Preset:
    """Read a YAML preset (written by `tune`, or by hand: solver, task, params); check it against
    the parameter table, and against `solver` / `task` when given."""
    d = read_preset_file(path)
    src = source or str(path)
    s, t = str(d["solver"]), str(d["task"])
    check_choice(f"solver in preset {src}", s, SOLVERS)
    check_choice(f"task in preset {src}", t, TASKS)
    if solver is not None and s != solver:
        raise ScoreinvError(f"preset {src!r} is for solver {s!r}, not {solver!r}")
    if task is not None and t != task:
        raise ScoreinvError(f"preset {src!r} was tuned for task {t!r}, not {task!r}")
    params = coerce(d["params"], f"preset {src}: ", s)
    check_task(t, validate(SolverConfig(name=s, **{**REFERENCE.get((t, s), {}), **params}), f"preset {src}: "))
    return Preset(s, t, params, {k: v for k, v in d.items() if k not in ("solver", "task", "params")}, src)


def write_preset(path, preset: Preset) -> None:
    """Write `preset` as YAML, atomically."""
    d = {"solver": preset.solver, "task": preset.task, "params": preset.params, **preset.meta}
    atomic.write_text(path, "# scoreinv solver preset (scoreinv tune); use with --preset\n"
                      + yaml.safe_dump(d, sort_keys=False))


def open_preset(spec, solver: str | None = None, task: str | None = None):
    """A --preset value: None (the shipped model's tuned preset, if any), 'reference' (none), or
    a file read with load_preset (checked against `solver` and `task` when given)."""
    if spec is None or spec == REFERENCE_KEYWORD or isinstance(spec, Preset):
        return spec
    return load_preset(spec, solver, task)


def presets_dir() -> Path:
    """The tuned presets of the shipped models: resources/presets/MODEL/TASK-SOLVER.yaml."""
    return Path(str(resources.files("scoreinv") / "resources" / "presets"))


def shipped_model(checkpoint) -> str | None:
    """The shipped model's name when `checkpoint` names one (`ct64`, or the path of its file)."""
    if checkpoint is None:
        return None
    models = shipped_models()
    p = Path(checkpoint)
    if not p.exists():
        return str(checkpoint) if str(checkpoint) in models else None
    return next((n for n, q in models.items() if p.is_file() and os.path.samefile(p, q)), None)


def shipped_preset(model: str | None, task: str, solver: str) -> Preset | None:
    """The tuned preset that shipped model `model` brings for (task, solver), if any."""
    if model is None:
        return None
    path = presets_dir() / model / f"{task}-{solver}.yaml"
    return load_preset(path, solver, task, source=f"{model}/{task}-{solver}") if path.is_file() else None


# --- the --set grammar --------------------------------------------------------------------------
def parse_sets(items, flag: str = "--set") -> dict[str, dict]:
    """['solver.snr=0.3', 'projection.lambda=0.9', 'tv.weight=1e-3'] ->
    {'solver': {'snr': 0.3}, 'projection': {'lam': 0.9}, 'tv': {'weight': 0.001}} (module docstring).
    Which targets a command accepts is checked by `check_targets`."""
    out: dict[str, dict] = {}
    for it in items or ():
        key, sep, val = str(it).partition("=")
        target, dot, param = key.strip().partition(".")
        if not sep or not dot or not target or not param.strip():
            raise ScoreinvError(f"{flag} {it!r}: expected TARGET.KEY=VALUE, e.g. solver.snr=0.3 "
                                "(every score solver) or projection.lambda=0.9 (one solver)")
        param = ALIASES.get(param.strip(), param.strip())
        if param in out.get(target, {}):
            raise ScoreinvError(f"{flag} {target}.{param} is given twice")
        try:
            v = yaml.safe_load(val)
        except yaml.YAMLError:
            raise ScoreinvError(f"{flag} {it!r}: cannot read the value {val!r} (a YAML scalar)") from None
        if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):    # YAML 1.1 reads 1e-3 as a string
            v = float(v)
        out.setdefault(target, {})[param] = v
    return out


def check_targets(sets: dict, allowed, flag: str = "--set") -> None:
    """Refuse --set targets other than `allowed` (e.g. solver and the command's solver)."""
    bad = sorted(set(sets) - set(allowed))
    if bad:
        raise ScoreinvError(f"{flag} {bad[0]}.{next(iter(sets[bad[0]]))}: {bad[0]!r} is not a target here; "
                            f"expected {' or '.join(f'{a}.KEY' for a in allowed)}")


# --- precedence ---------------------------------------------------------------------------------
def noisy_level(task: str, noise: float, phase: str | None = None) -> bool:
    """Whether `--noise noise` gives data noisier than the reference acquisition (module docstring):
    CT/MRI any noise > 0; MAR (0 = the paper's photon count) fewer photons than it; MRI with
    `--phase smooth` always (no real image fits data seen through an estimated phase exactly: the
    misfit of (D32), docs/design.md §3.5, acts as noise)."""
    check_choice("task", task, TASKS)
    return (noise > 0 and not (task == "mar" and noise >= MAR_PHOTONS)) or (phase or "none") != "none"


def noisy_record(task: str, record: dict | None, phased: bool = False) -> bool:
    """noisy_level for a measurement file's noise record ({model, level, photons, ...}); phased: the
    file's operator is `phased_mri` (then always, as noisy_level with a phase)."""
    rec = record or {}
    if phased:
        return True
    if rec.get("model", "none") == "none":
        return False
    if task == "mar":
        return float(rec.get("photons", 0.0)) < MAR_PHOTONS
    return True


@dataclass
class Resolved:
    """A resolved SolverConfig and, per parameter, the layer that set it (`origin`)."""
    cfg: SolverConfig
    origin: dict                 # parameter -> label of the layer that set it, in layer order
    above_reference: tuple = ()  # parameters set by a tuned preset, --steps or --set

    def explicit(self) -> dict:
        """The parameters set above the reference layer (tuned preset, --steps, --set)."""
        return {k: getattr(self.cfg, k) for k in self.above_reference}

    def describe(self) -> str:
        """One line: the solver, its main knobs, and where each setting came from."""
        c = self.cfg
        knobs = [k for k in ("steps", "corrector_steps", "snr", "lam", "r", "eta", "eta_b", "zeta", "hqs_lambda",
                             "hqs_zeta") if k in USES[c.name]]
        vals = ", ".join(f"{k} {getattr(c, k):g}" for k in knobs)
        if c.warm_start != "none":
            how = f"tv (weight {c.warm_weight:g})" if c.warm_start == "tv" else c.warm_start
            vals += f", warm start {how} at σ {c.warm_sigma:g}"
        if c.sigma_end > 0:
            vals += f", σ_end {c.sigma_end:g}"
        if c.noise_scale != 1.0 and "noise_scale" in USES[c.name]:
            vals += f", noise_scale {c.noise_scale:g}"
        if c.coupling != "none":
            vals += f", {c.coupling} coupling λ_z {c.ztv_lambda:g} (ADMM {c.admm_iters} x ρ {c.admm_rho:g})"
        groups: dict[str, list] = {}
        for k, o in self.origin.items():
            groups.setdefault(o, []).append(k)
        src = "; ".join(f"{o}: {', '.join(ks)}" for o, ks in groups.items())
        return (f"{c.name} ({vals}, final projection {'on' if c.final_projection else 'off'}; NFE {c.nfe()}) "
                f"from {src}")


def resolve(task: str, solver: str, *, preset: Preset | str | None = None, model: str | None = None,
            steps=None, sets: dict | None = None, noisy: bool = False) -> Resolved:
    """The settings of `solver` on `task` by the precedence of the module docstring.

    preset: a Preset (from a file), REFERENCE_KEYWORD, or None (then the shipped model `model`'s
    tuned preset, if it has one); steps: --steps; sets: parse_sets output (targets 'solver' and
    `solver` are read); noisy: noisy_level / noisy_record of the data."""
    check_choice("task", task, TASKS)
    check_choice("solver", solver, SOLVERS)
    layers = [("default", {k: getattr(SolverConfig(), k) for k in PARAMS}),
              (f"reference {task}/{solver}", REFERENCE.get((task, solver), {})),
              ("noisy data" if noisy else "noise-free data" if task != "mar" else "MAR at the reference photon count",
               {"final_projection": not noisy})]
    if isinstance(preset, Preset):
        if (preset.solver, preset.task) != (solver, task):
            raise ScoreinvError(f"preset {preset.source!r} is for {preset.task}/{preset.solver}, "
                                f"not {task}/{solver}")
        tuned = preset
    elif preset in (None, REFERENCE_KEYWORD):
        tuned = shipped_preset(model, task, solver) if preset is None else None
    else:
        raise ScoreinvError(f"--preset {preset!r}: expected a preset file or {REFERENCE_KEYWORD!r}")
    if tuned is not None:
        layers.append((tuned.label, tuned.params))
    if steps is not None:
        layers.append(("--steps", {"steps": check_int("--steps", steps)}))
    sets = sets or {}
    if sets.get("solver"):      # every score solver: the parameters this one uses (check_applies)
        common = coerce(sets["solver"], "--set solver.")
        layers.append(("--set", {k: v for k, v in common.items() if k in USES[solver]}))
    if sets.get(solver):
        layers.append(("--set", coerce(sets[solver], f"--set {solver}.", solver)))
    params, origin = {}, {}
    for i, (label, d) in enumerate(layers):
        for k, v in d.items():
            params[k], origin[k] = v, (i, label)
    cfg = check_task(task, validate(SolverConfig(name=solver, **params)))
    ranked = sorted((i, k, label) for k, (i, label) in origin.items() if i > 0 and k in USES[solver])
    return Resolved(cfg, {k: label for _, k, label in ranked}, tuple(k for i, k, _ in ranked if i >= 3))


def check_applies(sets: dict, solvers, flag: str = "--set") -> None:
    """Refuse a `solver.KEY` that none of `solvers` uses (e.g. solver.eta with projection only)."""
    for key in (sets or {}).get("solver", {}):
        k = ALIASES.get(key, key)
        if k in PARAMS and not any(k in USES[s] for s in solvers):
            raise ScoreinvError(f"{flag} solver.{key}: not a parameter of {', '.join(solvers) or 'any solver here'}; "
                                f"{'they use' if len(solvers) > 1 else 'it uses'} "
                                f"{', '.join(sorted(set().union(*(USES[s] for s in solvers))))}")
