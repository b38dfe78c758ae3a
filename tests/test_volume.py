"""Volumes end to end: reconstruct on a volume, the DICOM series round trip, volume metrics, the 3-D
phantom and `bench volume` (docs/design.md §9; the coupling and its settings: tests/test_coupling.py)."""
import json
import math

import numpy as np
import pytest
import torch

from scoreinv.cli import main
from scoreinv.data.phantom3d import Phantom3D, phantom_volume, volume_affine, write_nifti
from scoreinv.errors import ScoreinvError
from scoreinv.metrics import psnr, reformat, ssim, volume_metrics, zgrad_rmse
from scoreinv.physics.measurements import load_measurements

# --- reconstruct on a volume --------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_meas(tmp_path_factory):
    """A 6-slice 16x16 3-D phantom as a NIfTI volume (2 mm pixels, 3 mm slices), simulated at 6 views."""
    d = tmp_path_factory.mktemp("vol")
    vol = phantom_volume(6, 16, 0)
    write_nifti(d / "v.nii.gz", vol, pixel_mm=2.0, z_spacing=1.5)
    assert main(["simulate", "--task", "ct", "--views", "6", "--upsample", "1", "--intensity", "hu",
                 "--input", str(d / "v.nii.gz"), "--out", str(d / "m.npz")]) == 0
    return d / "m.npz", vol


def recon(ckpt, meas, out, *extra):
    return main(["reconstruct", "--checkpoint", ckpt, "--measurements", str(meas), "--out", str(out),
                 "--solver", "dds", "--steps", "3", "--no-progress", *extra])


def test_the_phantom_file_round_trips_and_a_coupled_volume_ignores_the_network_batch(
        tiny_checkpoint, phantom_meas, tmp_path, capsys):
    meas, vol = phantom_meas
    m = load_measurements(meas)
    assert torch.allclose(m.ground_truth, vol, atol=1e-6)            # HU file -> --intensity hu -> the phantom
    assert recon(tiny_checkpoint, meas, tmp_path / "a.npy", "--coupling", "ztv", "--batch-size", "2",
                 "--report", str(tmp_path / "a.json")) == 0
    out = capsys.readouterr().out
    # the default λ_z is scaled by the voxel aspect (2 mm pixels, 3 mm slices); a --set value is kept
    assert "z-TV: λ_z 0.006667 = 0.01 x pixel / spacing (0.6667" in out
    assert "ztv coupling λ_z 0.00666667 " in out and "--coupling: coupling" in out and "voxel aspect: ztv_lambda" in out
    assert "volume (6 slices, 3 mm apart): PSNR axial/coronal/sagittal" in out and "z-gradient RMSE" in out
    assert recon(tiny_checkpoint, meas, tmp_path / "b.npy", "--coupling", "ztv", "--batch-size", "6") == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    np.testing.assert_allclose(a, b, atol=1e-6)                    # chunked network == one call
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["slice_spacing_mm"] == pytest.approx(3.0) and rep["solver"]["coupling"] == "ztv"
    assert rep["solver"]["ztv_lambda"] == pytest.approx(0.01 * 2 / 3)
    capsys.readouterr()
    assert recon(tiny_checkpoint, meas, tmp_path / "e.npy", "--coupling", "ztv", "--set", "solver.ztv_lambda=0.02",
                 "--batch-size", "6") == 0
    out = capsys.readouterr().out
    assert "ztv coupling λ_z 0.02 " in out and "x pixel / spacing" not in out
    assert rep["volume_metrics"]["ssim_coronal"] is None            # planes of 6 x 16: smaller than SSIM's window
    v = volume_metrics(torch.from_numpy(a)[:, None], vol)
    assert rep["volume_metrics"]["psnr_axial"] == pytest.approx(v["psnr_axial"], abs=1e-4)
    # λ_z = 0 in one call is the uncoupled result of one call, bit for bit
    assert recon(tiny_checkpoint, meas, tmp_path / "c.npy", "--coupling", "ztv", "--set", "solver.ztv_lambda=0",
                 "--batch-size", "6") == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "d.npy", "--batch-size", "6") == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"), np.load(tmp_path / "d.npy"))


