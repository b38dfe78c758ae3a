"""Many inputs (scoreinv.batch): `reconstruct` over a folder with a manifest, resume after a kill,
refusal of other settings, sharding across torchrun processes, and sharded `eval` merged into the
summary a single process writes."""
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scoreinv import batch, writers
from scoreinv.batch import Shard, expand_inputs, reconstruct_many
from scoreinv.cli import main
from scoreinv.sampling import solvers

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "scoreinv.cli"]
RUN_FIELDS = ("seconds", "finished", "rank")          # what differs between two runs of the same work


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """A folder of 3 CT measurement files (8 views of 16x16 images of different content)."""
    d = tmp_path_factory.mktemp("cases")
    yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    (d / "cases").mkdir()
    for k, name in enumerate(("a", "b", "c")):
        img = ((xx - 0.2 * k) ** 2 / 0.5 + yy ** 2 / (0.3 + 0.2 * k) < 1) * (0.5 + 0.2 * k) + 0.1 * (xx > 0.3 * k)
        np.save(d / f"{name}.npy", img.astype(np.float32))
        assert main(["simulate", "--task", "ct", "--views", "8", "--upsample", "1", "--size", "16",
                     "--input", str(d / f"{name}.npy"), "--out", str(d / "cases" / f"{name}.npz")]) == 0
    return d / "cases"


