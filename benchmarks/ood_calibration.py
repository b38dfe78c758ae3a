"""Calibration of the out-of-distribution guard (scoreinv.ood; docs/design.md §4.4, issue 13 item 7).

    python benchmarks/ood_calibration.py --work OUT [--checkpoint mri64] [--accelerations 8,4]
                                         [--noise 0,0.05] [--template-images 16] [--recon all|subset|none]
    python benchmarks/ood_calibration.py --work OUT --checkpoint ct256 --clean-ct

--clean-ct (a CT prior): τ on clean images only, per group: the model's own validation images (the
reference), every other slice of the real-CT test patient lung2, every third brain2 slice (MR of a
head), and the pydicom images; with the model's threshold (`ood.typicality_threshold`) and how
many of each group it flags. The τ of lung2 reconstructions is the `ood_tau` column of `scoreinv
eval`'s metrics.csv.

For a shipped MRI prior (default mri64, at its own image size) it measures, per image, the
typicality τ of `scoreinv.ood` on
  - the clean image (τ_clean),
  - the zero-filled image against the clean reference (τ_zf) and against the reference of
    zero-filled validation images under the same mask (τ_zf/zf),
  - the final reconstruction (τ_rec: what `reconstruct` and `eval` judge), with its data residual ρ
    and noise floor ν, the guard's verdict, and the PSNR of zero-filled and reconstruction,
on three groups of images:
  - template: held-out MNI152 template slices (`--data brain`, split test, evenly spread);
  - brain2: every slice of the real test patient of `mri-real` at the model's size (fetched with
    `scoreinv data fetch mri-real`), a real head the prior never saw;
  - foreign: the MR and CT images pydicom ships (MR_small.dcm, examples_overlay.dcm: an abdomen,
    CT_small.dcm: a spine CT, J2K_pixelrep_mismatch.dcm: a head CT, image_dfl.dcm: a synthetic
    test pattern) scaled as `scoreinv simulate --input FILE --size S` scales them.
Every image is measured with one random column mask per acceleration (fastMRI centre, seed 0),
noise-free and with complex Gaussian noise of each --noise level (relative to the RMS of the sampled
k-space, as `scoreinv simulate --noise`), and reconstructed by the model's shipped preset of
--solver (final projection off for noisy data, as `reconstruct` does). Results are cached in
OUT/stats.json (a rerun resumes) and printed as markdown tables, with the margin of each
statistic: the smallest foreign τ over the largest template τ.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from scoreinv import ood
from scoreinv.atomic import write_text
from scoreinv.errors import run_script
from scoreinv.metrics import psnr
from scoreinv.sampling.inputs import problem_inputs
from scoreinv.sampling.settings import noisy_level, resolve, shipped_model
from scoreinv.sampling.solvers import solve
from scoreinv.score import load_score_model
from scoreinv.tasks import build_problem, task_options

FOREIGN = ("MR_small.dcm", "examples_overlay.dcm", "CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "image_dfl.dcm")
MASK_SEED = 0
GROUPS = ("template", "brain2", "foreign")


def template_images(n: int, size: int) -> dict[str, torch.Tensor]:
    from scoreinv.data.registry import build_dataset
    ds = build_dataset("brain", "test", size)
    idx = [round(j * (len(ds) - 1) / max(n - 1, 1)) for j in range(n)]
    return {f"template/{i}": ds[i] for i in idx}


def brain2_images(size: int) -> dict[str, torch.Tensor]:
    from scoreinv.data.registry import build_dataset
    ds = build_dataset("mri-real", "test", size)
    return {f"brain2/{k}": ds[i] for i, (_, k) in enumerate(ds.index)}


def foreign_images(size: int) -> dict[str, torch.Tensor]:
    """The pydicom test images as `scoreinv simulate --input FILE --size SIZE` prepares them."""
    from pydicom.data import get_testdata_file

    from scoreinv.commands.simulate import prepare_images
    from scoreinv.data.readers import read_volume
    out = {}
    for name in FOREIGN:
        vol = read_volume(get_testdata_file(name))
        out[f"foreign/{name}"] = prepare_images(vol.data[:1], vol.meta["hu"], "auto", size, square=False)[0]
    return out


def run_clean_ct(args) -> int:
    """--clean-ct (module docstring)."""
    from scoreinv.data.registry import build_dataset
    torch.set_num_threads(1)
    model, cfg = load_score_model(args.checkpoint)
    size = int(cfg.data.image_size)
    ref = ood.model_reference(args.checkpoint, model, cfg)
    limit = ood.typicality_threshold(ref)
    val, _ = ood.validation_images(cfg)
    test = build_dataset("ct-real", "test", size)
    groups = {"validation (the reference)": val,
              "lung2 (unseen chest CT)": torch.stack([test[i] for i in range(0, len(test), 2)]),
              "brain2 (MR head)": torch.stack(list(brain2_images(size).values())[::3]),
              **{f"pydicom {k.split('/')[1]}": v[None] for k, v in foreign_images(size).items()}}
    lines = [f"ct OOD calibration, clean images: {args.checkpoint} ({size}x{size}), threshold τ > {limit:.3g} "
             f"(max of {ood.TYPICALITY_THRESHOLD:g} and {ood.THRESHOLD_MARGIN:g} x validation max "
             f"{ref['validation_tau']['max']:.2f})", "",
             "| group | images | τ min | τ median | τ max | flagged |", "|---|---|---|---|---|---|"]
    for name, x in groups.items():
        tau = torch.cat([ood.typicality(ood.statistic(model, x[i:i + args.batch].float()), ref)
                         for i in range(0, len(x), args.batch)])
        lines.append(f"| {name} | {len(tau)} | {tau.min():.2f} | {tau.median():.2f} | {tau.max():.2f} | "
                     f"{int((tau > limit).sum())} |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    write_text(Path(args.work) / "clean_ct.md", text + "\n")
    print(text)
    return 0


def tag(r: float, noise: float) -> str:
    return f"R{r:g}" + (f"-n{noise:g}" if noise else "")


def mask_problem(x: torch.Tensor, r: float, noise: float = 0.0):
    """The measurement of images x (B, 1, S, S) with the random column mask of seed MASK_SEED."""
    return build_problem(x, task_options("mri", acceleration=r, mask="random", noise=noise),
                         torch.Generator().manual_seed(MASK_SEED))


class Stats:
    """OUT/stats.json: {image key: {statistic: value}} written after every batch."""

    def __init__(self, path: Path):
        self.path = path
        self.d = json.loads(path.read_text()) if path.exists() else {}

    def missing(self, keys, what):
        return [k for k in keys if what not in self.d.get(k, {})]

    def put(self, key, what, value):
        self.d.setdefault(key, {})[what] = value

    def save(self):
        write_text(self.path, json.dumps(self.d, indent=1))


def run(args) -> int:
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, cfg = load_score_model(args.checkpoint)
    size = int(cfg.data.image_size)
    accs = [float(a) for a in args.accelerations.split(",")]
    noises = [float(n) for n in args.noise.split(",")]
    st = Stats(work / "stats.json")
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))

    # references: the clean validation images (what the model carries) and, per R, their zero-filled images
    val, describe = ood.validation_images(cfg)
    if "_reference" not in st.d:
        st.d["_reference"] = ood.reference_values(model, val, describe)
        st.save()
    ref, zref = st.d["_reference"], {}
    for r in accs:
        key = f"_reference_zf{r:g}"
        if key not in st.d:
            p = mask_problem(val[:args.zf_reference_images], r)
            st.d[key] = ood.reference_values(model, p.naive.float(), {"of": f"zero-filled R={r:g}"})
            st.save()
        zref[r] = st.d[key]

    images = {**template_images(args.template_images, size), **brain2_images(size), **foreign_images(size)}
    keys = list(images)
    recon_keys = {"all": keys, "none": [],
                  "subset": [k for j, k in enumerate(keys) if k.startswith("foreign/")
                             or (k.startswith("template/") and j % 2 == 0)
                             or (k.startswith("brain2/") and int(k.split("/")[1]) % 3 == 0)]}[args.recon]

    def batches(todo):
        for i in range(0, len(todo), args.batch):
            yield todo[i:i + args.batch]

    for b in batches(st.missing(keys, "clean")):
        e = ood.statistic(model, torch.stack([images[k] for k in b]))
        for k, row in zip(b, e.tolist()):
            st.put(k, "clean", row)
        st.save()
    for r in accs:
        t = tag(r, 0.0)
        for b in batches(st.missing(keys, f"zf_{t}")):
            p = mask_problem(torch.stack([images[k] for k in b]), r)
            e = ood.statistic(model, p.naive.float())
            for i, k in enumerate(b):
                st.put(k, f"zf_{t}", e[i].tolist())
                st.put(k, f"psnr_zf_{t}", float(psnr(p.naive.float()[i:i + 1], p.x[i:i + 1])))
            st.save()
            log(f"zero-filled {t}: {len(b)} images")
    for noise in noises:
        settings = resolve("mri", args.solver, model=shipped_model(args.checkpoint),
                           noisy=noisy_level("mri", noise)).cfg
        for r in accs:
            t = tag(r, noise)
            for b in batches(st.missing(recon_keys, f"rec_{t}")):
                p = mask_problem(torch.stack([images[k] for k in b]), r, noise)
                inputs = problem_inputs(p, settings)
                t0 = time.perf_counter()
                x, _ = solve(model, p.op, p.y, settings, torch.Generator().manual_seed(1), **inputs)
                secs = time.perf_counter() - t0
                recs = ood.check(model, p.op, p.y, x.float(), ref, inputs["sigma_y"])
                e = ood.statistic(model, x.float())
                for i, k in enumerate(b):
                    st.put(k, f"rec_{t}", e[i].tolist())
                    st.put(k, f"rho_{t}", recs[i].residual)
                    st.put(k, f"nu_{t}", recs[i].noise_floor)
                    st.put(k, f"psnr_rec_{t}", float(psnr(x.float()[i:i + 1], p.x[i:i + 1])))
                    if noise:
                        st.put(k, f"psnr_zf_{t}", float(psnr(p.naive.float()[i:i + 1], p.x[i:i + 1])))
                st.save()
                log(f"reconstruction {t}: {len(b)} images, {secs:.0f} s")
    print(tables(st, keys, accs, noises, ref, zref))
    return 0


def _tau(e, ref) -> float:
    return float(ood.typicality(torch.tensor([e], dtype=torch.float64), ref)[0])


def _margins(rows: dict[str, dict[str, float]], cols) -> list[str]:
    """Per statistic: the largest template and brain2 value, the smallest foreign one, and the margin
    foreign min / template max."""
    out = ["| statistic | template max | brain2 min-max | foreign min | margin (foreign min / template max) |",
           "|---|---|---|---|---|"]
    for c in cols:
        by = {g: [v[c] for k, v in rows.items() if k.startswith(g + "/") and not math.isnan(v[c])] for g in GROUPS}
        if not all(by.values()):
            continue
        tm, fm = max(by["template"]), min(by["foreign"])
        out.append(f"| {c} | {tm:.2f} | {min(by['brain2']):.2f}-{max(by['brain2']):.2f} | {fm:.2f} | {fm / tm:.2f} |")
    return out


def tables(st: Stats, keys, accs, noises, ref, zref) -> str:
    """Table 1: τ on the clean, zero-filled and reconstructed images (noise-free); table 2: per
    setting, the guard's statistics on the reconstruction, its verdict and the PSNRs; margins."""
    nan = math.nan
    cols1 = ["τ_clean"] + [f"{s} {tag(r, 0)}" for r in accs for s in ("τ_zf", "τ_zf/zf", "τ_rec")]
    rows1 = {}
    for k in keys:
        d = st.d.get(k, {})
        v = {"τ_clean": _tau(d["clean"], ref) if "clean" in d else nan}
        for r in accs:
            t = tag(r, 0)
            v[f"τ_zf {t}"] = _tau(d[f"zf_{t}"], ref) if f"zf_{t}" in d else nan
            v[f"τ_zf/zf {t}"] = _tau(d[f"zf_{t}"], zref[r]) if f"zf_{t}" in d else nan
            v[f"τ_rec {t}"] = _tau(d[f"rec_{t}"], ref) if f"rec_{t}" in d else nan
        rows1[k] = v
    lines = ["| image | " + " | ".join(cols1) + " |", "|---|" + "---|" * len(cols1)]
    lines += [f"| {k} | " + " | ".join(f"{v[c]:.2f}" for c in cols1) + " |" for k, v in rows1.items()]
    lines += [""] + _margins(rows1, cols1) + [""]
    sets = [tag(r, n) for n in noises for r in accs]
    lines += ["| image | " + " | ".join(f"τ_rec / ρ / ν / verdict / PSNR zf, rec {t}" for t in sets) + " |",
              "|---|" + "---|" * len(sets)]
    fired = {t: {g: [0, 0] for g in GROUPS} for t in sets}
    for k in keys:
        d, cells = st.d.get(k, {}), []
        for t in sets:
            if f"rec_{t}" not in d:
                cells.append("-")
                continue
            tau, nu = _tau(d[f"rec_{t}"], ref), d.get(f"nu_{t}", 0.0)       # noise-free: ν = 0
            rec = ood.verdict(tau, {}, d[f"rho_{t}"], nu, threshold=ood.typicality_threshold(ref))
            fired[t][k.split("/")[0]][0] += rec.verdict != "ok"
            fired[t][k.split("/")[0]][1] += 1
            cells.append(f"{tau:.2f} / {d[f'rho_{t}']:.1e} / {nu:.1e} / {rec.verdict} / "
                         f"{d.get(f'psnr_zf_{t}', nan):.1f}, {d[f'psnr_rec_{t}']:.1f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "| setting | " + " | ".join(f"{g}: warned / images" for g in GROUPS) + " |",
              "|---|" + "---|" * len(GROUPS)]
    lines += [f"| {t} | " + " | ".join(f"{fired[t][g][0]} / {fired[t][g][1]}" for g in GROUPS) + " |" for t in sets]
    errs = ", ".join(f"{v:.3g}" for v in ref["ratio"])
    lines.append(f"\nthresholds: τ > {ood.typicality_threshold(ref):.3g}, ρ > {ood.RESIDUAL_FACTOR:g} ν + "
                 f"{ood.RESIDUAL_FLOOR:g}; reference ({ref.get('dataset')} {ref.get('split')}, {ref['images']} "
                 f"images): r̄ = {errs} at σ = {ref['sigmas']}; the validation images' own τ: median "
                 f"{ref['validation_tau']['median']:.2f}, max {ref['validation_tau']['max']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder of the cached statistics (stats.json; a rerun resumes)")
    p.add_argument("--checkpoint", default="mri64")
    p.add_argument("--accelerations", default="8,4")
    p.add_argument("--noise", default="0,0.05", help="noise levels of the reconstructions (comma list)")
    p.add_argument("--template-images", type=int, default=16)
    p.add_argument("--zf-reference-images", type=int, default=16)
    p.add_argument("--solver", default="dds")
    p.add_argument("--recon", choices=("all", "none", "subset"), default="all",
                   help="which images are reconstructed (subset: every other template slice, every third brain2 "
                        "slice, every foreign image)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clean-ct", action="store_true", help="a CT prior: τ of clean images per group only")
    args = p.parse_args(argv)
    return run_clean_ct(args) if args.clean_ct else run(args)


if __name__ == "__main__":
    run_script(main, "ood_calibration")
