"""The volume study of issue 14 (docs/design.md §9): one CT volume reconstructed by FBP, 2-D TV slice by
slice, 3-D TV (tv3d, D31) and a score solver without and with z-TV coupling; PSNR on axial, coronal and
sagittal planes (HU window [-1000, 1000] and the [0, 1] scale), SSIM (HU window), the z-gradient RMSE
(D30) and seconds in a markdown table, and a figure of a coronal and a sagittal reformat.

    python benchmarks/volume_study.py --data lung2 --views 23 --out runs/volume_lung2_v23
    python benchmarks/volume_study.py --data phantom3d --depth 4 --image-size 64 --checkpoint ct64 --steps 4 \\
        --out runs/volume_tiny

Data (--data): lung2, the test volume of ct-real (61 axial slices 5 mm apart; `scoreinv data fetch
ct-real` first), or phantom3d (one procedural volume of the test split, --depth slices, isotropic
voxels); --slices all (default) or START:STOP, a contiguous slab. The slab is simulated once as eval
simulates (`tasks.build_problem`: the sinogram of a 4x finer grid, no inverse crime; --noise photons per
ray, 0 = noise-free) into OUT/measurements.npz. The score solver reads that file through the machinery
of `scoreinv reconstruct` (`reconstruct.plan`/`run`, coupling none and ztv); the classical methods get
its sinogram and operator.

TV weights are chosen on VALIDATION data, never on the test volume (`baselines.choose_weight`, PSNR over
the default grid): a validation volume of the same kind simulated the same way (lung2: lung1's
validation slab 20-27 of ct-real, a chest at 5 mm; phantom3d: a volume of the validation split), 2-D TV
slice by slice and tv3d on the volume with z_weight = in-plane pixel / slice spacing (tv.py). So is the
λ_z of the ztv run unless --ztv-lambda fixes it: the score solver with z-TV on the validation volume at
λ_z = c · pixel / spacing for c in ZTV_GRID and at 0 (no coupling), best mean PSNR-HU over the three
planes (choose_lambda_z). All are kept in OUT/weights.json.

Resumable per method: each result is OUT/METHOD.npy (METHOD: fbp, tv, tv3d, none, ztv; float32 (S, H, W),
[0, 1] scale) with OUT/METHOD.json (seconds, settings), and a method whose .npy exists is not run again
(score runs take tens of minutes on a CPU). OUT/study.json holds the settings: a rerun into the same OUT
with other settings is refused. Writes OUT/table.md and OUT/reformats.png; prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scoreinv import atomic, reconstruct
from scoreinv.baselines import choose_weight, get_baseline
from scoreinv.data.phantom3d import Phantom3D
from scoreinv.data.realdata import RealDataset
from scoreinv.errors import ScoreinvError, check_int, run_script
from scoreinv.imaging import save_figure
from scoreinv.metrics import hu_window, reformat, volume_metrics
from scoreinv.physics.measurements import load_measurements, save_measurements
from scoreinv.sampling.settings import SOLVERS
from scoreinv.score import load_score_model
from scoreinv.tasks import build_problem, task_options
from scoreinv.writers import write_volume

METHODS = ("fbp", "tv", "tv3d", "none", "ztv")
LABELS = {"fbp": "FBP", "tv": "TV (2-D, per slice)", "tv3d": "TV3D", "none": "{s}", "ztv": "{s} + z-TV"}
FIGURE = ("truth", "fbp", "tv3d", "none", "ztv")
LUNG2, LUNG1_VAL = "lung2", "lung1"
ZTV_GRID = (0.001, 0.003, 0.01, 0.03)   # λ_z / β of the validation choice (choose_lambda_z)


# --- data ---------------------------------------------------------------------------------------
def _real_volume(split: str, key: str, size: int) -> tuple[torch.Tensor, float, float]:
    """(slices (D, 1, S, S) of patient `key` in the ct-real split, in order; pixel mm; slice mm)."""
    ds = RealDataset("ct-real", split, size)
    rows = [i for i, (v, _) in enumerate(ds.index) if ds.scans[v].key == key]
    ks = [ds.index[i][1] for i in rows]
    if not rows or ks != list(range(ks[0], ks[0] + len(ks))):
        raise ScoreinvError(f"ct-real {split}: no contiguous slab of {key} (slices {ks})")
    scan = ds.scans[ds.index[rows[0]][0]]
    return ds.images[rows].clone(), ds.pixel_mm[rows[0]], scan.slice_mm


def volumes(args) -> dict:
    """{"test": (x, pixel mm, slice mm, what), "val": (...)} of --data at --image-size."""
    n = args.image_size
    if args.data == "lung2":
        x, px, dz = _real_volume("test", LUNG2, n)
        v, vpx, vdz = _real_volume("val", LUNG1_VAL, n)
        return {"test": (x, px, dz, f"lung2 (ct-real test), {len(x)} slices"),
                "val": (v, vpx, vdz, f"lung1 validation slab ({len(v)} slices)")}
    d = args.depth
    test = Phantom3D("test", n, args.seed, volumes=1, depth=d).volume(0)
    val = Phantom3D("val", n, args.seed, volumes=1, depth=d).volume(0)
    return {"test": (test, 1.0, 1.0, f"phantom3d test volume (seed {args.seed}), {d} slices"),
            "val": (val, 1.0, 1.0, f"phantom3d validation volume ({d} slices)")}


def slab(spec: str, n: int) -> slice:
    """--slices: 'all' or START:STOP (python-style, contiguous) -> a slice of the n slices."""
    if spec == "all":
        return slice(0, n)
    try:
        a, b = (int(p) if p.strip() else None for p in spec.split(":"))
    except ValueError:
        raise ScoreinvError(f"--slices {spec!r}: expected 'all' or START:STOP") from None
    r = range(n)[slice(a, b)]
    if len(r) < 2:
        raise ScoreinvError(f"--slices {spec!r}: selects {len(r)} of the {n} slices; a volume needs 2 or more")
    return slice(r.start, r.stop)


# --- methods ------------------------------------------------------------------------------------
def load(out: Path, name: str):
    """(volume (S, 1, H, W), record) of a finished method, or None."""
    f = out / f"{name}.npy"
    if not f.exists():
        return None
    rec = json.loads((out / f"{name}.json").read_text()) if (out / f"{name}.json").exists() else {}
    arr = np.load(f)
    return torch.from_numpy(arr).reshape(-1, 1, *arr.shape[-2:]), rec


def save(out: Path, name: str, x: torch.Tensor, rec: dict) -> None:
    """METHOD.json first, then METHOD.npy (the .npy marks the method done)."""
    atomic.write_text(out / f"{name}.json", json.dumps(rec, indent=2))
    write_volume(out / f"{name}.npy", x[:, 0].float().numpy())


def weights(out: Path, args, vols) -> dict:
    """TV and TV3D weights and the z-TV λ_z on the validation volume (module docstring), cached in weights.json."""
    path = out / "weights.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    v, vpx, vdz, what = vols["val"]
    prob = None

    def problem():
        nonlocal prob
        if prob is None:
            prob = build_problem(v, task_options("ct", views=args.views, noise=args.noise),
                                 torch.Generator().manual_seed(args.seed + 1))
        return prob

    def save():
        atomic.write_text(path, json.dumps(known, indent=2))

    for name in ("tv", "tv3d"):
        if name in known or name not in args.methods:
            continue
        kw = {"iters": args.tv_iters} | ({"z_weight": vpx / vdz} if name == "tv3d" else {})
        t = time.perf_counter()
        pr = problem()
        c = choose_weight(name, pr.baseline_op, pr.baseline_y, pr.x, **kw)
        known[name] = {"weight": c.weight, "grid": list(c.grid), "psnr": list(c.scores), "at_edge": c.at_edge,
                       "validation": what, **({"z_weight": kw["z_weight"]} if name == "tv3d" else {})}
        print(f"{name}: weight {c.weight:g} chosen on {what} (PSNR {max(c.scores):.2f} dB, "
              f"{time.perf_counter() - t:.0f} s){'; AT THE EDGE of the grid' if c.at_edge else ''}", flush=True)
        save()
    if "ztv" in args.methods and ztv_lambda(args, known) is None:
        choose_lambda_z(out, args, problem, vpx / vdz, what, known.setdefault("ztv", {}), save)
    return known


def ztv_lambda(args, known: dict) -> float | None:
    """The λ_z of this run's ztv: --ztv-lambda, else the validation choice in `known` (weights.json), else
    None (not chosen yet)."""
    return args.ztv_lambda if args.ztv_lambda is not None else known.get("ztv", {}).get("chosen")


def choose_lambda_z(out: Path, args, problem, beta: float, what: str, rec: dict, save) -> None:
    """λ_z of (D27) for the ztv run, chosen on the validation volume as the TV weights are (but scored
    by the mean PSNR-HU of the axial, coronal and sagittal planes, where the TV weights use PSNR on
    [0, 1]): the score solver with z-TV at λ_z = c · β for c in ZTV_GRID (β = in-plane pixel / slice
    spacing, the voxel aspect that also scales tv3d's z term, (D31); docs/design.md §9.5) and at
    λ_z = 0 (no coupling). `rec` (weights.json's "ztv" entry) is filled in place and each grid point's
    score is saved (`save()`) as soon as it is known, so an interrupted choice resumes where it stopped."""
    grid = [0.0] + [c * beta for c in ZTV_GRID]
    meas = out / "val_measurements.npz"
    if not meas.exists():
        p = problem()
        save_measurements(meas, "ct", p.baseline_op, p.baseline_y, p.noise, ground_truth=p.x)
    gt = load_measurements(meas).ground_truth
    rec.update(grid=grid, beta=beta, validation=what, score="mean PSNR-HU of the axial, coronal and sagittal planes")
    rec.setdefault("psnr_hu", {})
    for lam in grid:
        key = f"{lam:.6g}"
        if key in rec["psnr_hu"]:
            continue
        t = time.perf_counter()
        x, _ = run_score("ztv", meas, out, args, lam=lam, name="val_ztv")
        hu = scores(x, gt)["hu"]
        rec["psnr_hu"][key] = sum(hu[f"psnr_{p}"] for p in ("axial", "coronal", "sagittal")) / 3
        print(f"ztv: λ_z {lam:.4g} on {what}: mean PSNR-HU {rec['psnr_hu'][key]:.2f} dB "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        save()
    best = max(grid, key=lambda g: rec["psnr_hu"][f"{g:.6g}"])
    rec |= {"chosen": best, "at_edge": best == grid[-1]}
    print(f"ztv: λ_z {best:.4g} chosen on {what}" + (" (0: coupling does not help on validation)" if best == 0 else "")
          + ("; AT THE EDGE of the grid" if rec["at_edge"] else ""), flush=True)
    save()


def check_finished_ztv(out: Path, args) -> None:
    """Refuse a finished ztv result (OUT/ztv.npy) whose λ_z is not the one this run would use: --ztv-lambda,
    or the validation choice in weights.json (a folder from before the choice holds none: its ztv was
    made at the solver's default)."""
    if "ztv" not in args.methods or not (out / "ztv.npy").exists():
        return
    rec = json.loads((out / "ztv.json").read_text()) if (out / "ztv.json").exists() else {}
    known = json.loads((out / "weights.json").read_text()) if (out / "weights.json").exists() else {}
    want = ztv_lambda(args, known)
    if want is None or rec.get("ztv_lambda") != want:
        raise ScoreinvError(f"{out / 'ztv.npy'}: made with λ_z {rec.get('ztv_lambda')}, not "
                            + (f"{want:g}" if want is not None else "a λ_z chosen on validation")
                            + "; remove it (and ztv.json) to run ztv again, or choose another --out")


def run_classical(name: str, meas, w: dict, beta: float, args) -> tuple[torch.Tensor, dict]:
    op, y = meas.operator(), meas.y
    kw = {} if name == "fbp" else {"weight": w[name]["weight"], "iters": args.tv_iters}
    if name == "tv3d":
        kw["z_weight"] = beta
    t = time.perf_counter()
    x = get_baseline(name)(op, y, **kw).x
    return x, {"seconds": time.perf_counter() - t, **kw}


def run_score(coupling: str, meas_path: Path, out: Path, args, lam: float | None = None,
              name: str | None = None) -> tuple[torch.Tensor, dict]:
    """The score solver on the volume of `meas_path` through `reconstruct.plan`/`run`; ztv at λ_z `lam`."""
    sets = {"solver": {"ztv_lambda": lam}} if coupling == "ztv" and lam is not None else {}
    tmp = out / f"{name or coupling}.partial.npy"
    tmp.unlink(missing_ok=True)
    p = reconstruct.plan(args.checkpoint, str(meas_path), str(tmp), solver=args.solver, steps=args.steps, sets=sets,
                         batch_size=args.batch_size, seed=args.seed, device=args.device, coupling=coupling)
    r = reconstruct.run(p, progress=sys.stderr.isatty())
    tmp.unlink(missing_ok=True)
    return r.mean, {"seconds": r.seconds, "nfe_per_slice": r.nfe, "estimate": r.estimate,
                    "settings": p.settings.describe(), "ztv_lambda": p.cfg.ztv_lambda if coupling == "ztv" else None}


# --- table and figure ---------------------------------------------------------------------------
def scores(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Volume metrics on the [0, 1] scale and in the HU window (metrics.hu_window)."""
    unit = volume_metrics(x, ref)
    hu = volume_metrics(hu_window(x.double()), hu_window(ref.double()))
    return {"unit": unit, "hu": hu}


def _f(v: float, d: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def table(rows: list[tuple[str, dict, dict]], head: str) -> str:
    planes = ("axial", "coronal", "sagittal")
    cols = ([f"PSNR-HU {p}" for p in planes] + [f"PSNR {p}" for p in planes] + [f"SSIM-HU {p}" for p in planes]
            + ["z-grad RMSE", "seconds"])
    lines = [head, "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, s, rec in rows:
        vals = ([_f(s["hu"][f"psnr_{p}"]) for p in planes] + [_f(s["unit"][f"psnr_{p}"]) for p in planes]
                + [_f(s["hu"][f"ssim_{p}"], 4) for p in planes] + [_f(s["unit"]["zgrad_rmse"], 5),
                                                                   _f(rec.get("seconds"), 1)])
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def figure(path: Path, vols: dict, labels: dict, aspect: float, title: str) -> None:
    """Middle coronal and sagittal planes (superior at the top) of each volume, HU window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in FIGURE if n in vols]
    tall = max(0.15, min(3.0, len(vols["truth"]) * aspect / vols["truth"].shape[-1]))   # plane height / width
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 2 * 2.6 * tall + 0.9), squeeze=False)
    for j, n in enumerate(names):
        v = hu_window(vols[n].double())
        for i, plane in enumerate(("coronal", "sagittal")):
            planes = reformat(v, plane)
            ax = axes[i, j]
            ax.imshow(planes[planes.shape[0] // 2, 0].numpy(), cmap="gray", vmin=0, vmax=1, aspect=aspect,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(labels[n], fontsize=9)
            if j == 0:
                ax.set_ylabel(plane, fontsize=9)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


# --- the study ----------------------------------------------------------------------------------
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("lung2", "phantom3d"), default="lung2")
    p.add_argument("--views", type=int, default=23, help="CT views (default 23)")
    p.add_argument("--slices", default="all", help="all (default) or START:STOP, a contiguous slab")
    p.add_argument("--depth", type=int, default=16, help="phantom3d: slices of the volume (default 16)")
    p.add_argument("--image-size", type=int, help="slices are N x N (default: the checkpoint's)")
    p.add_argument("--noise", type=float, default=0.0, help="CT photons per ray (default 0: noise-free)")
    p.add_argument("--checkpoint", default="ct256", help="score model (default ct256)")
    p.add_argument("--solver", default="diffpir", choices=SOLVERS, help="score solver (default diffpir)")
    p.add_argument("--steps", type=int, help="noise levels (default: the preset's)")
    p.add_argument("--ztv-lambda", type=float, help="λ_z of the ztv run (default: chosen on the validation volume "
                   "from λ_z = c · pixel/spacing, c in " + ", ".join(f"{c:g}" for c in ZTV_GRID) + ", and 0)")
    p.add_argument("--batch-size", type=int, default=8, help="images per network call (default 8)")
    p.add_argument("--tv-iters", type=int, default=300, help="PDHG iterations of tv and tv3d (default 300)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise ScoreinvError(f"--methods: {', '.join(bad) or 'none'}; expected some of {', '.join(METHODS)}")
    check_int("--views", args.views)
    check_int("--depth", args.depth, 2)
    check_int("--batch-size", args.batch_size)
    check_int("--tv-iters", args.tv_iters)
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.image_size is None:
        args.image_size = int(load_score_model(args.checkpoint)[1].data.image_size)
    vols = volumes(args)
    x_all, px, dz, what = vols["test"]
    sl = slab(args.slices, len(x_all))
    x = x_all[sl]
    beta = px / dz
    settings = {k: getattr(args, k) for k in ("data", "views", "depth", "image_size", "noise", "checkpoint", "solver",
                                              "steps", "ztv_lambda", "batch_size", "tv_iters", "seed")}
    settings["slices"] = [sl.start, sl.stop]
    if args.data == "lung2":
        settings.pop("depth")
    study = out / "study.json"
    if study.exists() and json.loads(study.read_text()) != settings:
        raise ScoreinvError(f"{out}: holds a study with other settings ({study}); choose another --out")
    atomic.write_text(study, json.dumps(settings, indent=2))
    print(f"volume: {what}, slices {sl.start}-{sl.stop - 1}, {args.image_size}x{args.image_size}, pixel {px:.4g} mm, "
          f"slices {dz:g} mm apart (tv3d z_weight {beta:.4g}); {args.views} views, noise {args.noise:g}", flush=True)
    meas_path = out / "measurements.npz"
    if not meas_path.exists():
        prob = build_problem(x, task_options("ct", views=args.views, noise=args.noise),
                             torch.Generator().manual_seed(args.seed))
        save_measurements(meas_path, "ct", prob.baseline_op, prob.baseline_y, prob.noise, ground_truth=prob.x)
    meas = load_measurements(meas_path)
    check_finished_ztv(out, args)
    w = weights(out, args, vols)
    results = {}
    for name in args.methods:
        done = load(out, name)
        if done is None:
            print(f"{name}: running", flush=True)
            lam = ztv_lambda(args, w) if name == "ztv" else None
            xr, rec = (run_score(name, meas_path, out, args, lam=lam) if name in ("none", "ztv")
                       else run_classical(name, meas, w, beta, args))
            save(out, name, xr, rec)
            done = load(out, name)
        else:
            print(f"{name}: done before ({out / (name + '.npy')}), skipped", flush=True)
        results[name] = done
    gt = meas.ground_truth
    labels = {n: LABELS[n].format(s=args.solver) for n in METHODS} | {"truth": "ground truth"}
    rows = [(labels[n], scores(v, gt), rec) for n, (v, rec) in results.items()]
    head = (f"Volume study: {what}, slices {sl.start}-{sl.stop - 1}, {args.image_size}x{args.image_size}, "
            f"{args.views} views, noise {args.noise:g}; {args.checkpoint} {args.solver}"
            + (f" NFE {results['none'][1]['nfe_per_slice']}/slice" if "none" in results else "")
            + ". PSNR-HU: window [-1000, 1000] HU; PSNR: [0, 1] scale; z-grad RMSE (D30) on the [0, 1] scale.")
    text = table(rows, head)
    atomic.write_text(out / "table.md", text)
    figure(out / "reformats.png", {"truth": gt} | {n: v for n, (v, _) in results.items()}, labels, dz / px,
           f"{what}: middle coronal and sagittal planes, HU window [-1000, 1000]")
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'reformats.png'}")
    return 0


if __name__ == "__main__":
    run_script(main, "volume_study")