def recon(ckpt, inputs, out, *extra):
    inputs = [str(i) for i in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    return ["reconstruct", "--checkpoint", ckpt, "--measurements", *inputs, "--out", str(out), "--solver",
            "projection", "--steps", "2", "--format", "npy", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, cases, tmp_path_factory):
    """One uninterrupted single-process batch run over the folder."""
    out = tmp_path_factory.mktemp("ref") / "recon"
    assert main(recon(tiny_checkpoint, cases, out)) == 0
    return out


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def _strip(entries: dict) -> dict:
    return {k: {f: v for f, v in e.items() if f not in RUN_FIELDS} for k, e in entries.items()}


def _count_solves(monkeypatch) -> list:
    """Record the measurements every solver call sees (one call per 1-slice input)."""
    calls, real = [], solvers.posterior

    def spy(model, op, y, *a, **k):
        calls.append(y.detach().cpu().clone())
        return real(model, op, y, *a, **k)
    monkeypatch.setattr(solvers, "posterior", spy)
    return calls


# --- one process ------------------------------------------------------------------------------------
def test_folder_gives_one_output_per_input_and_a_manifest(tiny_checkpoint, cases, reference, tmp_path, capsys):
    m = _manifest(reference)
    files = sorted(cases.glob("*.npz"))
    assert sorted(p.name for p in reference.iterdir()) == ["a.npy", "b.npy", "c.npy", "manifest.json"]
    assert list(m["inputs"]) == [str(f.resolve()) for f in files]
    for f in files:
        e = m["inputs"][str(f.resolve())]
        assert e["status"] == "done" and e["sha256"] == _sha(f) and e["outputs"] == [f.stem + ".npy"]
        assert e["settings_hash"] == m["settings_hash"] == batch.settings_hash(m["settings"])
        assert e["seconds"] > 0 and e["slices"] == 1 and e["nfe_per_slice"] > 0 and set(e["metrics"]) == {"psnr",
                                                                                                         "ssim"}
    assert m["settings"]["seed"] == 0 and m["settings"]["format"] == "npy"
    # every input is solved with --seed: its output is what a run on that file alone writes
    assert main(["reconstruct", "--checkpoint", tiny_checkpoint, "--measurements", str(cases / "b.npz"), "--out",
                 str(tmp_path / "b.npy"), "--solver", "projection", "--steps", "2", "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.load(reference / "b.npy"))
    assert not np.array_equal(np.load(reference / "a.npy"), np.load(reference / "b.npy"))
    # a .txt list and several files name the same inputs in their order
    listing = cases.parent / "list.txt"                       # relative lines: from the list's folder
    listing.write_text(f"# the cases\n{cases / 'c.npz'}\n\n{cases.name}/a.npz\n")
    assert expand_inputs([listing]) == [cases / "c.npz", cases / "a.npz"]
    assert expand_inputs([cases / "b.npz", cases / "a.npz"]) == [cases / "b.npz", cases / "a.npz"]
    capsys.readouterr()
    assert main(recon(tiny_checkpoint, [cases / "b.npz", cases / "c.npz"], tmp_path / "two")) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["b.npy", "c.npy", "manifest.json"]
    assert "batch: 2 reconstructed, 0 skipped (done before), 0 failed" in capsys.readouterr().out


def test_kill_then_rerun_redoes_only_the_unfinished_inputs(tiny_checkpoint, cases, reference, tmp_path, monkeypatch,
                                                           capsys):
    out = tmp_path / "recon"
    real, n = writers.write_volume, {"calls": 0}

    def killed_on_second(path, *a, **k):
        n["calls"] += 1
        if n["calls"] == 2:          # the kill lands while the second output is being written
            (Path(path).parent / f".{Path(path).name}.x1y2.tmp.npy").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(path, *a, **k)
    monkeypatch.setattr(writers, "write_volume", killed_on_second)
    assert main(recon(tiny_checkpoint, cases, out)) == 130
    m = _manifest(out)
    assert [Path(k).name for k in m["inputs"]] == ["a.npz"] and not (out / "b.npy").exists()
    a_mtime, a_sha = (out / "a.npy").stat().st_mtime_ns, _sha(out / "a.npy")
    monkeypatch.setattr(writers, "write_volume", real)
    calls = _count_solves(monkeypatch)
    capsys.readouterr()
    assert main(recon(tiny_checkpoint, cases, out)) == 0
    text = capsys.readouterr().out
    assert "a.npz: skipped" in text and "1 skipped" in text and "2 reconstructed" in text
    assert len(calls) == 2                                               # b and c only
    assert (out / "a.npy").stat().st_mtime_ns == a_mtime and _sha(out / "a.npy") == a_sha
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "b.npy", "c.npy", "manifest.json"]   # tmp removed
    for name in ("a.npy", "b.npy", "c.npy"):
        assert np.array_equal(np.load(out / name), np.load(reference / name)), name
    assert _strip(_manifest(out)["inputs"]) == _strip(_manifest(reference)["inputs"])
    # nothing left: a third run solves nothing; a changed input and a deleted output are redone
    calls.clear()
    assert main(recon(tiny_checkpoint, cases, out)) == 0 and not calls
    (out / "c.npy").unlink()
    assert main(recon(tiny_checkpoint, cases, out)) == 0 and len(calls) == 1
    assert np.array_equal(np.load(out / "c.npy"), np.load(reference / "c.npy"))


def test_changed_input_is_redone(tiny_checkpoint, cases, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for f in cases.glob("*.npz"):
        (src / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "recon"
    assert main(recon(tiny_checkpoint, src, out)) == 0
    (src / "a.npz").write_bytes((src / "c.npz").read_bytes())          # new content under the same name
    calls = _count_solves(monkeypatch)
    assert main(recon(tiny_checkpoint, src, out)) == 0 and len(calls) == 1
    assert _manifest(out)["inputs"][str((src / "a.npz").resolve())]["sha256"] == _sha(src / "c.npz")
    assert np.array_equal(np.load(out / "a.npy"), np.load(out / "c.npy"))


def test_other_settings_are_refused_unless_overwrite(tiny_checkpoint, cases, tmp_path, monkeypatch, capsys):
    out = tmp_path / "recon"
    assert main(recon(tiny_checkpoint, cases, out)) == 0
    before = (out / "manifest.json").read_text()
    capsys.readouterr()
    assert main(recon(tiny_checkpoint, cases, out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "seed: 0 there, 1 now" in err and "--overwrite" in err
    assert main(recon(tiny_checkpoint, cases, out, "--set", "solver.snr=0.2")) == 2
    assert "sets.solver" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == before
    calls = _count_solves(monkeypatch)
    assert main(recon(tiny_checkpoint, cases, out, "--seed", "1", "--overwrite")) == 0 and len(calls) == 3
    assert _manifest(out)["settings"]["seed"] == 1


def test_bad_batch_inputs(tiny_checkpoint, cases, tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert "holds no .npz measurement file" in err(recon(tiny_checkpoint, tmp_path / "empty", tmp_path / "o1"))
    assert "--out is a folder" in err(recon(tiny_checkpoint, cases, tmp_path / "o.nii.gz"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "holds no batch manifest" in err(recon(tiny_checkpoint, cases, tmp_path / "busy"))
    assert "named twice" in err(recon(tiny_checkpoint, [cases / "a.npz", cases / "a.npz"], tmp_path / "o2"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.npz").write_bytes((cases / "a.npz").read_bytes())
    assert "would both write a.npy" in err(recon(tiny_checkpoint, [cases, tmp_path / "other"], tmp_path / "o3"))
    assert "no such measurement file" in err(recon(tiny_checkpoint, [cases, tmp_path / "nope.npz"], tmp_path / "o4"))
    assert "applies to several inputs" in err(recon(tiny_checkpoint, cases / "a.npz", tmp_path / "a.npy"))
    assert "--report" in err(recon(tiny_checkpoint, cases, tmp_path / "o5", "--report", str(tmp_path / "r.json")))
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 6))
    # a bad file among good ones: recorded as failed, the others done, exit 2; a rerun retries only it
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in cases.glob("*.npz"):
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "bad.npz").write_bytes(b"not a measurement file")
    assert main(recon(tiny_checkpoint, mixed, tmp_path / "o6")) == 2
    text = capsys.readouterr().out
    assert "1 failed" in text and "3 reconstructed" in text
    e = _manifest(tmp_path / "o6")["inputs"][str((mixed / "bad.npz").resolve())]
    assert e["status"] == "failed" and e["outputs"] == [] and "bad.npz" in e["error"]
    assert main(recon(tiny_checkpoint, mixed, tmp_path / "o6")) == 2
    assert "3 skipped" in capsys.readouterr().out


def test_a_killed_sharded_run_resumes_in_one_process(tiny_checkpoint, cases, reference, tmp_path, monkeypatch):
    """Rank 1 of 2 finished its share (input 1, b) and wrote only its part; rank 0 was killed. One process
    then reads the part, skips b, does a and c, merges into manifest.json and removes the part."""
    out = tmp_path / "recon"
    opts = {"solver": "projection", "steps": 2, "fmt": "npy"}
    r = reconstruct_many(tiny_checkpoint, [cases], out, shard=Shard(rank=1, world=2), log=lambda s: None, **opts)
    assert r.done == [str(cases / "b.npz")] and r.manifest is None
    assert sorted(p.name for p in out.iterdir()) == ["b.npy", "manifest.rank1.json"]
    calls = _count_solves(monkeypatch)
    r = reconstruct_many(tiny_checkpoint, [cases], out, log=lambda s: None, **opts)
    assert r.skipped == [str(cases / "b.npz")] and len(r.done) == 2 and len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "b.npy", "c.npy", "manifest.json"]
    assert _strip(_manifest(out)["inputs"]) == _strip(_manifest(reference)["inputs"])
    assert Shard(1, 3).mine(8) == [1, 4, 7] and Shard().mine(3) == [0, 1, 2]


# --- torchrun -----------------------------------------------------------------------------------
def _torchrun(argv, cwd):
    """Run a scoreinv command under torchrun with 2 CPU processes; on a timeout the launcher and its
    workers (one process group) are killed, so that no worker outlives the test."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([*TORCHRUN, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=1800)     # seconds unloaded; a machine shared with training needs more
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    return out


@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_process_writes(tiny_checkpoint, cases, reference, tmp_path):
    out = tmp_path / "recon"
    text = _torchrun(recon(tiny_checkpoint, cases, out), tmp_path)
    assert "[rank 0/2]" in text and "[rank 1/2]" in text and "wrote" in text
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "b.npy", "c.npy", "manifest.json"]   # parts merged
    m, ref = _manifest(out), _manifest(reference)
    assert m["settings"] == ref["settings"] and _strip(m["inputs"]) == _strip(ref["inputs"])
    assert [e["rank"] for e in m["inputs"].values()] == [0, 1, 0]
    for name in ("a.npy", "b.npy", "c.npy"):
        assert np.array_equal(np.load(out / name), np.load(reference / name)), name
    text = _torchrun(recon(tiny_checkpoint, cases, out), tmp_path)                # resumed: nothing to do
    assert text.count(": skipped (done before with these settings") == 3


def _rows(out):
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sharded_eval_merges_into_the_single_process_summary(tiny_checkpoint, tmp_path):
    def ev(out):
        return ["eval", "--checkpoint", tiny_checkpoint, "--task", "ct", "--views", "6", "--data", "phantoms",
                "--solvers", "fbp,tv,projection", "--steps", "2", "--num-images", "6", "--batch-size", "2",
                "--val-images", "2", "--out", str(out)]
    assert main(ev(tmp_path / "one")) == 0
    text = _torchrun(ev(tmp_path / "two"), tmp_path)
    assert "[rank 1/2] [projection] batch 2/3" in text
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(a) == len(b) == 18
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert [{k: v for k, v in s.items() if k != "sec_per_image"} for s in sa] == \
        [{k: v for k, v in s.items() if k != "sec_per_image"} for s in sb]
    ra, rb = np.load(tmp_path / "one" / "reconstructions.npz"), np.load(tmp_path / "two" / "reconstructions.npz")
    for k in ra.files:
        assert np.array_equal(ra[k], rb[k]), k
    assert json.loads((tmp_path / "one" / "weights.json").read_text()) == \
        json.loads((tmp_path / "two" / "weights.json").read_text())