def _series(d, zs, shuffle=False):
    """A CT DICOM series of 16x16 slices at heights zs (mm), one file each, its slices' datasets."""
    import pydicom
    from dicom_factory import save, slice_ds
    from pydicom.uid import generate_uid
    d.mkdir()
    series, frame, study = generate_uid(), generate_uid(), generate_uid()
    vol = phantom_volume(len(zs), 16, 3)
    order = list(range(len(zs)))[::-1] if shuffle else range(len(zs))
    out = []
    for k in order:
        hu = np.rint(vol[k, 0].numpy() * 4224 - 1024 + 1024).astype(np.uint16)
        ds = slice_ds(hu, ipp=(-15.0, -12.0, zs[k]), spacing=(1.5, 1.5), series=series, number=k + 1, thickness=2.0)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        save(ds, d / f"f{len(out):02d}.dcm")
        out.append(pydicom.dcmread(d / f"f{len(out):02d}.dcm"))
    return sorted(out, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_a_coupled_dicom_series_comes_back_in_order_with_its_geometry(tiny_checkpoint, tmp_path):
    """Item 2 of issue 14: one file per slice, positions, orientation and order kept, a new series in the
    input's study and frame of reference, derived-image flags, each slice citing its source slice."""
    import pydicom
    from pydicom.pixels import apply_rescale
    src = _series(tmp_path / "in", [10.0, 12.0, 14.0, 16.0, 18.0, 20.0], shuffle=True)
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "ct", "--views", "6", "--upsample", "1", "--input", str(tmp_path / "in"),
                 "--out", str(meas)]) == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "r.npy", "--coupling", "ztv") == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "r.dcm", "--coupling", "ztv") == 0
    x = np.load(tmp_path / "r.npy")
    files = sorted((tmp_path / "r").iterdir())
    assert [f.name for f in files] == [f"IM_{k:04d}.dcm" for k in range(1, 7)]
    out = [pydicom.dcmread(f) for f in files]
    assert [int(d.InstanceNumber) for d in out] == list(range(1, 7))
    assert len({d.SeriesInstanceUID for d in out}) == 1 and out[0].SeriesInstanceUID != src[0].SeriesInstanceUID
    for k, d in enumerate(out):
        assert d.StudyInstanceUID == src[k].StudyInstanceUID and d.FrameOfReferenceUID == src[k].FrameOfReferenceUID
        assert list(d.ImageType) == ["DERIVED", "SECONDARY"] and "ztv coupling" in d.DerivationDescription
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                   [-15.0, -12.0, 10.0 + 2 * k], atol=1e-4)      # 16x16 as given: no resize
        assert float(d.SliceLocation) == pytest.approx(10.0 + 2 * k)
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == src[k].SOPInstanceUID
        np.testing.assert_allclose(apply_rescale(d.pixel_array, d), x[k] * 4224 - 1024,
                                   atol=float(d.RescaleSlope) / 2 + 1e-3)


