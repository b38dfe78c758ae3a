"""The solver factor study of issue 15 (docs/solver_factors.md): each factor of dds, ddrm and diffpir
changed alone from a stated base, on VALIDATION images, with `scoreinv eval` (the command itself).

    python benchmarks/solver_factors.py                          # every setting, the reference base
    python benchmarks/solver_factors.py --setting mri --solver ddrm --base shipped
    python benchmarks/solver_factors.py --collect                # the table of what has finished

Settings: MRI 8x random columns on brain slices (mri64) and CT 10 views on textured phantoms
(ct64; dds and diffpir through the Radon operator with CG, ddrm through the Fourier-slice operator,
the only CT operator with the decomposition it needs). Bases (`--base`):
- `reference`: the settings shipped before the study, fixed here so that the table does not move
  when the presets change: `--preset reference` plus BASE (dds λ 1, η 1; ddrm η 0.85, η_b 1;
  diffpir λ_HQS 7, ζ_HQS 0.3); 50 levels, ρ 7, final projection on, noise_scale 1, cold start;
- `shipped`: the shipped model's tuned preset (what `scoreinv eval --checkpoint ...` runs now).
A variant whose value equals the base's is the base and is not run twice.

Each (setting, solver, variant) is one `scoreinv eval --split val` run into
OUT/BASE/SETTING/SOLVER/VARIANT (resumable: a finished run is read back, a killed one resumed).
The table gives the mean PSNR over the images, the mean paired difference from the base (Δ, dB),
the standard deviation of the per-image differences (paired std; the standard error is
std/√n) and the mean SSIM difference. Same seed everywhere: variant and base see the same
measurements and, where the draws line up, the same noise.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

SETTINGS = {
    "mri": {"label": "MRI 8x random columns (mri64, brain)", "task": "mri", "model": "mri64",
            "args": ["--checkpoint", "mri64", "--task", "mri", "--acceleration", "8", "--mask", "random",
                     "--data", "brain"],
            "solvers": ("dds", "ddrm", "diffpir")},
    "ct": {"label": "CT 10 views, radon operator (ct64, phantoms)", "task": "ct", "model": "ct64",
           "args": ["--checkpoint", "ct64", "--task", "ct", "--views", "10", "--data", "phantoms"],
           "solvers": ("dds", "diffpir")},
    "ct-fourier": {"label": "CT 10 views, fourier operator (ct64, phantoms)", "task": "ct", "model": "ct64",
                   "args": ["--checkpoint", "ct64", "--task", "ct", "--views", "10", "--data", "phantoms",
                            "--ct-operator", "fourier"],
                   "solvers": ("ddrm",)},
}

# the reference base: what shipped before the study (dds: the tuned mri64/ct64 dds presets; ddrm and
# diffpir: their reference presets, docs/design.md §2.10)
BASE = {"dds": {"lam": 1.0, "eta": 1.0}, "ddrm": {"eta": 0.85, "eta_b": 1.0},
        "diffpir": {"hqs_lambda": 7.0, "hqs_zeta": 0.3}}
COMMON_BASE = {"steps": 50, "rho": 7.0, "final_projection": True, "warm_start": "none", "sigma_end": 0.0,
               "cg_iters": 10}

COLD = "cold"
# factor -> (label, values); a value is a solver parameter's, or for "warm" COLD / a warm_sigma, for
# "samples" the K of --samples
FACTORS = {
    "rho": ("schedule exponent ρ", (3.0, 5.0, 7.0, 10.0)),
    "sigma_end": ("schedule end σ_end (0 = σ_min; > 0: Tweedie estimate there)", (0.0, 0.02, 0.05, 0.1)),
    "noise_scale": ("noise drawn / noise the network is told", (1.0, 0.85, 0.7071, 0.5, 0.35, 0.2)),
    "eta": ("η (0 = deterministic)", (0.0, 0.5, 0.85, 1.0)),
    "hqs_zeta": ("ζ_HQS, share of fresh noise (0 = deterministic)", (0.0, 0.1, 0.3, 0.6, 1.0)),
    "lam": ("data consistency λ (dds)", (0.5, 0.8, 0.9, 1.0)),
    "eta_b": ("data weight η_b (ddrm)", (0.5, 0.8, 1.0)),
    "hqs_lambda": ("data consistency λ_HQS (diffpir)", (1.0, 3.0, 7.0, 15.0, 30.0)),
    "sigma_floor": ("σ_n floor × ‖A‖ (diffpir, noise-free data)", (1e-3, 0.01, 0.05)),
    "cg_iters": ("CG iterations (radon)", (5, 10, 30)),
    "final_projection": ("final hard projection", (True, False)),
    "warm": ("warm start from the classical image at σ_w", (COLD, 0.5, 1.0, 2.0, 5.0)),
    "samples": ("posterior mean of K samples", (1, 4)),
}
SOLVER_FACTORS = {
    "dds": ("rho", "sigma_end", "eta", "lam", "cg_iters", "final_projection", "warm", "samples"),
    "ddrm": ("rho", "sigma_end", "noise_scale", "eta", "eta_b", "final_projection", "warm", "samples"),
    "diffpir": ("rho", "sigma_end", "noise_scale", "hqs_zeta", "hqs_lambda", "sigma_floor", "cg_iters",
                "final_projection", "warm", "samples"),
}


def base_config(setting: str, solver: str, base: str):
    """(SolverConfig of the base, the --preset arguments and the --set values that select it)."""
    from scoreinv.sampling.settings import REFERENCE_KEYWORD, resolve
    s = SETTINGS[setting]
    if base == "reference":
        sets = {**COMMON_BASE, **BASE[solver]}
        return resolve(s["task"], solver, preset=REFERENCE_KEYWORD, sets={solver: sets}).cfg, \
            ["--preset", REFERENCE_KEYWORD], sets
    return resolve(s["task"], solver, model=s["model"]).cfg, [], {}


def eval_args(solver: str, preset_args: list, sets: dict, samples: int = 1) -> list:
    """scoreinv eval arguments: the preset choice, one --set per parameter, --samples."""
    return [*preset_args, *(f"--set={solver}.{k}={_yaml(v)}" for k, v in sets.items()),
            *(["--samples", str(samples)] if samples > 1 else [])]


def _yaml(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _fmt(v) -> str:
    return "on" if v is True else "off" if v is False else f"{v:g}" if isinstance(v, float) else str(v)


def variants(setting: str, solver: str, cfg, factors=None):
    """(factor, value label, --set overrides, K samples, is_base) of every variant of `solver`
    (of `factors` only, when given)."""
    for f in SOLVER_FACTORS[solver]:
        if factors and f not in factors:
            continue
        if f == "cg_iters" and setting != "ct":
            continue                           # the decomposition needs no CG
        for v in FACTORS[f][1]:
            if f == "samples":
                yield f, f"K={v}", {}, v, v == 1
            elif f == "warm":
                if v == COLD:
                    yield f, COLD, {"warm_start": "none"}, 1, cfg.warm_start == "none"
                else:
                    same = cfg.warm_start == "classical" and math.isclose(cfg.warm_sigma, v)
                    yield f, f"σ_w={v:g}", {"warm_start": "classical", "warm_sigma": v}, 1, same
            else:
                cur = getattr(cfg, f)
                same = cur == v if isinstance(v, bool) or isinstance(cur, bool) else math.isclose(float(cur), float(v))
                yield f, _fmt(v), {f: v}, 1, same


def slug(factor: str, value: str) -> str:
    return f"{factor}_{value}".replace("σ_w=", "").replace("K=", "").replace(" ", "")


def run_one(out: Path, setting: str, solver: str, args: list, n: int, log) -> dict:
    """One `scoreinv eval` run (skipped when finished) -> {image: (psnr, ssim)} and seconds."""
    from scoreinv.cli import main as cli
    metrics = out / "metrics.csv"
    if not _finished(out, n):
        t = time.perf_counter()
        cmd = ["eval", *SETTINGS[setting]["args"], "--split", "val", "--num-images", str(n), "--batch-size",
               str(n), "--solvers", solver, *args, "--out", str(out)]
        log("scoreinv " + " ".join(cmd))
        rc = cli(cmd)
        if rc != 0:
            raise SystemExit(f"scoreinv eval failed (exit {rc}): {' '.join(cmd)}")
        log(f"  {time.perf_counter() - t:.0f} s")
    with metrics.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["solver"] == solver]
    summ = json.loads((out / "summary.json").read_text())[0]
    return {"psnr": {int(r["image"]): float(r["psnr"]) for r in rows},
            "ssim": {int(r["image"]): float(r["ssim"]) for r in rows},
            "sec": summ["sec_per_image"], "nfe": summ["nfe"], "estimate": summ["estimate"]}


def _finished(out: Path, n: int) -> bool:
    f = out / "summary.json"
    return f.is_file() and all(r.get("n_images") == n for r in json.loads(f.read_text()))


def _paired(a: dict, b: dict) -> tuple[float, float]:
    d = [a[k] - b[k] for k in sorted(b)]
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
    return m, sd


def study(out: Path, settings, solvers, base: str, n: int, run: bool, factors=None, log=print) -> list[dict]:
    """Run (run=True) or read back (run=False: finished runs only) the study -> table rows."""
    rows = []
    for setting in settings:
        for solver in SETTINGS[setting]["solvers"]:
            if solvers and solver not in solvers:
                continue
            cfg, preset_args, base_sets = base_config(setting, solver, base)
            root = out / base / setting / solver
            if not (run or _finished(root / "base", n)):
                continue
            b = run_one(root / "base", setting, solver, eval_args(solver, preset_args, base_sets), n, log)
            rows.append(_row(setting, solver, "base", "", b, None) | {"describe": _describe(cfg)})
            for factor, value, over, k, is_base in variants(setting, solver, cfg, factors):
                d = root / slug(factor, value)
                if is_base:
                    rows.append(_row(setting, solver, factor, value + " (base)", b, None))
                elif run or _finished(d, n):
                    r = run_one(d, setting, solver, eval_args(solver, preset_args, {**base_sets, **over}, k), n, log)
                    rows.append(_row(setting, solver, factor, value, r, b))
    return rows


def _row(setting: str, solver: str, factor: str, value: str, r: dict, base: dict | None) -> dict:
    """A table row: the run's mean PSNR, and against `base` (None: it is the base) the paired differences."""
    d, sd = _paired(r["psnr"], base["psnr"]) if base else (None, None)
    return {"setting": setting, "solver": solver, "factor": factor, "value": value, "psnr": _mean(r["psnr"]),
            "d": d, "sd": sd, "dssim": _paired(r["ssim"], base["ssim"])[0] if base else None, "sec": r["sec"],
            "nfe": r["nfe"], "estimate": r["estimate"]}


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def _describe(cfg) -> str:
    from scoreinv.sampling.settings import USES
    keys = [k for k in ("steps", "lam", "eta", "eta_b", "hqs_lambda", "hqs_zeta", "rho", "noise_scale", "cg_iters",
                        "sigma_end") if k in USES[cfg.name]]
    s = ", ".join(f"{k} {_fmt(getattr(cfg, k))}" for k in keys)
    s += f", warm σ_w {cfg.warm_sigma:g}" if cfg.warm_start != "none" else ", cold"
    return s + f", final projection {'on' if cfg.final_projection else 'off'}"


