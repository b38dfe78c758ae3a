"""Side by side with a peer library: deepinv 0.5's DiffPIR, DDRM and DPS run with OUR prior, OUR
test images and OUR measurements, against our own solvers at the same NFE (`scoreinv bench peers`).

deepinv is imported only here, and only when the benchmark runs: it needs a torch with a matching
torchvision, so it lives in its own environment (`make bench-peers` creates .venv-peers and runs
this there). Without it the command ends with one line naming `make bench-peers`.

Settings (SETTINGS), noise-free, 64x64, the shipped models:
- ct: `ct` task with 10 views on the textured `phantoms` test split, prior ct64, simulated exactly as
  `scoreinv eval` does (tasks.build_problem: sinograms projected on a 4x finer grid, so no inverse
  crime, and the default `radon` operator ParallelBeamCT seen by every solver);
- mri: `mri` task, 8x random columns on the `brain` test split, prior mri64.
Test images 0..N-1 are simulated in batches of EVAL_BATCH = 4 with the seeds `scoreinv eval --seed 0`
uses (derive_seed(0, "problem", b)), so each batch of MRI images has its own mask, and our solvers
get eval's solver seeds (derive_seed(0, "solve", name, b)): our rows repeat what
`scoreinv eval --checkpoint ct64 --task ct --views 10 --data phantoms --solvers dds --set dds.steps=50`
reports for the same images. The peers' validation images are the first VAL_IMAGES = 3 of the `val`
split, simulated with eval's validation seed (derive_seed(0, "problem-val")).

What the peer sees (the operator, the prior, the range, the data, the noise level): the adapters of
`bench.peer_adapters`, whose docstring says how each is wrapped and checked.

Peer hyperparameters are chosen per NFE on the validation images by mean PSNR over GRIDS:
DiffPIR λ in {1, 7} x ζ in {0.3, 0.6, 1} at σ_n = 0.01 (λσ_n² sets ρ; deepinv's defaults are λ = 7,
ζ = 0.1); DDRM η in {0.85, 1} x σ_1 in {0.25, 0.5, 1} (deepinv's schedule shape linspace(σ_1, 0,
NFE), its default σ_1 = 1, η = 0.85; η_b = 1); DPS guidance weight in {3, 10, 30, 100} (original
DPS: VP schedule, DDPM steps, norm guidance; deepinv's default weight 1). The grids were set around
the optima of a wider search at 50 NFE on the same validation images (λ 1-400: flat; ζ 0.1-1:
largest best; DDRM σ_1 0.25-5, η 0.5-1; DPS weight 0.3-1000: best 10 on CT, 100 on MRI).
deepinv's DDRM adds noise of std σ/√2 per coefficient (randn / √2) while telling the denoiser σ,
and V = Re T^{-1} halves the variance of complex T-domain noise that is not conjugate-symmetric
again: it denoises with a larger σ than the noise present (kept as deepinv ships it).
DiffPIR is scored twice from the same runs: as deepinv returns it (its last
iterate, which is still noisy at the last level: `deepinv_diffpir`) and as its final denoised
estimate x̂0 (the denoiser's last output clamped to [0, 1], no extra NFE: `deepinv_diffpir_x0`),
each with its own choice. Our solvers (OUR_SOLVERS present in sampling.settings.SOLVERS; ddrm only
where the operator decomposes) use the shipped model's presets (settings.resolve, as eval), with
`--set SOLVER.steps=S` for the NFE (projection: 2 evaluations per level, S = NFE / 2).

Seeds: peers' noise from derive_seed(0, "peer", method, b) (torch's global generator, DPS its own
generator); a rerun at the same thread count repeats every number.

Printed (`emit`): per setting the checks (SETTING.y_sha256, SETTING.max_abs_A_peer_vs_ours,
SETTING.max_abs_At_peer_vs_ours, SETTING.max_abs_y_minus_Ax, SETTING.rel_y_minus_Ax), the
grids and each peer's choice (SETTING.METHOD.nfeN.params, .val_psnr), and per method and NFE
SETTING.METHOD.nfeN.{psnr, psnr_std, ssim, ssim_std, nfe, s_per_image}; then the best of each side
(SETTING.nfeN.best_ours, .best_ours_psnr, .best_peer, .best_peer_psnr, .ours_minus_peer_db).
`table` formats the same numbers as a Markdown table.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ScoreinvError, check_int
from .peer_adapters import (DEEPINV_VERSION, PriorDenoiser, import_deepinv, peer_denoiser, peer_measurement,
                            peer_physics, y_hash)

SEED = 0
EVAL_BATCH = 4          # scoreinv eval's default --batch-size: the same measurements and solver seeds
VAL_IMAGES = 3
DEFAULT_IMAGES = 16
DEFAULT_NFE = (50, 100)
MIN_NFE = 4
PEER_METHODS = ("diffpir", "ddrm", "dps")
OUR_SOLVERS = ("dds", "projection", "ddrm", "diffpir")
DIFFPIR_SIGMA_N = 0.01
GRIDS = {"diffpir": {"lambda": (1.0, 7.0), "zeta": (0.3, 0.6, 1.0)},
         "ddrm": {"eta": (0.85, 1.0), "sigma_max": (0.25, 0.5, 1.0)},
         "dps": {"weight": (3.0, 10.0, 30.0, 100.0)}}


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: task options (tasks.task_options keywords), data and shipped prior."""
    name: str
    label: str
    model: str
    data: str
    task: dict