def test_volume_inputs_that_are_not_volumes_are_refused_before_sampling(tiny_checkpoint, phantom_meas, tmp_path,
                                                                        capsys, monkeypatch):
    monkeypatch.setattr("scoreinv.sampling.solvers.posterior",
                        lambda *a, **k: pytest.fail("sampling started before the checks"))
    meas, _ = phantom_meas

    def refused(m, *extra, solver="dds"):
        assert main(["reconstruct", "--checkpoint", tiny_checkpoint, "--measurements", str(m), "--out",
                     str(tmp_path / "o.npy"), "--solver", solver, "--steps", "2", "--no-progress", *extra]) == 2
        return capsys.readouterr().err

    assert "solver dps cannot couple slices" in refused(meas, "--coupling", "ztv", solver="dps")
    assert "solver ddrm cannot couple slices" in refused(meas, "--coupling", "ztv", "--ct-operator", "fourier",
                                                         solver="ddrm")
    assert "--set solver.coupling ztv: solver dps cannot" in refused(meas, "--set", "solver.coupling=ztv",
                                                                      solver="dps")
    assert "at least 2 slices" in refused(meas, "--coupling", "ztv", "--slices", "2")
    assert "not evenly spaced" in refused(meas, "--coupling", "ztv", "--slices", "0,1,3")
    assert "differs from --set" in refused(meas, "--coupling", "none", "--set", "solver.coupling=ztv")
    for zs, what in (([0.0, 2.0, 4.0, 8.0, 10.0], "missing slice"), ([0.0, 2.0, 4.0, 5.0, 6.0], "non-uniform")):
        d = tmp_path / f"s{len(what)}"
        _series(d, zs)
        assert main(["simulate", "--task", "ct", "--views", "4", "--upsample", "1", "--input", str(d), "--out",
                     str(d / "m.npz")]) == 0
        capsys.readouterr()
        assert what in refused(d / "m.npz", "--coupling", "ztv")
    # a duplicated position (a source record edited by hand; the DICOM reader refuses such a series itself)
    with np.load(meas, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    src = json.loads(str(arrays["source"]))
    src["slices"][3]["ImagePositionPatient"] = src["slices"][2]["ImagePositionPatient"]
    arrays["source"] = np.array(json.dumps(src))
    np.savez(tmp_path / "dup.npz", **arrays)
    assert "same position" in refused(tmp_path / "dup.npz", "--coupling", "ztv")
    # a volume whose coupled step would not fit in the memory available now
    import os
    pages = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert "needs about" in refused(meas, "--coupling", "ztv")


# --- volume metrics -----------------------------------------------------------------------------
def test_volume_metrics_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(12, 1, 14, 16, generator=g)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    v = volume_metrics(x, ref)
    assert v["psnr_axial"] == pytest.approx(float(psnr(x, ref).mean()), abs=1e-9)
    assert v["ssim_axial"] == pytest.approx(float(ssim(x, ref).mean()), abs=1e-9)
    cor, sag = reformat(x, "coronal"), reformat(x, "sagittal")
    assert cor.shape == (14, 1, 12, 16) and sag.shape == (16, 1, 12, 14)
    assert torch.equal(cor[3, 0, 0], x[11, 0, 3]) and torch.equal(sag[5, 0, 0], x[11, 0, :, 5])   # superior on top
    assert v["psnr_coronal"] == pytest.approx(float(psnr(cor, reformat(ref, "coronal")).mean()), abs=1e-9)
    assert v["ssim_sagittal"] == pytest.approx(float(ssim(sag, reformat(ref, "sagittal")).mean()), abs=1e-9)
    # the z-gradient error: 0 for an error constant in z, a for a ramp of slope a
    flat = torch.full((8, 1, 12, 12), 0.5)
    assert float(zgrad_rmse(flat + 0.1, flat)) == pytest.approx(0.0, abs=1e-12)
    ramp = flat + 0.02 * torch.arange(8.0).reshape(8, 1, 1, 1)
    assert float(zgrad_rmse(ramp, flat)) == pytest.approx(0.02, rel=1e-6)
    assert math.isnan(volume_metrics(x[:6], ref[:6])["ssim_coronal"])      # 6 x 16 planes: below the window
    # an exact plane (all air outside the body) leaves the PSNR mean instead of making it infinite
    air = x.clone()
    air[:, :, 0] = ref[:, :, 0]                                           # coronal plane 0 without error
    va = volume_metrics(air, ref)
    others = psnr(reformat(air, "coronal")[1:], reformat(ref, "coronal")[1:])
    assert math.isfinite(va["psnr_coronal"]) and va["psnr_coronal"] == pytest.approx(float(others.mean()), abs=1e-9)
    assert math.isinf(volume_metrics(ref, ref)["psnr_axial"])
    with pytest.raises(ScoreinvError, match="at least 2 slices"):
        volume_metrics(x[:1], ref[:1])


# --- the 3-D phantom ----------------------------------------------------------------------------
def test_phantom_volumes_are_seeded_smooth_in_z_and_a_dataset_of_volumes():
    a = phantom_volume(8, 32, 5)
    assert a.shape == (8, 1, 32, 32) and a.dtype == torch.float32 and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, phantom_volume(8, 32, 5)) and not torch.equal(a, phantom_volume(8, 32, 6))
    other = phantom_volume(8, 32, 6)
    # neighbouring slices are alike (ellipsoids, 3-D textures), unlike slices of another phantom ...
    assert (a[1:] - a[:-1]).pow(2).mean() < 0.05 * (a - other).pow(2).mean()
    # ... yet the volume is not a stack of one slice: structures begin and end along z
    thick = phantom_volume(8, 32, 5, z_spacing=8.0)
    assert (thick[1:] - thick[:-1]).abs().amax(dim=(1, 2, 3)).max() > 0.05
    head = phantom_volume(3, 64, 1, kind="head")
    assert head[1, 0, 32].max() > 0.5                              # the skull (> 1100 HU) crosses the middle row
    ds = Phantom3D("test", 16, seed=2, volumes=2, depth=5)
    assert len(ds) == 10 and ds.index[7] == (1, 2)
    assert torch.equal(ds[7], ds.volume(1)[2])
    assert {v for v, _ in ds.shard(1, 2).index} == {1}
    aff = volume_affine(5, 16, 2.0, 1.5)
    np.testing.assert_allclose(aff[:3, :3] @ [1, 0, 0], [0, 0, 3.0])          # slices run superior
    with pytest.raises(ScoreinvError, match="kind"):
        phantom_volume(4, 16, kind="knee")