def table(rows: list[dict], n: int) -> str:
    lines = []
    for setting in SETTINGS:
        sub = [r for r in rows if r["setting"] == setting]
        if not sub:
            continue
        lines += [f"#### {SETTINGS[setting]['label']}, {n} validation images", "",
                  "| solver | factor | value | PSNR (dB) | Δ PSNR (dB) | paired std | Δ SSIM | NFE | s/image |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sub:
            fac = "base" if r["factor"] == "base" else FACTORS[r["factor"]][0]
            value = r.get("describe", r["value"])
            dd = "" if r["d"] is None else f"{r['d']:+.2f}"
            sd = "" if r["d"] is None else f"{r['sd']:.2f}"
            ds = "" if r["d"] is None else f"{r['dssim']:+.3f}"
            lines.append(f"| {r['solver']} | {fac} | {value} | {r['psnr']:.2f} | {dd} | {sd} | {ds} | "
                         f"{r['nfe']} | {r['sec']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def pivot(rows: list[dict], n: int) -> str:
    """One table: a row per (factor, value), a column per (setting, solver); cells Δ PSNR (paired std),
    the base row the base's mean PSNR. Empty where a factor does not apply."""
    cols = list(dict.fromkeys((r["setting"], r["solver"]) for r in rows))
    keys = list(dict.fromkeys((r["factor"], r["value"].removesuffix(" (base)")) for r in rows if r["factor"] != "base"))
    cell = {}
    for r in rows:
        v = r["value"].removesuffix(" (base)")
        cell[(r["factor"], v, r["setting"], r["solver"])] = \
            f"{r['psnr']:.2f}" if r["factor"] == "base" else "base" if r["d"] is None else f"{r['d']:+.2f} ({r['sd']:.2f})"
    head = [f"{SETTINGS[s]['label'].split(' (')[0]}: {v}" for s, v in cols]
    title = (f"Δ PSNR in dB against the base, mean over {n} validation images (paired std in brackets); "
             "first row: the base's PSNR.")
    lines = [title, "",
             "| factor | value | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(cols),
             "| base PSNR (dB) | | " + " | ".join(cell.get(("base", "", s, v), "") for s, v in cols) + " |"]
    for f, v in keys:
        lines.append(f"| {FACTORS[f][0].split(' (')[0]} | {v} | " + " | ".join(cell.get((f, v, s, so), "") for s, so in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="repeatable (default: all)")
    p.add_argument("--solver", action="append", choices=sorted(BASE), help="repeatable (default: all)")
    p.add_argument("--factor", action="append", choices=sorted(FACTORS), help="repeatable (default: all)")
    p.add_argument("--base", choices=["reference", "shipped"], default="reference")
    p.add_argument("--num-images", type=int, default=8, help="validation images (default 8)")
    p.add_argument("--out", default="runs/solver_factors")
    p.add_argument("--collect", action="store_true", help="print the table of the finished runs only")
    a = p.parse_args()
    if a.num_images < 2:
        p.error("--num-images: at least 2 (a paired std needs two images)")
    out = Path(a.out)
    rows = study(out, a.setting or list(SETTINGS), a.solver, a.base, a.num_images, run=not a.collect,
                 factors=a.factor, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = pivot(rows, a.num_images) + "\n" + table(rows, a.num_images)
    if not a.collect:
        from scoreinv.atomic import write_text
        write_text(out / a.base / "factors.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    from scoreinv.errors import run_script
    run_script(main, "solver_factors")