SETTINGS = {
    "ct": Setting("ct", "CT 10 views, textured phantoms 64x64", "ct64", "phantoms", {"task": "ct", "views": 10}),
    "mri": Setting("mri", "MRI 8x random columns, brain slices 64x64", "mri64", "brain",
                   {"task": "mri", "acceleration": 8.0, "mask": "random"}),
}


# --- options ------------------------------------------------------------------------------------
def check_options(images, nfe, settings) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    """Validate --images (>= 1), --nfe (comma-separated even integers >= MIN_NFE, no repeats) and
    --settings (comma-separated names of SETTINGS) -> (images, nfe tuple, settings tuple)."""
    images = check_int("--images", images)
    nfes = _int_list("--nfe", nfe)
    for n in nfes:
        if n < MIN_NFE or n % 2:
            raise ScoreinvError(f"--nfe {n}: expected even integers >= {MIN_NFE} (the projection solver spends 2 "
                                "network evaluations per noise level, so odd counts cannot be matched)")
    names = _str_list("--settings", settings)
    for s in names:
        if s not in SETTINGS:
            raise ScoreinvError(f"--settings {s!r}: unknown setting; expected some of {', '.join(SETTINGS)}")
    return images, nfes, names


def _items(flag: str, value) -> list[str]:
    items = [str(v).strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    if not items or any(not v for v in items):
        raise ScoreinvError(f"{flag} {value!r}: expected a comma-separated list with no empty entries")
    if len(set(items)) != len(items):
        raise ScoreinvError(f"{flag} {value!r}: an entry is given twice")
    return items


def _int_list(flag: str, value) -> tuple[int, ...]:
    out = []
    for v in _items(flag, value):
        try:
            out.append(int(v))
        except ValueError:
            raise ScoreinvError(f"{flag} {value!r}: {v!r} is not an integer") from None
    if len(set(out)) != len(out):
        raise ScoreinvError(f"{flag} {value!r}: an entry is given twice")
    return tuple(out)


def _str_list(flag: str, value) -> tuple[str, ...]:
    return tuple(_items(flag, value))


def steps_for_nfe(cfg_nfe, nfe: int) -> int:
    """The number of noise levels S with cfg_nfe(S) == nfe (cfg_nfe: S -> network evaluations per
    sample, e.g. SolverConfig.nfe at steps S); ScoreinvError if no S matches."""
    for s in range(1, nfe + 1):
        if cfg_nfe(s) == nfe:
            return s
    raise ScoreinvError(f"--nfe {nfe}: no number of noise levels gives exactly {nfe} network evaluations")


# --- the problems ---------------------------------------------------------------------------------
@dataclass
class Bench:
    """The problems of one setting: test batches (tasks.Problem, eval's batches and seeds) and the
    validation problem the peers are tuned on."""
    setting: Setting
    options: object
    batches: list
    val: object


def build_problems(setting: Setting, images: int, image_size: int = 64, val_images: int = VAL_IMAGES) -> Bench:
    """Simulate the measurements of test images 0..images-1 (batches of EVAL_BATCH, eval's seeds)
    and of the first `val_images` validation images, as `scoreinv eval --seed 0` does."""
    from ..data import build_dataset
    from ..data.base import derive_seed
    from ..evaluate import load_images
    from ..tasks import build_problem, task_options
    images = check_int("--images", images)
    opts = task_options(**setting.task)
    test = build_dataset(setting.data, "test", image_size, seed=SEED)
    if images > len(test):
        raise ScoreinvError(f"--images {images}: the test split of {setting.data} holds only {len(test)} images")
    val = build_dataset(setting.data, "val", image_size, seed=SEED)
    if len(val) < val_images:
        raise ScoreinvError(f"the val split of {setting.data} holds {len(val)} images; the peers are tuned on "
                            f"{val_images}")
    batches = []
    for b, i0 in enumerate(range(0, images, EVAL_BATCH)):
        x = load_images(test, range(i0, min(i0 + EVAL_BATCH, images)))
        batches.append(build_problem(x, opts, torch.Generator().manual_seed(derive_seed(SEED, "problem", b))))
    vp = build_problem(load_images(val, range(val_images)), opts,
                       torch.Generator().manual_seed(derive_seed(SEED, "problem-val")))
    return Bench(setting, opts, batches, vp)


def _peer_seed(method: str, b) -> int:
    from ..data.base import derive_seed
    return derive_seed(SEED, "peer", method, b) % (2 ** 31 - 1) + 1     # DDRM/DiffPIR ignore 0; numpy: < 2**32


def run_peer(dinv, method: str, params: dict, core: PriorDenoiser, den, physics, y, x_naive, nfe: int, seed: int):
    """One deepinv run on a batch -> {variant name: (B, 1, H, W) in [0, 1]}."""
    torch.manual_seed(seed)
    b = y.shape[0]
    shape = (b, 1, *x_naive.shape[-2:])
    if method == "diffpir":
        physics.noise_model = dinv.physics.ZeroNoise()
        s = dinv.sampling.DiffPIR(den, dinv.optim.data_fidelity.L2(), sigma=DIFFPIR_SIGMA_N, max_iter=nfe,
                                  zeta=params["zeta"], lambda_=params["lambda"])
        out = s(y, physics, seed=seed, x_init=x_naive)
        return {"deepinv_diffpir": out, "deepinv_diffpir_x0": core.last.clamp(0, 1)}
    if method == "ddrm":
        physics.noise_model = dinv.physics.GaussianNoise(sigma=0.0)
        s = dinv.sampling.DDRM(den, sigmas=np.linspace(params["sigma_max"], 0.0, nfe), eta=params["eta"], etab=1.0)
        return {"deepinv_ddrm": s(y, physics, seed=seed)}
    if method == "dps":
        physics.noise_model = dinv.physics.ZeroNoise()
        s = dinv.sampling.DPS(den, schedule="vp", solver="ddpm", num_steps=nfe + 1, weight=params["weight"],
                              rng=torch.Generator().manual_seed(seed))
        return {"deepinv_dps": s(y, physics, x_init=shape, seed=seed)}
    raise ScoreinvError(f"unknown peer method {method!r}; expected one of {', '.join(PEER_METHODS)}")


def grid_points(method: str) -> list[dict]:
    """The hyperparameter combinations of GRIDS[method]."""
    g = GRIDS[method]
    return [dict(zip(g, v)) for v in itertools.product(*g.values())]


def _fmt(params: dict) -> str:
    return " ".join(f"{k}={v:g}" for k, v in params.items())


def _log(msg: str) -> None:
    print(f"peers: {msg}", file=sys.stderr, flush=True)


# --- the run ------------------------------------------------------------------------------------------
def run(images: int = DEFAULT_IMAGES, nfe=DEFAULT_NFE, settings=tuple(SETTINGS), device: str = "cpu",
        log=_log) -> dict:
    """The benchmark (module docstring) -> {key: value} for `emit`."""
    images, nfes, names = check_options(images, nfe, settings)
    dinv = import_deepinv()
    if not str(getattr(dinv, "__version__", "")).startswith(DEEPINV_VERSION):
        log(f"deepinv {getattr(dinv, '__version__', '?')} found; this benchmark was written against {DEEPINV_VERSION}")
    res: dict = {"deepinv_version": str(getattr(dinv, "__version__", "?")), "torch_threads": torch.get_num_threads(),
                 "images": images, "val_images": VAL_IMAGES, "nfe": ",".join(map(str, nfes))}
    for m in PEER_METHODS:
        res[f"grid.{m}"] = "; ".join(f"{k} in {','.join(f'{v:g}' for v in vals)}" for k, vals in GRIDS[m].items())
    res["grid.diffpir_sigma_n"] = DIFFPIR_SIGMA_N
    for name in names:
        res.update(run_setting(dinv, SETTINGS[name], images, nfes, device, log))
    return res


def run_setting(dinv, setting: Setting, images: int, nfes, device: str = "cpu", log=_log) -> dict:
    from ..data.base import derive_seed
    from ..metrics import psnr, ssim
    from ..sampling.settings import SOLVERS, resolve
    from ..sampling.solvers import solve
    from ..score import load_score_model
    model, cfg = load_score_model(setting.model, device=device)
    bench = build_problems(setting, images, cfg.data.image_size)
    s = setting.name
    out: dict = {f"{s}.setting": f"{setting.label}, {bench.options.setting()}, prior {setting.model}, noise-free"}
    core = PriorDenoiser(model)
    den = peer_denoiser(dinv, core)
    op0 = bench.batches[0].op
    decomposable = isinstance(peer_physics(dinv, op0), dinv.physics.DecomposablePhysics)
    peers = [m for m in PEER_METHODS if m != "ddrm" or decomposable]
    ours = [m for m in OUR_SOLVERS if m in SOLVERS and (m != "ddrm" or getattr(op0, "has_decomposition", False))]
    if not decomposable:
        out[f"{s}.note"] = (f"DDRM (deepinv's and ours) not run: the operator {op0.name} has no SVD "
                            "(no A = P(Λ)T decomposition)")

    # identical measurements and operators on both sides
    d_fwd = d_adj = d_y = y2 = yn = 0.0
    for p in bench.batches:
        ph = peer_physics(dinv, p.op)
        with torch.no_grad():
            ax_peer, ax_ours = ph.A(p.x), peer_measurement(p.op.forward(p.x))
            d_fwd = max(d_fwd, float((ax_peer - ax_ours).abs().max()))
            d_adj = max(d_adj, float((ph.A_adjoint(peer_measurement(p.y)) - p.op.adjoint(p.y)).abs().max()))
            r = peer_measurement(p.y) - ph(p.x)
            d_y = max(d_y, float(r.abs().max()))
            y2 += float((r.abs() ** 2).sum())
            yn += float((p.y.abs() ** 2).sum())
    out[f"{s}.max_abs_A_peer_vs_ours"] = d_fwd
    out[f"{s}.max_abs_At_peer_vs_ours"] = d_adj
    out[f"{s}.max_abs_y_minus_Ax"] = d_y
    out[f"{s}.rel_y_minus_Ax"] = math.sqrt(y2 / max(yn, 1e-30))
    if setting.task["task"] == "ct":
        out[f"{s}.y_minus_Ax_note"] = ("y is projected on a 4x finer grid (no inverse crime): y - A x is that model "
                                       "mismatch, the same for both sides")

    # peers' hyperparameters, per NFE, on the validation images
    vp = bench.val
    vph = peer_physics(dinv, vp.op)
    chosen: dict[tuple[str, int], dict] = {}
    for n in nfes:
        for m in peers:
            scores: dict[str, list] = {}
            for params in grid_points(m):
                core.calls = 0
                t0 = time.perf_counter()
                got = run_peer(dinv, m, params, core, den, vph, peer_measurement(vp.y), vp.naive, n,
                               _peer_seed(m, "val"))
                for v, x in got.items():
                    val = float(psnr(x.detach().float().cpu(), vp.x).mean())
                    scores.setdefault(v, []).append((val, params))
                    log(f"{s} nfe {n} tune {v} {_fmt(params)}: val PSNR {val:.2f} ({core.calls} NFE, "
                        f"{time.perf_counter() - t0:.1f} s)")
            for v, lst in scores.items():
                best = max(lst, key=lambda e: e[0])
                chosen[(v, n)] = {"method": m, "params": best[1]}
                out[f"{s}.{v}.nfe{n}.params"] = _fmt(best[1])
                out[f"{s}.{v}.nfe{n}.val_psnr"] = best[0]

    # the test images
    hashes: dict[int, str] = {}

    def seen(b: int, y: torch.Tensor, who: str) -> None:
        h = y_hash(y)
        if hashes.setdefault(b, h) != h:
            raise ScoreinvError(f"bench peers: {who} was given other measurements for batch {b} than the other "
                                "methods (sha256 differs)")

    rows: dict[tuple[str, int], dict] = {}
    for n in nfes:
        runs: dict[tuple[str, str], list] = {}        # (method, params) -> the variants it scores
        for (v, nn), c in chosen.items():
            if nn == n:
                runs.setdefault((c["method"], _fmt(c["params"])), []).append((v, c["params"]))
        for (m, _), variants in runs.items():
            recs = {v: {"x": [], "sec": 0.0, "nfe": 0} for v, _ in variants}
            for b, p in enumerate(bench.batches):
                ph = peer_physics(dinv, p.op)
                y_peer = peer_measurement(p.y)
                seen(b, y_peer, f"deepinv {m}")
                core.calls = 0
                t0 = time.perf_counter()
                got = run_peer(dinv, m, variants[0][1], core, den, ph, y_peer, p.naive, n, _peer_seed(m, b))
                sec = time.perf_counter() - t0
                if core.calls != n:
                    raise ScoreinvError(f"bench peers: deepinv {m} evaluated the network {core.calls} times for "
                                        f"{n} NFE (the deepinv version differs from {DEEPINV_VERSION}?)")
                for v, _ in variants:
                    recs[v]["x"].append(got[v].detach().float().cpu())
                    recs[v]["sec"] += sec
                    recs[v]["nfe"] = core.calls
            for v, r in recs.items():
                rows[(v, n)] = r
        for solver in ours:
            base = resolve(setting.task["task"], solver, model=setting.model).cfg
            steps = steps_for_nfe(functools.partial(_nfe_at, base), n)
            resolved = resolve(setting.task["task"], solver, model=setting.model, sets={solver: {"steps": steps}})
            out[f"{s}.ours_{solver}.nfe{n}.settings"] = resolved.describe()
            r = {"x": [], "sec": 0.0, "nfe": 0}
            for b, p in enumerate(bench.batches):
                seen(b, p.y, f"our {solver}")
                g = torch.Generator().manual_seed(derive_seed(SEED, "solve", solver, b))
                t0 = time.perf_counter()
                x, k = solve(model, p.op, p.y.to(device), resolved.cfg, g)
                r["sec"] += time.perf_counter() - t0
                r["x"].append((x.abs() if x.is_complex() else x).float().cpu())
                r["nfe"] = int(k)
            rows[(f"ours_{solver}", n)] = r
            log(f"{s} nfe {n} ours_{solver}: {r['sec']:.1f} s")
    out[f"{s}.y_sha256"] = hashlib.sha256("".join(hashes[b] for b in sorted(hashes)).encode()).hexdigest()[:16]
    out[f"{s}.y_identical_both_sides"] = "yes"

    truth = torch.cat([p.x for p in bench.batches])
    for (v, n), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        x = torch.cat(r["x"])
        if not bool(torch.isfinite(x).all()):
            raise ScoreinvError(f"bench peers: {v} at {n} NFE gave NaN or Inf on {s}")
        ps, ss = psnr(x, truth).numpy(), ssim(x, truth).numpy()
        key = f"{s}.{v}.nfe{n}"
        out.update({f"{key}.psnr": float(ps.mean()), f"{key}.psnr_std": float(ps.std()),
                    f"{key}.ssim": float(ss.mean()), f"{key}.ssim_std": float(ss.std()),
                    f"{key}.nfe": r["nfe"], f"{key}.s_per_image": r["sec"] / truth.shape[0]})
    for n in nfes:
        for side, pre in (("ours", "ours_"), ("peer", "deepinv_")):
            cands = [(out[f"{s}.{v}.nfe{nn}.psnr"], v) for (v, nn) in rows if nn == n and v.startswith(pre)]
            best = max(cands)
            out[f"{s}.nfe{n}.best_{side}"] = best[1]
            out[f"{s}.nfe{n}.best_{side}_psnr"] = best[0]
        out[f"{s}.nfe{n}.ours_minus_peer_db"] = out[f"{s}.nfe{n}.best_ours_psnr"] - out[f"{s}.nfe{n}.best_peer_psnr"]
    return out


def _nfe_at(cfg, steps: int) -> int:
    return dataclasses.replace(cfg, steps=steps).nfe()


def table(res: dict) -> str:
    """The per-method numbers of `res` as a Markdown table (setting, method, NFE, PSNR, SSIM, s/image)."""
    lines = ["| setting | method | NFE | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|---|---|"]
    for k, v in res.items():
        if not k.endswith(".psnr") or k.count(".") != 3:
            continue
        key = k[:-len(".psnr")]
        s, method, _ = key.split(".")
        lines.append(f"| {s} | {method} | {res[key + '.nfe']} | {v:.2f} ± {res[key + '.psnr_std']:.2f} | "
                     f"{res[key + '.ssim']:.4f} | {res[key + '.s_per_image']:.2f} |")
    return "\n".join(lines)


def best_lines(res: dict) -> list[str]:
    """One line per setting and NFE: the best of each side and the difference."""
    out = []
    for k, v in res.items():
        if k.endswith(".ours_minus_peer_db"):
            pre = k[:-len(".ours_minus_peer_db")]
            out.append(f"{pre}: best ours {res[pre + '.best_ours']} {res[pre + '.best_ours_psnr']:.2f} dB, best peer "
                       f"{res[pre + '.best_peer']} {res[pre + '.best_peer_psnr']:.2f} dB ({v:+.2f} dB)")
    return out
