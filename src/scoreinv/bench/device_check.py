"""The GPU run in one go (`make device-check`, scripts/device_check.sh): bench, train, export.

    python -m scoreinv.bench.device_check [--out DIR] [--minutes M] [--priors NAME=PRESET:INIT,...]

1. The device and versions.
2. `bench train` on the device (bench/train.py) for the first prior's preset at the training batch;
   it writes the probe cache, so the trainings take the measured precision, layout and compile.
3. Each prior trained with `--init` from shipped weights for `--minutes` / (number of priors)
   minutes (train.max_minutes), validated at its start (the shipped weights) and its end.
4. Written to the output folder (at most 8 files, no subfolders, so it can be copied back as it
   is): `<name>_<device>.pt` (the float16 EMA weights, scoreinv.export; ship with
   `cp OUT/ct_cuda.pt src/scoreinv/resources/models/ct64.pt` when it beats the shipped weights),
   `summary.json` (bench numbers; per prior: steps, images, minutes, validation before and after,
   `beats_init`: denoising error 1 % lower and reconstruction PSNR 0.05 dB higher than the weights it
   started from) and `logs.tar.gz` (each run's config.yaml, validation.jsonl and TensorBoard files).

The priors are `NAME=PRESET:INIT` pairs: today ct=ct64:ct64 and mri=mri64:mri64; a patch prior
is named the same way once its preset and weights exist (e.g. `ctpatch=ctpatch64:ctpatch64`), and
INIT may be `none` (train from scratch). On the CPU the same run works with a tiny budget (a
dry run: `--minutes 0.1 --batch 2 --bench-groups ''`).
"""
from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from .. import config as C
from ..atomic import atomic_path, check_new_output, write_text
from ..errors import ScoreinvError, check_int, check_range
from ..export import export
from ..train import resolve_device, train
from . import emit
from .train import GROUPS, check_groups
from .train import run as bench_train

DEFAULT_PRIORS = "ct=ct64:ct64,mri=mri64:mri64"


def parse_priors(text: str) -> list[tuple[str, str, str | None]]:
    """'ct=ct64:ct64,mri=mri64:none' -> [(name, preset, init or None), ...]."""
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, eq, rest = item.partition("=")
        preset, colon, init = rest.partition(":")
        if not (eq and colon and name.isidentifier() and preset):
            raise ScoreinvError(f"--priors entry {item!r}: expected NAME=PRESET:INIT (INIT a model name, a "
                                f"checkpoint, or none), e.g. ct=ct64:ct64")
        out.append((name, preset, None if init in ("", "none") else init))
    if not out:
        raise ScoreinvError(f"--priors {text!r}: expected at least one NAME=PRESET:INIT")
    return out


MSE_MARGIN, PSNR_MARGIN = 0.01, 0.05   # beats_init: 1 % lower denoising error and 0.05 dB higher PSNR


def _before_after(records: list[dict]) -> dict:
    """First and last validation record of a run; beats_init: a later step whose denoising error is
    at least MSE_MARGIN (relative) lower and, when measured, whose reconstruction PSNR is at least
    PSNR_MARGIN dB higher than the first's (smaller differences are within the validation's spread)."""
    if not records:
        return {}
    first, last = records[0], records[-1]
    keys = [k for k in ("denoise_mse_mean", "recon_psnr") if k in first and k in last]
    out = {"before": {k: first[k] for k in keys}, "after": {k: last[k] for k in keys},
           "before_step": first["step"], "after_step": last["step"]}
    beats = last.get("denoise_mse_mean", 0) < (1 - MSE_MARGIN) * first.get("denoise_mse_mean", 0)
    if "recon_psnr" in keys:
        beats = beats and last["recon_psnr"] > first["recon_psnr"] + PSNR_MARGIN
    out["beats_init"] = bool(beats and last["step"] > first["step"])
    return out