def test_eval_reports_volume_metrics_and_refuses_coupling_on_independent_images(tmp_path, tiny_checkpoint):
    from scoreinv import evaluate as E
    from scoreinv.data.registry import build_dataset
    from scoreinv.score import load_score_model
    from scoreinv.tasks import task_options
    opts = task_options("ct", views=6, upsample=1)
    ds = Phantom3D("test", 16, volumes=2, depth=4)
    model, _ = load_score_model(tiny_checkpoint)
    methods = E.resolve_methods("fbp,dds", "ct", steps=2, sets={"dds": {"coupling": "ztv"}})
    summary = E.evaluate(tmp_path / "e", opts, ds, methods, 8, data_id="phantom3d", split="test", model=model,
                         batch_size=4, log=lambda *a: None)
    rec = {r["solver"]: r for r in summary}
    assert rec["fbp"]["volume"]["n_volumes"] == 2 and rec["fbp"]["volume"]["slices"] == [4, 4]
    z = np.load(tmp_path / "e" / "reconstructions.npz")
    x = torch.from_numpy(z["recon_dds"])
    both = [volume_metrics(x[i:i + 4], torch.from_numpy(z["ground_truth"][i:i + 4])) for i in (0, 4)]
    assert rec["dds"]["volume"]["zgrad_rmse"] == pytest.approx((both[0]["zgrad_rmse"] + both[1]["zgrad_rmse"]) / 2)
    flat = build_dataset("phantoms", "test", 16)
    with pytest.raises(ScoreinvError, match="needs a dataset of volumes"):
        E.evaluate(tmp_path / "f", opts, flat, methods, 4, data_id="phantoms", split="test", model=model,
                   batch_size=4, log=lambda *a: None)


# --- the phantom as a built-in dataset and a NIfTI volume -----------------------------------------
def test_phantom3d_is_a_builtin_dataset_for_inspect_and_eval(tmp_path, tiny_checkpoint, capsys):
    from scoreinv.data import BUILTIN_DATASETS, build_dataset
    assert "phantom3d" in BUILTIN_DATASETS
    ds = build_dataset("phantom3d", "test", 16, seed=2, volumes=1, depth=3)
    assert isinstance(ds, Phantom3D) and len(ds) == 3 and ds.index == [(0, 0), (0, 1), (0, 2)]
    assert torch.equal(ds[1], Phantom3D("test", 16, seed=2, volumes=1, depth=3).volume(0)[1])
    with pytest.raises(ScoreinvError, match="unknown option.*views"):
        build_dataset("phantom3d", "test", 16, views=3)
    with pytest.raises(ScoreinvError, match="hu_min"):
        build_dataset("phantom3d", "test", 16, hu_min=-500.0)
    assert main(["data", "inspect", "phantom3d", "--size", "16", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "dataset   phantom3d" in out and "32 image(s) of 16x16" in out and "volumes   2" in out
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--task", "ct", "--views", "6", "--upsample", "1",
                 "--data", "phantom3d", "--split", "test", "--solvers", "fbp", "--num-images", "4",
                 "--out", str(tmp_path / "e")]) == 0
    rec = {r["solver"]: r for r in json.loads((tmp_path / "e" / "summary.json").read_text())}
    assert rec["fbp"]["volume"]["n_volumes"] == 1 and rec["fbp"]["volume"]["slices"] == [4]


