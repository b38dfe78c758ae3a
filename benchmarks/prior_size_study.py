"""Which network and window size give the best validation per CPU-hour (real-CT issue; docs/models/ct256.md).

    python benchmarks/prior_size_study.py --config ct256 --minutes 20 --variants nf16:p64,nf16:p32,nf24:p64 \\
        --out runs/prior_size

Each variant (`nfN:pP`: model.nf = N, model.patch_size = P) is trained from scratch by `scoreinv train
--config CONFIG` for --minutes of wall time on --threads torch threads (default 1), one after another
(or --jobs at once, each on its own threads; never more jobs x threads than the machine has cores,
or they slow each other down), into OUT/VARIANT. Windows smaller than the config's come in a larger
batch, so that every step sees the same number of pixels (batch x P² fixed). Validation (the config's
`val` block: held-out denoising error at fixed σ and a short dds reconstruction PSNR, `validation.py`)
runs at the start and when the time is up, never in between (val.every is set past the end), so every
variant spends the same share of its time on it.

Every run is on the CPU (--device cpu: a per-CPU-hour study), with train.num_threads = --threads and
no snapshots. Resumable: a variant whose OUT/VARIANT/validation.jsonl already holds its closing record
is not run again; an unfinished one (killed mid-run) is started again from scratch, its work
directory removed, so that every variant gets exactly --minutes. OUT/study.json holds the settings:
a rerun into the same OUT with other settings is refused. Writes OUT/table.md (parameters, steps,
windows seen, seconds per step, and the last validation record) and prints it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from scoreinv import atomic
from scoreinv.config import load_config
from scoreinv.errors import ScoreinvError, check_int, run_script
from scoreinv.score import read_checkpoint, resolve_checkpoint


def parse_variant(text: str) -> tuple[int, int]:
    """'nf16:p64' -> (16, 64)."""
    try:
        nf, p = text.split(":")
        if not (nf.startswith("nf") and p.startswith("p")):
            raise ValueError
        return check_int("nf", int(nf[2:]), 4), check_int("patch", int(p[1:]), 16)
    except (ValueError, ScoreinvError):
        raise ScoreinvError(f"--variants {text!r}: expected nfN:pP, e.g. nf16:p64") from None


def command(args, nf: int, p: int, base_batch: int, base_patch: int) -> list[str]:
    batch = max(1, round(base_batch * (base_patch / p) ** 2))
    return [sys.executable, "-m", "scoreinv.cli", "train", "--config", args.config, "--workdir",
            str(Path(args.out) / f"nf{nf}_p{p}"), "--max-minutes", f"{args.minutes:g}", "--precision", "fp32",
            "--device", "cpu", "--no-progress", "--seed", str(args.seed),
            "--set", f"model.nf={nf}", "--set", f"model.patch_size={p}", "--set", f"train.batch_size={batch}",
            "--set", f"train.num_threads={args.threads}", "--set", "train.snapshot_every=0",
            "--set", "val.every=100000000", "--set", "train.compile=off", "--set", "train.channels_last=off",
            "--set", "train.data_workers=0"]


def finished(work: Path) -> dict | None:
    """The closing validation record of a variant's run, or None (the start record has step 0)."""
    f = work / "validation.jsonl"
    if not f.exists():
        return None
    recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return recs[-1] if recs and recs[-1]["step"] > 0 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="ct256", help="training preset (default ct256)")
    ap.add_argument("--variants", default="nf16:p64,nf16:p32,nf24:p64", help="comma-separated nfN:pP")
    ap.add_argument("--minutes", type=float, default=20.0, help="wall minutes per variant (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    variants = [parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise ScoreinvError("--variants: none given")
    if not args.minutes > 0:
        raise ScoreinvError(f"--minutes {args.minutes}: expected a positive number")
    check_int("--threads", args.threads)
    check_int("--jobs", args.jobs)
    variants = list(dict.fromkeys(variants))               # a variant named twice is one run
    cfg = load_config(args.config)
    base_batch = int(cfg.train.batch_size)
    base_patch = int(getattr(cfg.model, "patch_size", 0) or cfg.data.image_size)   # whole-image models: the image
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"config": args.config, "minutes": args.minutes, "threads": args.threads, "seed": args.seed}
    study = out / "study.json"
    if study.exists() and json.loads(study.read_text()) != settings:
        raise ScoreinvError(f"{out}: holds a study with other settings ({study}); choose another --out")
    atomic.write_text(study, json.dumps(settings, indent=2))
    todo = [(nf, p) for nf, p in variants if finished(out / f"nf{nf}_p{p}") is None]
    running: list[tuple[str, subprocess.Popen]] = []
    failed: list[str] = []

    def reap(name: str, proc: subprocess.Popen) -> None:
        if proc.wait() != 0:
            failed.append(name)

    for nf, p in todo:
        while len(running) >= args.jobs:
            reap(*running.pop(0))
        name, work = f"nf{nf}:p{p}", out / f"nf{nf}_p{p}"
        if work.exists():
            print(f"{name}: an unfinished run in {work}; starting it again from scratch", flush=True)
            shutil.rmtree(work)
        print(f"{name}: training {args.minutes:g} min", flush=True)
        with open(out / f"nf{nf}_p{p}.log", "a") as log:
            running.append((name, subprocess.Popen(command(args, nf, p, base_batch, base_patch), stdout=log,
                                                   stderr=subprocess.STDOUT)))
    for name, proc in running:
        reap(name, proc)
    if failed:
        raise ScoreinvError(f"training of {', '.join(failed)} failed; see the .log files in {out}")
    lines = [f"Prior size study: `{args.config}` variants trained from scratch for {args.minutes:g} min each on "
             f"{args.threads} thread(s), {args.jobs} at once; last validation record (denoising error, lower is "
             "better; dds PSNR on the [0, 1] scale).", "",
             "| variant | parameters | batch | steps | windows seen | wall s per step (with validation) | denoise MSE | dds PSNR (dB) |",
             "|---|---|---|---|---|---|---|---|"]
    for nf, p in variants:
        work = out / f"nf{nf}_p{p}"
        rec = finished(work)
        if rec is None:
            raise ScoreinvError(f"{work}: no closing validation record; rerun the study")
        meta = read_checkpoint(resolve_checkpoint(str(work)))      # the run's meta-checkpoint
        batch = meta["config"]["train"]["batch_size"]
        lines.append(f"| nf{nf}:p{p} | {meta['n_params'] / 1e6:.2f} M | {batch} | {meta['step']} | "
                     f"{meta['nimg']} | {meta['wall_s'] / max(meta['step'], 1):.2f} | "
                     f"{rec['denoise_mse_mean']:.5f} | {rec.get('recon_psnr', float('nan')):.2f} |")
    text = "\n".join(lines) + "\n"
    atomic.write_text(out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    run_script(main, "prior_size_study")