def run(out: Path, minutes: float, priors, batch: int | None, bench_seconds: float, bench_groups,
        val_every: int, overrides=(), work: Path | None = None, device: str = "auto") -> dict:
    """Steps 1-4 of the module docstring; returns the summary (also OUT/summary.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    check_range("--minutes", minutes, 0.0)
    batch = check_int("--batch", batch) if batch else (128 if dev.type == "cuda" else None)
    for name, *_ in priors:   # refuse an occupied OUT now, not after the training budget is spent
        for f in (f"{name}_{dev.type}.pt", "summary.json", "logs.tar.gz"):
            check_new_output(out / f, overwrite=False, flag="--out")
    summary = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               "torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
               "minutes_per_prior": minutes / len(priors), "priors": {}}
    print(f"# device check: {summary['device']} | torch {summary['torch']} | CUDA {summary['cuda']} | "
          f"{len(priors)} priors x {summary['minutes_per_prior']:.2f} min", flush=True)
    t0 = time.time()
    first_preset = priors[0][1]
    res = bench_train(first_preset, batch_size=batch, overrides=list(overrides), seconds=bench_seconds,
                      device=str(dev), groups=bench_groups)
    emit(res, f"train ({first_preset}, {dev})")
    summary["bench"] = res
    summary["bench_s"] = time.time() - t0
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="scoreinv_device_check_"))
    for name, preset, init in priors:
        ov = [*overrides, f"train.max_minutes={minutes / len(priors)}", "train.snapshot_every=0",
              f"val.every={val_every}", "train.checkpoint_every=1000000", "train.meta_every=500",
              f"train.device={dev.type}"]
        if batch:
            ov.append(f"train.batch_size={batch}")
        cfg = C.load_config(preset, ov)
        wd = work / name
        t1 = time.time()
        got = train(cfg, wd, progress=False, init=init)
        path = export(str(wd), f"{name}_{dev.type}", dest=str(out))
        recs = [json.loads(line) for line in (wd / "validation.jsonl").read_text().splitlines()] \
            if (wd / "validation.jsonl").exists() else []
        summary["priors"][name] = {"preset": preset, "init": init, "steps": got["step"],
                                   "steps_this_run": len(got["losses"]), "batch": cfg.train.batch_size,
                                   "images": len(got["losses"]) * cfg.train.batch_size, "seconds": time.time() - t1,
                                   "speed": got["speed"].describe(), "weights": path.name, **_before_after(recs)}
        print(f"# {name}: {json.dumps(summary['priors'][name])}", flush=True)
    with atomic_path(out / "logs.tar.gz", suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, _, _ in priors:
            for rel in ("config.yaml", "validation.jsonl", "tb"):
                if (work / name / rel).exists():
                    tar.add(work / name / rel, arcname=f"{name}/{rel}")
    summary["total_s"] = time.time() - t0
    write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    print(f"# device check done in {summary['total_s']:.0f} s: {out}", flush=True)
    return summary


def main(argv=None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=env("OUT") or "device_check_out", help="output folder ($OUT)")
    p.add_argument("--minutes", type=float, default=env("DEVICE_CHECK_MINUTES", "5"),
                   help="training minutes for all priors together ($DEVICE_CHECK_MINUTES, default 5)")
    p.add_argument("--priors", default=env("DEVICE_CHECK_PRIORS", DEFAULT_PRIORS),
                   help=f"NAME=PRESET:INIT,... ($DEVICE_CHECK_PRIORS, default {DEFAULT_PRIORS})")
    p.add_argument("--batch", type=int, default=env("DEVICE_CHECK_BATCH", "0"),
                   help="training batch ($DEVICE_CHECK_BATCH; 0: 128 on CUDA, the preset's on the CPU)")
    p.add_argument("--bench-seconds", type=float, default=env("DEVICE_CHECK_BENCH_SECONDS", "2"),
                   help="seconds per bench variant ($DEVICE_CHECK_BENCH_SECONDS, default 2)")
    p.add_argument("--bench-groups", default=env("DEVICE_CHECK_BENCH_GROUPS"),
                   help=f"bench groups, comma-separated, of {','.join(GROUPS)} ($DEVICE_CHECK_BENCH_GROUPS; "
                        f"default layouts,compile,data,batch on CUDA, layouts on the CPU; '' for none)")
    p.add_argument("--val-every", type=int, default=env("DEVICE_CHECK_VAL_EVERY", "2000"),
                   help="validation interval in steps ($DEVICE_CHECK_VAL_EVERY, default 2000)")
    p.add_argument("--set", dest="overrides", action="append",
                   default=[s for s in env("DEVICE_CHECK_SET", "").split(";") if s.strip()],
                   help="config override for every run, repeatable ($DEVICE_CHECK_SET, ;-separated)")
    p.add_argument("--work", default=env("DEVICE_CHECK_WORK"), help="work directories (default: a temporary one)")
    p.add_argument("--device", default=env("DEVICE_CHECK_DEVICE", "auto"), choices=["auto", "cpu", "cuda"])
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    groups_text = a.bench_groups if a.bench_groups is not None else (
        "layouts,compile,data,batch" if dev.type == "cuda" else "layouts")
    groups = check_groups(groups_text) if groups_text.strip() else ()
    run(Path(a.out), a.minutes, parse_priors(a.priors), a.batch, a.bench_seconds, groups,
        check_int("--val-every", a.val_every, lo=0), a.overrides, a.work, a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