def test_data_phantom3d_writes_the_volume_that_simulate_and_coupled_reconstruct_read(tiny_checkpoint, tmp_path,
                                                                                       capsys):
    from scoreinv.data.readers import read_volume
    vol = tmp_path / "vol.nii.gz"
    args = ["data", "phantom3d", "--out", str(vol), "--slices", "4", "--size", "16", "--seed", "3",
            "--z-spacing", "2", "--pixel-size", "1.5"]
    assert main(args) == 0
    assert "4 slice(s) of 16x16, pixel 1.5 mm, slices 3 mm apart" in capsys.readouterr().out
    v = read_volume(str(vol))
    ref = phantom_volume(4, 16, 3, z_spacing=2.0)[:, 0].numpy()
    np.testing.assert_allclose((v.data + 1024) / 4224, ref, atol=1e-5)        # HU, slices inferior -> superior
    np.testing.assert_allclose(v.meta["affine"], volume_affine(4, 16, 1.5, 2.0), atol=1e-4)
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err          # an existing file is kept
    assert main(args + ["--overwrite", "--kind", "head"]) == 0
    for bad, what in ((["--out", str(tmp_path / "v.png")], ".nii or .nii.gz"), (["--slices", "0"], "--slices"),
                      (["--pixel-size", "-1"], "--pixel-size"), (["--size", "4"], "--size")):
        assert main(["data", "phantom3d", "--out", str(tmp_path / "w.nii"), *bad]) == 2
        assert what in capsys.readouterr().err
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "ct", "--views", "6", "--upsample", "1", "--intensity", "hu", "--input",
                 str(vol), "--out", str(meas)]) == 0
    assert recon(tiny_checkpoint, meas, tmp_path / "r.nii.gz", "--coupling", "ztv") == 0
    assert "volume (4 slices, 3 mm apart)" in capsys.readouterr().out
    out = read_volume(str(tmp_path / "r.nii.gz"))
    np.testing.assert_allclose(out.meta["affine"], v.meta["affine"], atol=1e-4)   # overlays the input volume


# --- bench volume -------------------------------------------------------------------------------
def _bench_lines(text: str) -> dict:
    return dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln and not ln.startswith("#"))


def test_bench_volume_times_each_coupling(tiny_checkpoint, capsys):
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--slices", "3", "--image-size", "16",
                 "--steps", "2", "--views", "6", "--data", "phantom3d", "--batch-size", "2", "--in-process"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# bench volume")
    r = _bench_lines(out)
    assert r["data"].startswith("phantom3d seed 0, 3 slices of 16x16") and r["solver"] == "diffpir"
    assert r["memory"].startswith("this process") and r["slices"] == "3" and int(r["nfe_per_slice"]) >= 2
    for c in ("none", "ztv"):
        total, per = float(r[f"{c}_seconds"]), float(r[f"{c}_seconds_per_slice"])
        assert total > 0 and per == pytest.approx(total / 3, rel=1e-4)
        assert float(r[f"{c}_peak_rss_mib"]) >= float(r[f"{c}_setup_rss_mib"]) > 10
        assert math.isfinite(float(r[f"{c}_psnr"])) and float(r[f"{c}_zgrad_rmse"]) >= 0
    assert float(r["ztv_lambda_z"]) > 0 and "none_lambda_z" not in r
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--image-size", "24"]) == 2
    assert "whole-image network for 16x16" in capsys.readouterr().err
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--couplings", "ztv,xyz"]) == 2
    assert "--couplings" in capsys.readouterr().err


def test_bench_volume_data_falls_back_to_the_phantom(monkeypatch, tmp_path):
    from scoreinv.bench.volume import load_volume
    monkeypatch.setenv("SCOREINV_DATA", str(tmp_path))                       # nothing fetched there
    x, what = load_volume("auto", 3, 16)
    assert torch.equal(x, phantom_volume(3, 16, 0)) and "ct-real is not fetched" in what
    with pytest.raises(ScoreinvError, match="not fetched"):
        load_volume("lung2", 3, 16)
    with pytest.raises(ScoreinvError, match="lung2 has 61 slices"):
        load_volume("lung2", 62, 16)


