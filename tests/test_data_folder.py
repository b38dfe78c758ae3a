"""Folder datasets: patient-level splits, normalisation, resizing, sharding, registry, CLI."""
import numpy as np
import pytest
import torch
from test_readers import write_dicom_series, write_nifti

from scoreinv.cli import main
from scoreinv.data import build_dataset
from scoreinv.data.folder import assign_splits, resize_slices
from scoreinv.errors import ScoreinvError


@pytest.fixture
def cohort(tmp_path):
    """10 patients: 6 with a CT series, 4 with two MRI NIfTI volumes each, plus a stray text file."""
    root = tmp_path / "cohort"
    for p in range(6):
        write_dicom_series(root / f"ct{p}" / "series", n=3, patient=f"CT{p}", seed=p)
    rng = np.random.default_rng(0)
    for p in range(4):
        for seq in ("t1", "t2"):
            write_nifti(root / f"mr{p}" / f"{seq}.nii.gz", rng.random((8, 8, 4)) * 100)
    (root / "README.txt").write_text("not an image")
    return root


def test_split_by_patient_is_disjoint_and_complete(cohort):
    parts = {s: build_dataset(cohort, s, 16) for s in ("train", "val", "test", "all")}
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == len(parts["all"]) == 6 * 3 + 8 * 4
    groups = {}
    for s in ("train", "val", "test"):
        ds = parts[s]
        groups[s] = {ds.refs[v].info["group"] for v, _ in ds.index}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) \
        and not (groups["val"] & groups["test"])
    assert len(groups["train"]) == 8 and len(groups["val"]) == 1 and len(groups["test"]) == 1
    d = parts["all"].describe()
    assert d["sizes"]["all"]["volumes"] == 14 and len(d["skipped_files"]) == 1
    # deterministic for a seed; by-volume splitting may separate a patient's two MRI volumes
    again = build_dataset(cohort, "val", 16)
    assert again.index == parts["val"].index
    seeds = {tuple(build_dataset(cohort, "val", 16, seed=s).index) for s in range(6)}
    assert len(seeds) > 1


def test_assign_split_counts():
    counts = lambda t: [list(t.values()).count(s) for s in ("train", "val", "test")]  # noqa: E731
    assert counts(assign_splits([f"g{i}" for i in range(10)], 0)) == [8, 1, 1]
    assert counts(assign_splits(["a", "b", "c"], 0)) == [1, 1, 1]
    assert counts(assign_splits(["a", "b"], 0)) == [1, 1, 0]
    assert counts(assign_splits(["a"], 0)) == [1, 0, 0]
    assert counts(assign_splits([f"g{i}" for i in range(20)], 0, (0.5, 0.5, 0.0))) == [10, 10, 0]
    with pytest.raises(ScoreinvError, match="fractions"):
        assign_splits(["a"], 0, (0.5, 0.6, 0.1))


