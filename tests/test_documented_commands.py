"""Every command line the README and the `--help` texts show runs, as a user types it.

`documented()` collects the lines: the README's ```sh blocks and every subcommand's help text
(lines starting with `scoreinv ` or `torchrun `, `\\` continuations joined, `# comments`
dropped). `RUNS` holds one entry per line, keyed by the exact text: a documented line without
an entry, or an entry whose line is no longer documented, fails `test_every_documented_line_runs`.
Each entry says how the line is shrunk to test size (string replacements that only lower step
counts, image counts and sizes, or point an example path such as /data/brats at a stand-in of
the same format) and which lines of output it must print. The lines run in order in one
workspace of stand-in inputs, as a user would run them one after another.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import realdata_factory

from scoreinv.cli import build_parser, main
from scoreinv.score import read_checkpoint, shipped_models

ROOT = Path(__file__).resolve().parents[1]


def _join(lines: list[str]) -> list[str]:
    out, cur = [], ""
    for ln in lines:
        ln = ln.split(" #")[0].rstrip() if " #" in ln else ln.rstrip()
        cur = f"{cur} {ln.strip()}" if cur else ln.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        if cur:
            out.append(re.sub(r"\s+", " ", cur))
        cur = ""
    return out


def _command_lines(text: str) -> list[str]:
    lines, take = [], False
    for ln in text.splitlines():
        s = ln.strip()
        if s.startswith(("scoreinv ", "torchrun ")):
            lines.append(s)
            take = s.endswith("\\")
        elif take:
            lines.append(s)
            take = s.endswith("\\")
    return _join(lines)


def documented() -> dict[str, str]:
    """{command line: where it is shown}."""
    found: dict[str, str] = {}
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        for line in _command_lines(block):
            found.setdefault(line, "README.md")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        texts = [p.description or ""]
        for a in p._actions:  # nested subcommands (data inspect)
            if getattr(a, "choices", None) and isinstance(a.choices, dict):
                texts += [q.description or "" for q in a.choices.values()]
        for text in texts:
            for line in _command_lines(text):
                found.setdefault(line, f"scoreinv {name} --help")
    return found


@dataclass
class Run:
    replace: list[tuple[str, str]] = field(default_factory=list)  # applied to the line, in order
    expect: list[str] = field(default_factory=list)              # regexes, each must match the output
    files: list[str] = field(default_factory=list)               # written files that must exist after
    exit: int = 0                                                # expected exit status
    slow: bool = False   # runs with the slow tests only: nothing later reads its output, and its parts run too


TRAIN = " --set train.batch_size=2 --set val.every=0 --no-progress"  # appended: a 2-image batch, no validation
DATA = [("/data/", "data/")]     # example folders -> stand-ins of the same format in the workspace
FETCH = [("ct-real", "ct-real --from downloads")]  # no network: the registries' archives -> stand-ins (downloads/)
FEW = " --val-images 1 --steps 3"
BENCH = "--seconds 0.2 --groups layouts --no-save --batch-size 2"  # bench train: tiny batches, layouts only  # eval: one validation image for the baseline weights, 3 noise levels

SHIPPED = {name: int(read_checkpoint(path)["step"]) for name, path in shipped_models().items()}  # their steps

# In the order a user would run them (outputs of earlier lines are inputs of later ones).
RUNS: dict[str, Run] = {
    # ---- README ----
    "scoreinv train --config ct64 --workdir runs/ct64": Run(
        [("runs/ct64", "runs/ct64 --max-steps 1" + TRAIN)], [r"step 1\b"], ["runs/ct64/checkpoints-meta/checkpoint.pt"]),
    "scoreinv train --config ct64 --workdir runs/ct64_more --init ct64 --max-steps 20000": Run(
        [("--max-steps 20000", f"--max-steps {SHIPPED['ct64'] + 1}" + TRAIN)],
        [rf"starting from ct64 at its step {SHIPPED['ct64']}\b", rf"step {SHIPPED['ct64'] + 1}\b"],
        ["runs/ct64_more/checkpoints-meta/checkpoint.pt"]),
    "scoreinv train --config mri64 --workdir runs/ft --init mri64 --data /data/brats --max-minutes 60": Run(
        DATA + [("--max-minutes 60", f"--max-minutes 60 --max-steps {SHIPPED['mri64'] + 1} --set train.batch_size=2 "
                                     "--no-progress")],
        [rf"starting from mri64 at its step {SHIPPED['mri64']}\b", r"val"], ["runs/ft/validation.jsonl"]),
    "scoreinv train --config mri64 --workdir runs/mine --data /data/brats --set model.nf=32": Run(
        DATA + [("model.nf=32", "model.nf=32 --max-steps 1" + TRAIN)], [r"step 1\b"]),
    "torchrun --nproc-per-node 2 -m scoreinv.cli train --config ct64 --workdir runs/ddp": Run(
        [("runs/ddp", "runs/ddp --max-steps 1" + TRAIN)], [], ["runs/ddp/checkpoints-meta/checkpoint.pt"]),
    "scoreinv sample --checkpoint runs/ct64 -n 16 --out grid.png --steps 500": Run(
        [("-n 16", "-n 2"), ("--steps 500", "--steps 2")], [r"wrote grid\.png"], ["grid.png", "grid.npy"]),
    "scoreinv data inspect /data/lidc --size 64": Run(DATA, [r"patient1", r"3 slice"]),
    "scoreinv data fetch ct-real": Run(FETCH, [r"lung1_image\.nrrd +from .*verified \(SHA-256\)",
                                              r"^ct-real: 3 file\(s\) written"]),
    # fetched before the demo, which runs the real-MRI case on the stand-in brain2
    "scoreinv data fetch mri-real": Run([("mri-real", "mri-real --from downloads")],
                                        [r"^mri-real: 2 file\(s\) written"]),
    "scoreinv data inspect ct-real --size 256": Run([], [r"^  Cranium  0-49, 70-107 +54-65 +- +50-53, 66-69$",
                                                         r"^  slices   124 +20 +61 +12$"]),
    "scoreinv simulate --task ct --views 23 --noise 1e5 --input slice.dcm --size 64 --out ct.npz": Run(
        [], [r"wrote ct\.npz: 1 slice\(s\) 64x64"], ["ct.npz"]),
    "scoreinv simulate --task mri --acceleration 8 --mask random --input brain.nii.gz --size 64 --out mri.npz": Run(
        [], [r"wrote mri\.npz: 3 slice\(s\) 64x64"], ["mri.npz"]),
    "scoreinv simulate --task mar --input slice.dcm --size 256 --out mar.npz": Run(
        [("--size 256", "--size 32")], [r"wrote mar\.npz"], ["mar.npz"]),
    "scoreinv simulate --show ct.npz --out ct.png": Run([], [r"wrote ct\.png"], ["ct.png"]),
    "scoreinv reconstruct --checkpoint ct64 --measurements ct.npz --solver dds --samples 4 --out recon.nii.gz": Run(
        [("--samples 4", "--samples 2 --steps 3 --no-progress")], [r"PSNR", r"wrote recon\.nii\.gz"],
        ["recon.nii.gz", "recon_std.nii.gz"]),
    "scoreinv reconstruct --checkpoint mri64 --measurements mri.npz --solver dds --out mri.png": Run(
        [("--solver dds", "--solver dds --steps 3 --no-progress")], [r"wrote mri\.png"], ["mri.png"]),
    "scoreinv eval --checkpoint mri64 --task mri --acceleration 8 --mask random --data brain --split test "
    "--solvers zero_filled,cs_tv,projection,dds --num-images 16 --out runs/eval_mri8": Run(
        [("--num-images 16", "--num-images 1" + FEW)], [r"cs_tv", r"dds"], ["runs/eval_mri8/summary.json"]),
    # the real-CT patch prior on the stand-in scans (fetched above); 2 spread slices at 128x128, 3 levels
    "scoreinv eval --checkpoint ct256 --task ct --views 10 --data ct-real --split test --pick spread "
    "--solvers fbp,tv,diffpir --num-images 16 --out runs/eval_lung2": Run(
        [("--num-images 16", "--num-images 2 --image-size 128" + FEW)], [r"diffpir +sample", r"PSNR, HU window"],
        ["runs/eval_lung2/summary.json"]),
    "scoreinv tune --checkpoint ct64 --task ct --views 23 --data phantoms --solver projection --trials 100 "
    "--steps 50 --bound snr=0,1.2 --storage sqlite:///study.db --out ct23.yaml": Run(
        [("--trials 100", "--trials 2 --num-images 1 --startup-trials 1"), ("--steps 50", "--steps 2")],
        [r"best"], ["ct23.yaml", "study.db"]),
    "scoreinv bench": Run([("bench", "bench " + BENCH + " --size 32 --steps 2")],
                          [r"^# bench train", r"^fp32_peak_fraction: ", r"^chosen: ", r"^# bench physics",
                           r"^fp_rel_err_vs_skimage: ", r"^# bench sampler", r"^ct_overhead_fraction: "], slow=True),
    "scoreinv bench train --seconds 3": Run([("--seconds 3", BENCH)], [r"^# bench train", r"^fp32_images_per_s: ",
                                                                       r"^chosen: "]),
    # deepinv lives in its own environment (make bench-peers); here the line must say so and exit 2
    "scoreinv bench peers --images 2 --nfe 50 --settings mri": Run([], [r"make bench-peers"], exit=2),
    "scoreinv bench physics --size 128": Run([("--size 128", "--size 32")], [r"^# bench physics", r"^fbp_psnr: "]),
    "scoreinv bench sampler --checkpoint ct64 --steps 10": Run([("--steps 10", "--steps 2 --batch-size 1")],
                                                                [r"^# bench sampler", r"^mri_overhead_fraction: "]),
    "scoreinv bench sampler --checkpoint ct256 --solver diffpir --steps 50 --batch-size 1 --tasks ct":
        Run([("--steps 50", "--steps 2")], [r"^# bench sampler", r"^ct_seconds_per_image: ", r"^solver: diffpir"]),
    "scoreinv demo": Run([("demo", "demo --num-images 1 --steps 3")], [r"dds"], ["demo_out/demo.png"]),
    # ---- --help examples (lines the README also shows ran above) ----
    "scoreinv train --config ct64 --workdir runs/ct64 --precision fp32 --set val.every=1000": Run(
        [("--set val.every=1000", "--set val.every=1000 --max-steps 2 --set train.batch_size=2 --no-progress")],
        [r"step 2\b"]),
    "scoreinv sample --checkpoint ct64 -n 16 --out samples.png --steps 500": Run(
        [("-n 16", "-n 2"), ("--steps 500", "--steps 2")], [r"wrote samples\.png"], ["samples.png"]),
    "scoreinv sample --checkpoint runs/ct64 -n 4 --out grid.png --steps 50 --seed 1 --overwrite": Run(
        [("-n 4", "-n 2"), ("--steps 50", "--steps 2")], [r"wrote grid\.png"]),
    "scoreinv data inspect /data/lidc --size 128": Run(DATA, [r"patient1"]),
    "scoreinv data inspect /data/brats --axis 0 --normalize minmax": Run(DATA, [r"sub0", r"sub2"]),
    "scoreinv data inspect scan.nii.gz --values": Run([], [r"scan\.nii\.gz"]),
    "scoreinv data inspect phantoms --size 64 --preview phantoms.png": Run([], [r"phantoms"], ["phantoms.png"]),
    "scoreinv data fetch all --from downloads": Run([], [r"^all: all 5 file\(s\) already in .*nothing fetched"]),
    "scoreinv simulate --task mri --acceleration 8 --mask equispaced --noise 0.01 --input brain.nii.gz --size 64 "
    "--out brain8x.npz": Run([], [r"wrote brain8x\.npz"], ["brain8x.npz"]),
    "scoreinv simulate --task mar --input slice.png --size 256 --out slice_mar.npz": Run(
        [("--size 256", "--size 32")], [r"wrote slice_mar\.npz"], ["slice_mar.npz"]),
    "scoreinv tune --checkpoint ct64 --task ct --views 23 --data phantoms --solver projection --trials 100 --steps 50 "
    "--bound snr=0,1.2 --storage sqlite:///tune/ct23.db --out tune/ct23-projection.yaml": Run(
        [("--trials 100", "--trials 2 --num-images 1 --startup-trials 1"), ("--steps 50", "--steps 2")],
        [r"best"], ["tune/ct23-projection.yaml"]),
    "scoreinv reconstruct --checkpoint ct64 --measurements ct.npz --solver projection --out ct_recon.nii.gz": Run(
        [("--solver projection", "--solver projection --steps 3 --no-progress")], [r"wrote ct_recon\.nii\.gz"],
        ["ct_recon.nii.gz"]),
    "scoreinv reconstruct --checkpoint mri64 --measurements brain8x.npz --solver dds --samples 8 --out brain8x.png": Run(
        [("--samples 8", "--samples 2 --steps 3 --no-progress")], [r"wrote brain8x\.png"], ["brain8x_std.png"]),
    "scoreinv reconstruct --checkpoint ct64 --measurements ct.npz --preset tune/ct23-projection.yaml "
    "--set solver.snr=0.2 --out series.dcm": Run(
        [("--set solver.snr=0.2", "--set solver.snr=0.2 --no-progress")], [r"tune/ct23-projection\.yaml", r"snr"],
        ["series.dcm"]),
    "scoreinv reconstruct --checkpoint ct64 --measurements cases/ --solver dds --out recon/ --format nii.gz": Run(
        [("--solver dds", "--solver dds --steps 3 --no-progress")],
        [r"case0\.npz -> case0\.nii\.gz", r"batch: 2 reconstructed, 0 skipped", r"wrote recon/manifest\.json"],
        ["recon/case0.nii.gz", "recon/case1.nii.gz", "recon/manifest.json"]),
    "torchrun --standalone --nproc-per-node 2 -m scoreinv.cli reconstruct --checkpoint ct64 --measurements cases/ "
    "--solver dds --out recon/": Run(
        [("--solver dds", "--solver dds --steps 3 --no-progress")],
        [r"^\[rank 0/2\] \[1/1\] case0\.npz: skipped", r"^\[rank 1/2\] \[1/1\] case1\.npz: skipped",
         r"^\[rank 0/2\] batch: 0 reconstructed, 1 skipped .*wrote recon/manifest\.json"],
        ["recon/manifest.json"]),
    "scoreinv eval --checkpoint ct64 --task ct --views 23 --data phantoms --split test "
    "--solvers fbp,tv,projection,dds --num-images 16 --out results/ct23": Run(
        [("--num-images 16", "--num-images 1" + FEW)], [r"fbp", r"tv", r"projection", r"dds"],
        ["results/ct23/summary.json"]),
    "scoreinv eval --checkpoint mri64 --task mri --acceleration 8 --data brain --solvers zero_filled,cs_tv,projection "
    "--preset reference --num-images 16 --out results/mri8": Run(
        [("--num-images 16", "--num-images 1" + FEW)], [r"reference", r"cs_tv"], ["results/mri8/summary.json"]),
    "scoreinv eval --checkpoint ct64 --task mar --data phantoms --solvers li,nmar,projection "
    "--set projection.steps=20 --out results/mar": Run(
        [("projection.steps=20", "projection.steps=2 --num-images 1 --val-images 1")], [r"li", r"nmar"],
        ["results/mar/summary.json"]),
    "scoreinv eval --checkpoint mri64 --task mri --acceleration 8 --coils 4 --data brain "
    "--solvers zero_filled,cs_tv,diffpir --num-images 4 --out results/mri8_sense": Run(
        [("--num-images 4", "--num-images 1 --steps 2 --samples 2 --val-images 1")],
        [r"R=8 mask=equispaced coils=4", r"^diffpir +mean-of-2", r"^diffpir:first +sample .* 2$"],
        ["results/mri8_sense/summary.json"]),
    "torchrun --standalone --nproc-per-node 2 -m scoreinv.cli eval --checkpoint ct64 --task ct --views 23 "
    "--data phantoms --solvers fbp,dds --num-images 16 --out results/ct23_sharded": Run(
        [("--num-images 16", "--num-images 2 --batch-size 1" + FEW)],
        [r"^\[rank 1/2\] \[dds\] batch 2/2", r"wrote results/ct23_sharded/summary\.json"],
        ["results/ct23_sharded/summary.json"]),
    # volumes (README "Volumes"; data/bench --help)
    "scoreinv data inspect phantom3d --size 64 --split test": Run([("--size 64", "--size 16")],
                                                                 [r"^dataset   phantom3d", r"^volumes   2"]),
    "scoreinv data phantom3d --out vol.nii.gz --slices 16 --size 64 --seed 0": Run(
        [("--slices 16", "--slices 3")], [r"wrote vol\.nii\.gz: phantom3d seed 0, 3 slice"], ["vol.nii.gz"]),
    "scoreinv simulate --task ct --views 23 --intensity hu --input vol.nii.gz --out vol.npz": Run(
        [], [r"wrote vol\.npz: 3 slice\(s\) 64x64"], ["vol.npz"]),
    "scoreinv reconstruct --checkpoint ct64 --measurements vol.npz --solver diffpir --coupling ztv --out vol_ztv.nii.gz":
        Run([("--solver diffpir", "--solver diffpir --steps 2 --no-progress")],
            [r"volume \(3 slices", r"wrote vol_ztv\.nii\.gz"], ["vol_ztv.nii.gz"]),
    "scoreinv bench volume --checkpoint ct64 --slices 8 --steps 10 --data phantom3d": Run(
        [("--slices 8", "--slices 2"), ("--steps 10", "--steps 2")],
        [r"^# bench volume", r"^data: phantom3d", r"^ztv_peak_rss_mib: "]),
}


# ---- the workspace -----------------------------------------------------------------------------
def make_inputs(root: Path) -> None:
    """Stand-ins of the files the documented lines name: a CT DICOM slice, a NIfTI brain volume, a PNG
    slice, a folder of DICOM series (/data/lidc) and a folder of NIfTI volumes (/data/brats)."""
    import nibabel as nib
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    shutil.copy(ct, root / "slice.dcm")
    yy, xx = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 40), indexing="ij")
    head = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * (1.0 + 0.5 * ((xx - 0.3) ** 2 + yy ** 2 < 0.05))
    vol = np.stack([head * (1 + 0.1 * k) for k in range(3)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), str(root / "brain.nii.gz"))
    Image.fromarray((head / head.max() * 255).astype(np.uint8)).save(root / "slice.png")
    lidc = root / "data" / "lidc" / "patient1"
    lidc.mkdir(parents=True)
    for k in range(3):
        ds = pydicom.dcmread(ct)
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(lidc / f"IM{k}.dcm")
    brats = root / "data" / "brats"
    for p in range(3):
        (brats / f"sub{p}").mkdir(parents=True)
        nib.save(nib.Nifti1Image(vol * (1 + p), np.eye(4)), str(brats / f"sub{p}" / "t1.nii.gz"))
    shutil.copy(root / "brain.nii.gz", root / "scan.nii.gz")
    cases = root / "cases"         # measurement files for the batch lines of `reconstruct --help`
    cases.mkdir()
    for k, src in enumerate(("slice.dcm", "slice.png")):
        assert main(["simulate", "--task", "ct", "--views", "23", "--input", str(root / src), "--size", "64",
                     "--out", str(cases / f"case{k}.npz")]) == 0


def _run_line(line: str, run: Run, root: Path) -> str:
    for old, new in run.replace:
        assert old in line, f"replacement {old!r} not in {line!r}"
        line = line.replace(old, new)
    argv = shlex.split(line)
    if argv[0] == "torchrun":
        exe = Path(sys.executable).parent / "torchrun"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run([str(exe), *argv[1:]], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr
    assert argv[0] == "scoreinv"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv[1:])
    assert rc == run.exit, f"{line}: exit {rc}, expected {run.exit}\n{err.getvalue()[-3000:]}"
    return out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("documented")
    make_inputs(root)
    return root


@pytest.fixture(scope="module")
def registry_files(workspace):
    """downloads/: stand-ins of the pyradiomics sdist and the invesalius-examples .deb (`data fetch`)."""
    return realdata_factory.make_downloads(workspace / "downloads")


def test_every_documented_line_has_a_run():
    lines = documented()
    missing = [f"{where}: {ln}" for ln, where in lines.items() if ln not in RUNS]
    stale = [ln for ln in RUNS if ln not in lines]
    assert not missing, "documented lines without a run in RUNS:\n" + "\n".join(missing)
    assert not stale, "RUNS entries no longer documented:\n" + "\n".join(stale)


@pytest.mark.parametrize("line", [pytest.param(ln, id=ln[:70], marks=[pytest.mark.slow] if r.slow else [])
                                  for ln, r in RUNS.items()])
def test_documented_line_runs(line, workspace, registry_files, monkeypatch):
    monkeypatch.chdir(workspace)
    realdata_factory.use_standins(monkeypatch, registry_files, workspace / "scoreinv-data")  # never the user's cache
    run = RUNS[line]
    output = _run_line(line, run, workspace)
    for pattern in run.expect:
        assert re.search(pattern, output, flags=re.M), f"{line}: no match for {pattern!r} in\n{output[-3000:]}"
    for f in run.files:
        assert (workspace / f).exists(), f"{line}: {f} not written"