@pytest.mark.slow
def test_bench_volume_measures_each_coupling_in_a_fresh_process(tiny_checkpoint, capsys):
    assert main(["bench", "volume", "--checkpoint", tiny_checkpoint, "--slices", "3", "--image-size", "16",
                 "--steps", "2", "--views", "6", "--data", "phantom3d"]) == 0
    r = _bench_lines(capsys.readouterr().out)
    assert r["memory"] == "ru_maxrss of a fresh process per coupling"
    for c in ("none", "ztv"):
        assert float(r[f"{c}_peak_rss_mib"]) >= float(r[f"{c}_setup_rss_mib"]) > 10
        assert float(r[f"{c}_seconds"]) > 0


def test_volume_study_chooses_lambda_z_on_the_validation_volume_and_resumes(tiny_checkpoint, tmp_path, capsys):
    """benchmarks/volume_study.py: λ_z of the ztv run is the grid point (c · pixel/spacing, and 0) with
    the best validation score, each point scored once; the test run uses it; a rerun redoes nothing."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "volume_study.py"
    spec = importlib.util.spec_from_file_location("volume_study", path)
    vs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs)
    out = tmp_path / "study"
    argv = ["--data", "phantom3d", "--depth", "3", "--image-size", "16", "--checkpoint", str(tiny_checkpoint),
            "--steps", "2", "--views", "6", "--methods", "fbp,ztv", "--out", str(out)]
    assert vs.main(argv) == 0
    rec = json.loads((out / "weights.json").read_text())["ztv"]
    assert rec["beta"] == 1.0 and rec["grid"] == [0.0, *vs.ZTV_GRID]        # phantom3d: isotropic voxels
    scores = [rec["psnr_hu"][f"{g:.6g}"] for g in rec["grid"]]
    assert len(set(scores)) > 1                                             # λ_z changes the validation result
    assert rec["chosen"] == rec["grid"][scores.index(max(scores))]
    assert json.loads((out / "ztv.json").read_text())["ztv_lambda"] == rec["chosen"]
    first = capsys.readouterr().out
    assert first.count("on phantom3d validation volume (3 slices): mean PSNR-HU") == len(rec["grid"])
    assert vs.main(argv) == 0                                               # resumed: nothing is run again
    again = capsys.readouterr().out
    assert "mean PSNR-HU" not in again.split("| method")[0] and "ztv: done before" in again
    with pytest.raises(ScoreinvError, match="other settings"):
        vs.main(argv[:-2] + ["--ztv-lambda", "0.5", "--out", str(out)])
    stale = json.loads((out / "ztv.json").read_text()) | {"ztv_lambda": 0.0123}   # a ztv made at another λ_z
    (out / "ztv.json").write_text(json.dumps(stale))
    with pytest.raises(ScoreinvError, match="made with λ_z 0.0123"):
        vs.main(argv)


def test_default_ztv_lambda_follows_the_voxel_aspect_and_a_given_one_is_kept():
    """reconstruct.scaled_ztv: λ_z = 0.01 · pixel/spacing by default (geometric mean of non-square
    pixels); a --set value, a file without pixel size or positions, and no coupling are left alone."""
    from scoreinv.reconstruct import scaled_ztv, solver_settings
    base = solver_settings("ct", "dds", coupling="ztv")
    said = []
    r = scaled_ztv(base, (2.0, 2.0), 4.0, said.append)
    assert r.cfg.ztv_lambda == pytest.approx(0.005) and r.origin["ztv_lambda"] == "voxel aspect"
    assert base.cfg.ztv_lambda == 0.01 and "λ_z 0.005 = 0.01 x pixel / spacing (0.5: 2 mm" in said[-1]
    r = scaled_ztv(base, (1.0, 4.0), 2.0, said.append)
    assert r.cfg.ztv_lambda == pytest.approx(0.01) and "1 x 4 mm (geometric mean)" in said[-1]
    assert scaled_ztv(base, None, 4.0, said.append) is base and "voxel aspect is unknown" in said[-1]
    assert scaled_ztv(base, (2.0, 2.0), None) is base
    given = solver_settings("ct", "dds", sets={"solver": {"ztv_lambda": 0.02}}, coupling="ztv")
    assert scaled_ztv(given, (2.0, 2.0), 4.0).cfg.ztv_lambda == 0.02
    plain = solver_settings("ct", "dds")
    assert scaled_ztv(plain, (2.0, 2.0), 4.0) is plain