def test_hu_window_and_minmax(tmp_path):
    hu = write_dicom_series(tmp_path / "ct", n=2, rows=16, cols=16, slope=1.0, intercept=-1024.0)
    ds = build_dataset(tmp_path / "ct", "all", 16)
    x = torch.stack([ds[i] for i in range(len(ds))])[:, 0].double().numpy()
    np.testing.assert_allclose(x, np.clip((hu + 1024) / 4224, 0, 1), atol=1e-6)     # window, no resize
    water = build_dataset(tmp_path / "ct", "all", 16, hu_min=-1024, hu_max=3200)
    assert float(water[0].max()) <= 1
    mm = build_dataset(tmp_path / "ct", "all", 16, normalize="minmax")
    y = torch.stack([mm[i] for i in range(len(mm))])
    assert float(y.min()) == 0.0 and float(y.max()) == pytest.approx(1.0)
    np.testing.assert_allclose(y[:, 0].double().numpy(), (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_resize_keeps_aspect():
    sl = np.ones((1, 16, 8), np.float32)
    pad = resize_slices(sl, 16, fit="pad")[0, 0]
    assert pad.shape == (16, 16)
    assert float(pad[:, 4:12].min()) == 1.0 and float(pad[:, :4].max()) == 0.0 and float(pad[:, 12:].max()) == 0.0
    crop = resize_slices(sl, 8, fit="crop")[0, 0]
    assert crop.shape == (8, 8) and float(crop.min()) == 1.0
    # anisotropic pixels: 16 x 8 pixels of 0.5 x 1 mm is a physical square
    sq = resize_slices(sl, 8, spacing=(0.5, 1.0), fit="pad")[0, 0]
    assert float(sq.min()) == pytest.approx(1.0)
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, None].repeat(64, 1)
    small = resize_slices(ramp, 16)[0, 0]
    np.testing.assert_allclose(small[0].numpy(), ramp[0, 0].reshape(16, 4).mean(1), atol=1e-6)  # area average


def test_axis_sampling_and_shards(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(1).random((10, 12, 6)))   # (x, y, z) -> (6, 12, 10)
    for axis, n in ((0, 6), (1, 12), (2, 10)):
        assert len(build_dataset(tmp_path, "all", 16, axis=axis)) == n
    ds = build_dataset(tmp_path, "all", 16, axis=1)
    b = ds.sample_batch(5, torch.Generator().manual_seed(0))
    assert b.shape == (5, 1, 16, 16) and b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1
    assert torch.equal(ds.sample_batch(5, torch.Generator().manual_seed(0)), b)
    s0, s1 = ds.shard(0, 2), ds.shard(1, 2)
    assert len(s0) + len(s1) == len(ds) and not set(s0.index) & set(s1.index)
    with pytest.raises(ScoreinvError, match="ranks"):
        ds.shard(0, 100)


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoreinvError, match="empty"):
        build_dataset(tmp_path / "empty", "train", 16)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(ScoreinvError, match=r"text.*no readable volumes"):
        build_dataset(tmp_path / "text", "all", 16)
    write_nifti(tmp_path / "one" / "v.nii", np.random.default_rng(0).random((4, 4, 4)))
    with pytest.raises(ScoreinvError, match="split 'val' is empty"):
        build_dataset(tmp_path / "one", "val", 16)
    (tmp_path / "const").mkdir()
    np.save(tmp_path / "const" / "c.npy", np.ones((4, 4)))
    with pytest.raises(ScoreinvError, match="constant"):
        build_dataset(tmp_path / "const", "all", 16)[0]


def test_registry_errors(tmp_path):
    with pytest.raises(ScoreinvError, match="unknown dataset"):
        build_dataset("nonexistent_dataset_name", "train", 16)
    with pytest.raises(ScoreinvError, match="unknown option"):
        build_dataset("phantoms", "train", 16, colour="red")
    with pytest.raises(ScoreinvError, match="does not apply"):
        build_dataset("ellipses", "train", 16, axis=2)
    assert len(build_dataset("ellipses", "val", 16, axis=0, normalize="auto", hu_min=-1024.0)) == 64
    write_nifti(tmp_path / "v.nii", np.random.default_rng(0).random((4, 4, 4)))
    with pytest.raises(ScoreinvError, match="axis"):
        build_dataset(tmp_path, "all", 16, axis=3)
    with pytest.raises(ScoreinvError, match="image_size"):
        build_dataset("phantoms", "train", 3)


def test_cli_inspect(cohort, capsys, tmp_path):
    assert main(["data", "inspect", str(cohort), "--size", "16", "--values"]) == 0
    out = capsys.readouterr().out
    assert "ct0/series" in out and "mr3/t2.nii.gz" in out and "HU" in out and "range" in out
    sizes = build_dataset(cohort, "train", 16).describe()["sizes"]
    assert f"train  {sizes['train']['volumes']:>5} volume(s) {sizes['train']['slices']:>7} slice(s)" in out
    assert "skipped 1 file(s): README.txt (not an image file)" in out
    assert main(["data", "inspect", "ellipses", "--size", "16", "--preview", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "plain" in out and (tmp_path / "p.png").stat().st_size > 0
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["data", "inspect", "phantoms", "--axis", "1"]) == 2
