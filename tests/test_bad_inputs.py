"""The bad-input matrix: every command, fed wrong input, answers with one clear line.

Each case runs `scoreinv.cli.main` in a workspace of small stand-in files and is classified:
- clear: exit status 2 and a one-line `scoreinv CMD: error: ...` (or argparse's usage error)
  whose text matches what the case expects (the flag or file it names);
- traceback: any exception escaping `main`;
- accepted: exit status 0 (the command took the wrong input without a word);
- overwrite: a file that existed before the case changed (a user's file replaced).
The last three must be empty. `python tests/test_bad_inputs.py` prints the table per command.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scoreinv.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from tinymodel import train_tiny  # noqa: E402


@dataclass(frozen=True)
class Case:
    argv: str
    expect: str  # regex the error line must match


CT = "simulate --task ct --size 16 --upsample 1 --input img.npy"
MRI = "simulate --task mri --input img.npy"
REC = "reconstruct --checkpoint tiny --measurements ct.npz --steps 2 --no-progress"
EVAL = "eval --checkpoint tiny --task ct --views 4 --data phantoms --num-images 1 --val-images 1"
TUNE = ("tune --checkpoint tiny --task ct --views 4 --data phantoms --solver dds --trials 1 --num-images 1 "
        "--storage sqlite:///t.db")
TRAIN = "train --config ct64 --workdir runs/new --max-steps 1"

CASES = [
    # --- train ---------------------------------------------------------------------------------
    Case("train --config nosuch --workdir runs/a", r"nosuch"),
    Case("train --config missing.yaml --workdir runs/a", r"missing\.yaml"),
    Case("train --config junk.yaml --workdir runs/a", r"junk\.yaml"),
    Case(f"{TRAIN} --set model.nosuch=1", r"model\.nosuch"),
    Case(f"{TRAIN} --set model.nf=abc", r"model\.nf"),
    Case(f"{TRAIN} --set model.nf", r"KEY=VALUE|model\.nf"),
    Case(f"{TRAIN} --set model.nf=0", r"model\.nf"),
    Case(f"{TRAIN} --set train.batch_size=0", r"batch_size"),
    Case(f"{TRAIN} --set data.image_size=3", r"image_size"),
    Case(f"{TRAIN} --set train.lr=-1", r"train\.lr"),
    Case("train --config ct64 --workdir runs/new --max-steps 0", r"--max-steps"),
    Case("train --config ct64 --workdir runs/new --max-steps -5", r"--max-steps"),
    Case(f"{TRAIN} --data nosuchfolder", r"nosuchfolder"),
    Case(f"{TRAIN} --data empty", r"empty"),
    Case(f"{TRAIN} --device cuda", r"cuda"),
    Case("train --config ct64 --workdir afile.txt --max-steps 1", r"afile\.txt"),
    Case("train --config mri64 --workdir tiny --max-steps 1", r"tiny"),
    Case(f"{TRAIN} --init nosuchmodel", r"nosuchmodel"),
    Case(f"{TRAIN} --init junk.pt", r"junk\.pt"),
    Case("train --config ct64 --workdir runs/new --max-steps 1 --init tiny", r"tiny|model\.|architecture"),
    # --- sample --------------------------------------------------------------------------------
    Case("sample --checkpoint tiny -n 0 --out s.png", r"-n"),
    Case("sample --checkpoint tiny -n -2 --out s.png", r"-n"),
    Case("sample --checkpoint tiny --steps 0 --out s.png", r"--steps"),
    Case("sample --checkpoint tiny --steps -1 --out s.png", r"--steps"),
    Case("sample --checkpoint tiny --snr -1 --out s.png", r"--snr"),
    Case("sample --checkpoint nosuch --out s.png", r"nosuch"),
    Case("sample --checkpoint junk.pt --out s.png", r"junk\.pt"),
    Case("sample --checkpoint tiny --out existing.png", r"existing\.png.*--overwrite"),
    Case("sample --checkpoint tiny --out existing_npy.png", r"existing_npy\.npy.*--overwrite"),
    Case("sample --checkpoint tiny --out s.jpg", r"--out.*\.png"),
    Case("sample --checkpoint tiny --out afile.txt/s.png", r"afile\.txt"),
    Case("sample --checkpoint tiny --out s.png --device cuda", r"cuda"),
    # --- data inspect --------------------------------------------------------------------------
    Case("data inspect nosuchfolder", r"nosuchfolder"),
    Case("data inspect empty", r"empty"),
    Case("data inspect junkdir", r"junkdir"),
    Case("data inspect img.npy --size 0", r"--size"),
    Case("data inspect img.npy --size 3", r"--size"),
    Case("data inspect img.npy --size -16", r"--size"),
    Case("data inspect junk.npy", r"junk\.npy"),
    Case("data inspect zero_slope.dcm", r"zero_slope\.dcm|[Ss]lope"),
    Case("data inspect phantoms --preview existing.png", r"existing\.png.*--overwrite"),
    Case("data inspect img.npy --fractions 0.5 0.5 0.5", r"--fractions"),
    Case("data inspect img.npy --hu-min 100 --hu-max 0 --normalize window", r"--hu-min|--hu-max"),
    Case("data inspect img.npy --max-volumes 0", r"--max-volumes"),
    # --- simulate ------------------------------------------------------------------------------
    Case("simulate --input img.npy --out o.npz", r"--task"),
    Case("simulate --task ct --out o.npz", r"--input"),
    Case("simulate --task ct --input nosuch.npy --out o.npz", r"nosuch\.npy"),
    Case("simulate --task ct --input img.xyz --out o.npz", r"img\.xyz"),
    Case("simulate --task ct --input junk.png --out o.npz", r"junk\.png"),
    Case("simulate --task ct --input junk.npy --out o.npz", r"junk\.npy"),
    Case("simulate --task ct --input const.npy --out o.npz", r"constant"),
    Case("simulate --task ct --input nan.npy --out o.npz", r"NaN"),
    Case("simulate --task ct --input vol4d.nii.gz --out o.npz", r"vol4d\.nii\.gz"),
    Case("simulate --task ct --input zero_slope.dcm --out o.npz", r"zero_slope\.dcm|[Ss]lope"),
    Case("simulate --task ct --input tiny1d.npy --out o.npz", r"tiny1d\.npy"),
    Case(f"{CT} --views 0 --out o.npz", r"--views"),
    Case(f"{CT} --views -3 --out o.npz", r"--views"),
    Case(f"{CT} --views 100 --out o.npz", r"--views"),
    Case(f"{CT} --dense-views 0 --out o.npz", r"--dense-views"),
    Case(f"{CT} --detectors 0 --out o.npz", r"--detectors"),
    Case(f"{CT} --pixel-size 0 --out o.npz", r"--pixel-size"),
    Case(f"{CT} --det-spacing -1 --out o.npz", r"--det-spacing"),
    Case(f"{CT} --upsample 0 --out o.npz", r"--upsample"),
    Case(f"{CT} --mu-max 0 --out o.npz", r"--mu-max"),
    Case(f"{CT} --noise -1 --out o.npz", r"--noise"),
    Case(f"{CT} --fan --source-distance -5 --out o.npz", r"--source-distance"),
    Case("simulate --task ct --size 0 --input img.npy --out o.npz", r"--size"),
    Case("simulate --task ct --size 4 --input img.npy --out o.npz", r"--size"),
    Case("simulate --task ct --intensity none --input big.npy --out o.npz", r"--intensity none"),
    Case(f"{MRI} --acceleration 0 --out o.npz", r"--acceleration"),
    Case(f"{MRI} --acceleration 0.5 --out o.npz", r"--acceleration"),
    Case(f"{MRI} --acceleration 1000 --out o.npz", r"--acceleration"),
    Case(f"{MRI} --mask random --center-fraction 1.5 --out o.npz", r"--center-fraction"),
    Case(f"{MRI} --mask random --center-fraction -0.1 --out o.npz", r"--center-fraction"),
    Case(f"{MRI} --coils 0 --out o.npz", r"--coils"),
    Case(f"{MRI} --noise -0.1 --out o.npz", r"--noise"),
    Case("simulate --task mar --size 32 --input img.npy --fan --out o.npz", r"--fan"),
    Case("simulate --task mar --size 32 --input img.npy --implants -1 --out o.npz", r"--implants"),
    Case("simulate --task mar --size 32 --input img.npy --noise -5 --out o.npz", r"--noise"),
    Case(f"{CT} --out existing.npz", r"existing\.npz.*--overwrite"),
    Case(f"{CT} --out img.npy", r"img\.npy"),
    Case("simulate --task ct --size 16 --input imgz.npz --out imgz.npz --overwrite", r"imgz\.npz.*input"),
    Case(f"{CT} --out o.png", r"--out.*\.npz"),
    Case(f"{CT} --out afile.txt/o.npz", r"afile\.txt"),
    Case("simulate --show nosuch.npz --out f.png", r"nosuch\.npz"),
    Case("simulate --show junk.npy --out f.png", r"junk\.npy"),
    Case("simulate --show ct.npz --out ct.npz", r"ct\.npz"),
    Case("simulate --show ct.npz --out other.npz", r"--out.*\.png"),
    Case("simulate --show ct.npz --out existing.png", r"existing\.png.*--overwrite"),
    Case("simulate --show ct.npz --slice 99 --out f.png", r"--slice"),
    Case("simulate --show ct.npz --slice -1 --out f.png", r"--slice"),
    # --- reconstruct ---------------------------------------------------------------------------
    Case("reconstruct --checkpoint tiny --measurements nosuch.npz --solver dds --out r.npy", r"nosuch\.npz"),
    Case("reconstruct --checkpoint tiny --measurements junk.npy --solver dds --out r.npy", r"junk\.npy"),
    Case("reconstruct --checkpoint tiny --measurements neg_noise.npz --solver dds --out r.npy", r"noise level"),
    Case("reconstruct --checkpoint tiny --measurements mismatch.npz --solver dds --out r.npy", r"does not match"),
    Case("reconstruct --checkpoint tiny --measurements real_kspace.npz --solver dds --out r.npy", r"complex"),
    Case("reconstruct --checkpoint tiny --measurements nan.npz --solver dds --out r.npy", r"NaN"),
    Case("reconstruct --checkpoint nosuch --measurements ct.npz --solver dds --out r.npy", r"nosuch"),
    Case("reconstruct --checkpoint tiny --measurements ct32.npz --solver dds --out r.npy", r"32"),
    Case(f"{REC} --solver nosuch --out r.npy", r"nosuch"),
    Case(f"{REC} --solver tv --out r.npy", r"tv"),
    Case("reconstruct --checkpoint tiny --measurements ct.npz --solver dds --steps 0 --out r.npy", r"--steps"),
    Case(f"{REC} --solver dds --samples 0 --out r.npy", r"--samples"),
    Case(f"{REC} --solver dds --batch-size 0 --out r.npy", r"--batch-size"),
    Case(f"{REC} --solver dds --slices 99 --out r.npy", r"--slices"),
    Case(f"{REC} --solver dds --slices abc --out r.npy", r"--slices"),
    Case(f"{REC} --solver dds --set snr --out r.npy", r"--set"),
    Case(f"{REC} --solver projection --set solver.snr=-1 --out r.npy", r"snr"),
    Case(f"{REC} --solver projection --set solver.lam=2 --out r.npy", r"lam"),
    Case(f"{REC} --solver dds --set solver.nosuch=1 --out r.npy", r"nosuch"),
    Case(f"{REC} --solver dds --set solver.steps=abc --out r.npy", r"steps"),
    Case(f"{REC} --preset nosuch.yaml --out r.npy", r"nosuch\.yaml"),
    Case(f"{REC} --preset mri_preset.yaml --out r.npy", r"mri_preset\.yaml|mri"),
    Case(f"{REC} --preset junk.yaml --out r.npy", r"junk\.yaml"),
    Case(f"{REC} --solver dds --out existing.npy", r"existing\.npy.*--overwrite"),
    Case(f"{REC} --solver dds --samples 2 --out existing_std.npy", r"existing_std_std\.npy.*--overwrite"),
    Case(f"{REC} --solver dds --out ct.npz", r"ct\.npz"),
    Case(f"{REC} --solver dds --out r.xyz", r"r\.xyz"),
    Case(f"{REC} --solver dds --out afile.txt/r.npy", r"afile\.txt"),
    Case(f"{REC} --solver dds --report existing.json --out r.npy", r"existing\.json.*--overwrite"),
    Case(f"{REC} --solver dds --out r.npy --device cuda", r"cuda"),
    Case("reconstruct --checkpoint tiny --measurements mri.npz --solver dds --steps 2 --ct-operator fourier "
         "--out r.npy", r"--ct-operator"),
    # --- eval ----------------------------------------------------------------------------------
    Case("eval --checkpoint tiny --task spect --data phantoms --solvers fbp --out ev", r"spect"),
    Case("eval --checkpoint tiny --task ct --data phantoms --solvers '' --out ev", r"--solvers"),
    Case("eval --checkpoint tiny --task ct --data phantoms --solvers fbp,nosuch --out ev", r"nosuch"),
    Case("eval --task ct --data phantoms --image-size 16 --solvers dds --out ev", r"--checkpoint"),
    Case(f"{EVAL} --solvers fbp --num-images 0 --out ev", r"--num-images"),
    Case("eval --checkpoint tiny --task ct --data phantoms --solvers tv --val-images 0 --out ev", r"--val-images"),
    Case("eval --checkpoint tiny --task ct --views 0 --data phantoms --solvers fbp --out ev", r"--views"),
    Case("eval --checkpoint tiny --task mri --acceleration 0 --data brain --solvers zero_filled --out ev",
         r"--acceleration"),
    Case("eval --checkpoint tiny --task mri --mask nosuch --data brain --solvers zero_filled --out ev", r"--mask"),
    Case(f"{EVAL} --noise -1 --solvers fbp --out ev", r"--noise"),
    Case(f"{EVAL} --solvers fbp --out foreign", r"foreign"),
    Case(f"{EVAL} --solvers fbp --out afile.txt", r"afile\.txt"),
    Case("eval --checkpoint tiny --task ct --data nosuchfolder --solvers fbp --out ev", r"nosuchfolder"),
    Case(f"{EVAL} --solvers dds --steps 0 --out ev", r"--steps"),
    Case(f"{EVAL} --solvers dds --samples 0 --out ev", r"--samples"),
    Case(f"{EVAL} --solvers fbp --batch-size 0 --out ev", r"--batch-size"),
    Case(f"{EVAL} --solvers dds --set solver.snr --out ev", r"--set"),
    Case(f"{EVAL} --solvers dds --preset nosuch.yaml --out ev", r"nosuch\.yaml"),
    Case("eval --task ct --data phantoms --image-size 3 --solvers fbp --out ev", r"--image-size"),
    Case("eval --checkpoint nosuch --task ct --data phantoms --solvers fbp --out ev", r"nosuch"),
    Case(f"{EVAL} --solvers fbp --split all --out ev", r"--split"),
    # --- tune ----------------------------------------------------------------------------------
    Case("tune --checkpoint tiny --task ct --views 4 --data phantoms --solver dds --trials 0 "
         "--storage sqlite:///t.db", r"--trials"),
    Case("tune --checkpoint tiny --task ct --views 4 --data phantoms --solver nosuch --trials 1 "
         "--storage sqlite:///t.db", r"nosuch"),
    Case("tune --checkpoint tiny --task ct --views 4 --data phantoms --solver fbp --trials 1 "
         "--storage sqlite:///t.db", r"fbp"),
    Case(f"{TUNE} --split test", r"test"),
    Case(f"{TUNE} --metric nosuch", r"nosuch"),
    Case(f"{TUNE} --bound lam", r"--bound"),
    Case(f"{TUNE} --bound lam=1,0", r"--bound"),
    Case(f"{TUNE} --bound nosuch=0,1", r"nosuch"),
    Case(f"{TUNE} --bound lam=0,1 --bound lam=0,0.5", r"--bound"),
    Case("tune --checkpoint tiny --task ct --views 4 --data phantoms --solver dds --trials 1 --storage nosuch://x",
         r"--storage|nosuch"),
    Case(f"{TUNE} --num-images 0", r"--num-images"),
    Case(f"{TUNE} --startup-trials -1", r"--startup-trials"),
    Case(f"{TUNE} --steps 0", r"--steps"),
    Case(f"{TUNE} --worker -1", r"--worker"),
    Case(f"{TUNE} --out existing.yaml", r"existing\.yaml"),
    Case("tune --checkpoint tiny --task ct --views 4 --data nosuchfolder --solver dds --trials 1 "
         "--storage sqlite:///t.db", r"nosuchfolder"),
    # --- demo and bench ------------------------------------------------------------------------
    Case("demo --out afile.txt", r"afile\.txt"),
    Case("demo --out foreign", r"foreign"),
    Case("demo --num-images 0 --out d", r"--num-images"),
    Case("demo --steps 0 --out d", r"--steps"),
    Case("demo --solver nosuch --out d", r"nosuch"),
    Case("demo --ct-checkpoint nosuch --out d", r"nosuch"),
    Case("bench nosuch", r"nosuch"),
    Case("bench train --preset nosuch", r"nosuch"),
    Case("bench train --batch-size 0", r"--batch-size"),
    Case("bench sampler --checkpoint nosuch", r"nosuch"),
    Case("bench physics --size 4", r"--size"),
    Case("bench sampler --steps 0", r"--steps"),
    Case("bench sampler --solver nosuch", r"--solver.*nosuch"),
    Case("bench sampler --ct-operator nosuch", r"--ct-operator.*nosuch"),
    Case("bench sampler --tasks ct,nosuch", r"--tasks.*nosuch"),
    Case("bench train --seconds -1", r"--seconds"),
    Case("bench train --groups nosuch", r"nosuch"),
    Case("bench train --threads 0", r"--threads"),
]


def _split(argv: str) -> list[str]:
    import shlex
    return shlex.split(argv)


def make_workspace(root: Path) -> None:
    """Small stand-in files of every kind the cases read or must not overwrite."""
    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_file

    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    img = 0.2 * ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1) + 0.3 * ((xx - 0.2) ** 2 + yy ** 2 < 0.08)
    np.save(root / "img.npy", img)
    np.save(root / "big.npy", img * 5)
    np.savez(root / "imgz.npz", image=img)
    np.save(root / "const.npy", np.ones((32, 32)))
    nan = img.copy()
    nan[3, 3] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "tiny1d.npy", np.ones(32))
    (root / "junk.npy").write_bytes(b"not numpy")
    (root / "junk.png").write_bytes(b"not a png")
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    (root / "junk.yaml").write_text("solver: [unclosed\n")
    (root / "img.xyz").write_bytes(b"xyz")
    (root / "afile.txt").write_text("a user's file\n")
    (root / "existing.png").write_bytes(b"a user's picture")
    for name in ("existing.npz", "existing.npy", "existing.json", "existing.yaml", "existing_npy.npy",
                 "existing_std_std.npy"):
        (root / name).write_bytes(b"a user's file")
    (root / "empty").mkdir()
    (root / "junkdir").mkdir()
    (root / "junkdir" / "notes.txt").write_text("nothing readable\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.tex").write_text("a user's thesis\n")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3, 2), dtype=np.float32), np.eye(4)), str(root / "vol4d.nii.gz"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = 0
    ds.save_as(root / "zero_slope.dcm")
    train_tiny(root / "tiny")
    for argv in (f"{CT} --views 4 --out ct.npz", "simulate --task mri --mask random --input img.npy --size 16 --out mri.npz",
                 "simulate --task ct --size 32 --upsample 1 --views 4 --input img.npy --out ct32.npz"):
        assert main(_split(argv)) == 0
    with np.load(root / "mri.npz") as z:
        mri = {k: z[k] for k in z.files}
    with np.load(root / "ct.npz") as z:
        ct = {k: z[k] for k in z.files}
    np.savez(root / "neg_noise.npz", **{**mri, "noise": np.array(json.dumps({"model": "gaussian", "level": -1}))})
    np.savez(root / "mismatch.npz", **{**mri, "task": np.array("ct")})
    np.savez(root / "real_kspace.npz", **{**mri, "measurements": np.abs(mri["measurements"])})
    y = ct["measurements"].copy()
    y[0, 0, 0] = np.nan
    np.savez(root / "nan.npz", **{**ct, "measurements": y})
    (root / "mri_preset.yaml").write_text("solver: dds\ntask: mri\nparams: {lam: 1.0}\n")


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def classify(case: Case, pristine: Path, scratch: Path) -> tuple[str, str]:
    """Run one case in a fresh copy `scratch` of the workspace `pristine` -> (outcome, the error
    text or what went wrong). A copy per case, so that one case's damage cannot hide another's."""
    import shutil
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(pristine, scratch)
    root = scratch
    os.chdir(root)
    before = _snapshot(root)
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(_split(case.argv))
    except SystemExit as e:  # argparse's own usage errors exit 2 with a one-line message
        rc = e.code
    except Exception as e:  # noqa: BLE001 - this is what the matrix counts
        return "traceback", f"{type(e).__name__}: {e}"
    after = _snapshot(root)
    changed = [k for k, v in before.items() if after.get(k, v) != v]
    if changed:
        return "overwrite", ", ".join(changed)
    if rc == 0:
        return "accepted", out.getvalue()[-200:]
    lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
    if rc != 2 or len(lines) != 1:
        return "unclear", f"rc {rc}: {err.getvalue()[-300:]}"
    if not re.search(case.expect, lines[0]):
        return "unclear", f"message does not match {case.expect!r}: {lines[0]}"
    return "clear", lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_workspace(root)
    finally:
        os.chdir(cwd)
    return root


def test_cases_are_distinct():
    argvs = [c.argv for c in CASES]
    assert len(set(argvs)) == len(argvs) >= 120


@pytest.mark.parametrize("case", CASES, ids=[c.argv[:60] for c in CASES])
def test_bad_input(workspace, case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcome, text = classify(case, workspace, tmp_path / "ws")
    assert outcome == "clear", f"{case.argv}: {outcome}: {text}"


if __name__ == "__main__":  # the table of the closing note: python tests/test_bad_inputs.py
    import tempfile

    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "pristine"
        root.mkdir()
        os.chdir(root)
        make_workspace(root)
        table: dict[str, dict[str, int]] = {}
        for c in CASES:
            outcome, text = classify(c, root, Path(d) / "scratch")
            row = table.setdefault(c.argv.split()[0], {})
            row[outcome] = row.get(outcome, 0) + 1
            if outcome != "clear":
                print(f"  {outcome}: {c.argv} -> {text}")
        kinds = ("clear", "unclear", "traceback", "accepted", "overwrite")
        print("| command | cases | " + " | ".join(kinds) + " |")
        print("|---|---|" + "---|" * len(kinds))
        for cmd, row in table.items():
            print(f"| {cmd} | {sum(row.values())} | " + " | ".join(str(row.get(k, 0)) for k in kinds) + " |")
        tot = {k: sum(r.get(k, 0) for r in table.values()) for k in kinds}
        print(f"| all | {len(CASES)} | " + " | ".join(str(tot[k]) for k in kinds) + " |")
