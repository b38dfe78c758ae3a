"""`scoreinv reconstruct` end to end (tiny 16x16 model trained 1 step) and the output writers."""
import json

import numpy as np
import pytest
import torch

from scoreinv import source_record, writers
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.physics.measurements import load_measurements
from scoreinv.reconstruct import plan
from scoreinv.sampling import solvers
from scoreinv.sampling.settings import parse_sets
from scoreinv.score import read_checkpoint

SPACING = 0.661468           # CT_small.dcm: 128 x 128 pixels of 0.661468 mm
F = 128 / 16                 # resize factor to the model's 16 x 16



@pytest.fixture
def model(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """A 2-slice CT DICOM series (CT_small.dcm at z and z + 5 mm) and its sparse-view measurements."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    d = tmp_path_factory.mktemp("ct")
    (d / "series").mkdir()
    sources = []
    for k in range(2):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 5.0 * k]
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.save_as(d / "series" / f"s{k}.dcm")
        sources.append(ds)
    meas = d / "ct.npz"
    assert main(["simulate", "--task", "ct", "--views", "8", "--upsample", "1", "--size", "16",
                 "--input", str(d / "series"), "--out", str(meas)]) == 0
    return meas, sources


@pytest.fixture(scope="module")
def mri_meas(tmp_path_factory):
    from pydicom.data import get_testdata_file
    out = tmp_path_factory.mktemp("mri") / "mri.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--acceleration", "4", "--size", "16",
                 "--input", get_testdata_file("MR_small.dcm"), "--out", str(out)]) == 0
    return out


def recon(model, meas, out, *extra):
    return main(["reconstruct", "--checkpoint", model, "--measurements", str(meas), "--out", str(out),
                 "--steps", "2", "--no-progress", *extra])


def expected_position(src_ds) -> np.ndarray:
    """Centre of output pixel (0, 0): the input's first pixel corner + half an output pixel."""
    ipp = np.asarray([float(v) for v in src_ds.ImagePositionPatient])
    return ipp + (F - 1) / 2 * SPACING * np.array([1.0, 1.0, 0.0])   # identity orientation


# --- end to end -----------------------------------------------------------------------------------
def test_npy_nifti_png_round_trip_and_seed(model, ct_series, tmp_path):
    import nibabel as nib
    from PIL import Image
    meas, src = ct_series
    assert recon(model, meas, tmp_path / "a.npy", "--solver", "projection", "--seed", "3") == 0
    assert recon(model, meas, tmp_path / "b.npy", "--solver", "projection", "--seed", "3") == 0
    assert recon(model, meas, tmp_path / "c.npy", "--solver", "projection", "--seed", "4") == 0
    a = np.load(tmp_path / "a.npy")
    assert a.shape == (2, 16, 16) and a.dtype == np.float32
    assert np.array_equal(a, np.load(tmp_path / "b.npy"))            # same seed, same result
    assert not np.allclose(a, np.load(tmp_path / "c.npy"))
    assert recon(model, meas, tmp_path / "v.nii.gz", "--solver", "projection", "--seed", "3") == 0
    img = nib.load(tmp_path / "v.nii.gz")
    vol = img.get_fdata()
    assert vol.shape == (16, 16, 2)
    for k in range(2):   # HU; RAS storage: slice k = vol[::-1, ::-1, k].T (rows A->P, columns R->L)
        np.testing.assert_allclose(vol[::-1, ::-1, k].T, a[k] * 4224.0 - 1024.0, rtol=1e-5, atol=1e-2)
    # voxel (i, j, k) = pixel (row 15 - j, column 15 - i) of slice k, at the DICOM position (LPS -> RAS)
    for i, j, k in [(0, 0, 0), (3, 7, 1), (15, 15, 1)]:
        lps = expected_position(src[k]) + np.array([15 - i, 15 - j, 0]) * SPACING * F
        np.testing.assert_allclose(img.affine @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-3)
    assert recon(model, meas, tmp_path / "g.png", "--solver", "projection") == 0
    with Image.open(tmp_path / "g.png") as im:   # a grid of the two slices
        assert im.size == (2 * 18 + 2, 18 + 2)
    assert recon(model, meas, tmp_path / "one.png", "--solver", "projection", "--slices", "1") == 0
    with Image.open(tmp_path / "one.png") as im:
        assert im.size == (16, 16)


def test_dicom_output_keeps_geometry_and_writes_hu(model, ct_series, tmp_path):
    import pydicom
    from pydicom.pixels import apply_rescale
    meas, src = ct_series
    assert recon(model, meas, tmp_path / "r.npy", "--solver", "dds") == 0
    assert recon(model, meas, tmp_path / "r.dcm", "--solver", "dds") == 0
    x = np.load(tmp_path / "r.npy")
    full = load_measurements(meas)
    assert full.take(1).source["slices"] == full.source["slices"][1:2] and len(full.source["slices"]) == 2
    files = sorted((tmp_path / "r").iterdir())
    assert [f.name for f in files] == ["IM_0001.dcm", "IM_0002.dcm"]
    out = [pydicom.dcmread(f) for f in files]
    assert len({d.SeriesInstanceUID for d in out}) == 1 and out[0].SeriesInstanceUID != src[0].SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in out} | {d.SOPInstanceUID for d in src}) == 4
    for k, d in enumerate(out):
        for tag in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "Modality"):
            assert d[tag].value == src[k][tag].value, tag
        assert (d.Rows, d.Columns) == (16, 16)
        np.testing.assert_allclose([float(v) for v in d.PixelSpacing], [SPACING * F] * 2, rtol=1e-5)
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient],
                                   [float(v) for v in src[k].ImageOrientationPatient])
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient], expected_position(src[k]), atol=1e-3)
        assert float(d.SliceThickness) == float(src[k].SliceThickness)
        assert d.RescaleType == "HU" and d.SourceImageSequence[0].ReferencedSOPInstanceUID == src[k].SOPInstanceUID
        hu = apply_rescale(d.pixel_array, d)
        np.testing.assert_allclose(hu, x[k] * 4224.0 - 1024.0, atol=float(d.RescaleSlope) / 2 + 1e-3)
    # a single slice is a single file; the output folder of a rerun is replaced
    assert recon(model, meas, tmp_path / "s.dcm", "--solver", "dds", "--slices", "1") == 0
    one = pydicom.dcmread(tmp_path / "s.dcm")
    np.testing.assert_allclose([float(v) for v in one.ImagePositionPatient], expected_position(src[1]), atol=1e-3)
    assert recon(model, meas, tmp_path / "r.dcm", "--solver", "dds", "--seed", "1") == 2   # exists
    assert recon(model, meas, tmp_path / "r.dcm", "--solver", "dds", "--seed", "1", "--overwrite") == 0
    assert len(list((tmp_path / "r").iterdir())) == 2
    assert pydicom.dcmread(tmp_path / "r" / "IM_0001.dcm").SeriesInstanceUID != out[0].SeriesInstanceUID


def test_samples_write_mean_and_std(model, mri_meas, tmp_path, capsys):
    report = tmp_path / "run.json"
    assert recon(model, mri_meas, tmp_path / "m.npy", "--solver", "projection", "--samples", "3",
                 "--batch-size", "3", "--report", str(report)) == 0
    mean, std = np.load(tmp_path / "m.npy"), np.load(tmp_path / "m_std.npy")
    assert mean.shape == std.shape == (16, 16)
    assert (std >= 0).all() and std.max() > 0
    nfe = solvers.solver_config("projection", "mri", steps=2).nfe()
    text = capsys.readouterr().out
    assert f"NFE per slice: {3 * nfe} (3 x {nfe})" in text and "PSNR" in text and "SSIM" in text
    rec = json.loads(report.read_text())
    assert rec["nfe_per_slice"] == 3 * nfe and rec["samples"] == 3 and len(rec["metrics"]["psnr"]) == 1
    env = rec["environment"]
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__ and env["device"] == "cpu"
    ref = "reference mri/projection"
    assert env["scoreinv"] and rec["settings_origin"] == {"lam": ref, "snr": ref, "final_projection": "noise-free data",
                                                          "steps": "--steps"}
    assert "solver projection (steps 2," in text
    assert f"from {ref}: lam, snr; noise-free data: final_projection; --steps: steps" in text
    assert recon(model, mri_meas, tmp_path / "m.png", "--solver", "dds", "--samples", "2") == 0
    assert (tmp_path / "m_std.png").read_bytes()[:4] == b"\x89PNG"


def test_lambda_one_gives_data_consistency(model, mri_meas, ct_series, tmp_path):
    from scoreinv.physics.fourier_slice import fourier_from_parallel
    from scoreinv.physics.masks import make_mask
    from scoreinv.physics.measurements import save_measurements
    from scoreinv.physics.mri import CartesianMRI
    # exact consistency of a real image needs a mask symmetric under k -> -k: the reference's equispaced
    # rule on 16 columns (which `simulate` refuses, as it misses the centre; written here directly)
    op = CartesianMRI(make_mask("equispaced", (16, 16), 4))
    neg = (2 * 8 - torch.arange(16)) % 16
    assert torch.equal(op.mask.squeeze()[..., neg], op.mask.squeeze())
    truth = load_measurements(mri_meas).ground_truth
    sym = tmp_path / "sym.npz"
    save_measurements(sym, "mri", op, op.forward(truth), {"model": "none", "level": 0.0}, ground_truth=truth)
    m, mri_meas = load_measurements(sym), sym

    def residual(path):
        x = torch.from_numpy(np.load(path))[None, None]
        return float((op.forward(x) - m.y).abs().norm() / m.y.abs().norm())

    assert recon(model, mri_meas, tmp_path / "hard.npy", "--solver", "projection", "--set", "solver.lam=1") == 0
    assert residual(tmp_path / "hard.npy") < 1e-4   # float32 rounding of an untrained model's large values
    assert recon(model, mri_meas, tmp_path / "soft.npy", "--solver", "projection", "--set", "solver.lam=0.5",
                 "--set", "solver.final_projection=false") == 0
    assert residual(tmp_path / "soft.npy") > 1e-2
    # CT on the Fourier-slice decomposition: exact consistency with the converted data
    meas, _ = ct_series
    assert recon(model, meas, tmp_path / "ct.npy", "--solver", "projection", "--ct-operator", "fourier",
                 "--set", "solver.lambda=1") == 0
    mc = load_measurements(meas)
    fop, yf = fourier_from_parallel(mc.operator(), mc.y)
    yh = fop.hermitian_part(yf)
    x = torch.from_numpy(np.load(tmp_path / "ct.npy"))[:, None]
    assert float((fop.forward(x) - yh).abs().norm() / yh.abs().norm()) < 1e-4


def test_mar_per_slice_operator_with_samples(model, tmp_path):
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((2, 16, 16)))
    meas = tmp_path / "mar.npz"
    assert main(["simulate", "--task", "mar", "--input", str(tmp_path / "img.npy"), "--implants", "1",
                 "--out", str(meas)]) == 0
    assert recon(model, meas, tmp_path / "mar.npy", "--solver", "projection", "--samples", "2",
                 "--batch-size", "2") == 0
    assert np.load(tmp_path / "mar.npy").shape == np.load(tmp_path / "mar_std.npy").shape == (2, 16, 16)


# --- bad input: clear errors before any sampling ------------------------------------------------
@pytest.fixture
def no_sampling(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("sampling started")
    monkeypatch.setattr(solvers, "posterior", boom)
    monkeypatch.setattr(solvers, "solve", boom)


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d.update(changes)
    np.savez(dst, **d)


def test_bad_inputs_fail_before_sampling(model, mri_meas, tmp_path, capsys, no_sampling):
    from pydicom.data import get_testdata_file
    big = tmp_path / "big.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--size", "24", "--input", get_testdata_file("MR_small.dcm"),
                 "--out", str(big)]) == 0
    ck = read_checkpoint(f"{model}/checkpoints-meta/checkpoint.pt")
    del ck["ema"]
    torch.save(ck, tmp_path / "noema.pt")
    _rewrite(mri_meas, tmp_path / "v2.npz", format_version=np.array(2))
    with np.load(mri_meas) as z:
        y = z["measurements"].copy()
    y[0, 3, 3] = np.nan
    _rewrite(mri_meas, tmp_path / "nan.npz", measurements=y)
    (tmp_path / "other.yaml").write_text("solver: projection\ntask: ct\nparams: {snr: 0.2}\n")
    good = ["--checkpoint", model, "--measurements", str(mri_meas), "--solver", "projection"]
    cases = [
        (["--measurements", str(big)], "are 24x24, but the model (ct64) is a whole-image network"),
        (["--solver", "nope"], "unknown --solver 'nope'"),
        (["--set", "solver.lam=1.5"], "--set solver.lam = 1.5 is outside its valid range [0, 1]"),
        (["--set", "solver.snr=-0.1"], "--set solver.snr = -0.1 is outside"),
        (["--set", "solver.lam=abc"], "--set solver.lam = 'abc': expected a finite number"),
        (["--set", "solver.steps=2.5"], "--set solver.steps = 2.5: expected a positive integer"),
        (["--set", "solver.final_projection=maybe"], "expected true or false"),
        (["--set", "solver.bogus=1"], "unknown solver parameter"),
        (["--set", "solver.eta=0.5"], "not a parameter of projection"),
        (["--set", "dds.eta=0.5"], "'dds' is not a target here"),
        (["--set", "snr=0.2"], "expected TARGET.KEY=VALUE"),
        (["--steps", "0"], "--steps = 0: expected a positive integer"),
        (["--preset", "reference"], "give --solver"),
        (["--checkpoint", str(tmp_path / "noema.pt")], "EMA"),
        (["--measurements", str(tmp_path / "v2.npz")], "format version 2 is not supported"),
        (["--measurements", str(tmp_path / "nan.npz")], "NaN"),
        (["--out", str(tmp_path / "x.tiff")], ".npy, .png, .nii.gz, .nii, .dcm"),
        (["--samples", "0"], "--samples"),
        (["--slices", "5"], "holds 1 slice"),
        (["--ct-operator", "fourier"], "--ct-operator applies to parallel-beam CT"),
        (["--preset", str(tmp_path / "other.yaml")], "tuned for task 'ct'"),
        (["--preset", str(tmp_path / "missing.yaml")], "no such file"),
    ]
    for extra, msg in cases:
        args = dict(zip(good[::2], good[1::2]))
        if extra[:2] == ["--preset", "reference"]:
            del args["--solver"]
        args["--out"] = str(tmp_path / "out.npy")
        rest = []
        for i in range(0, len(extra), 2):
            if extra[i] in args:
                args[extra[i]] = extra[i + 1]
            else:
                rest += extra[i:i + 2]
        argv = ["reconstruct", *[t for kv in args.items() for t in kv], *rest, "--no-progress"]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert msg in err, (extra, err)
    assert not (tmp_path / "out.npy").exists()


def test_malformed_source_record_fails_before_sampling(model, mri_meas, tmp_path, capsys, no_sampling):
    _rewrite(mri_meas, tmp_path / "src.npz", source=np.array(json.dumps({"intensity": {"offset": "x"}})))
    assert main(["reconstruct", "--checkpoint", model, "--measurements", str(tmp_path / "src.npz"), "--out",
                 str(tmp_path / "o.npy"), "--solver", "dds", "--no-progress"]) == 2
    assert "malformed 'source' record" in capsys.readouterr().err


def test_nifti_of_unevenly_spaced_slices_is_refused_before_sampling(model, tmp_path, capsys, no_sampling):
    """One NIfTI affine has one slice step: slices 0, 1, 3 of a series (or a series with a gap) would put
    the middle slice in the wrong place; DICOM output keeps each slice's own position."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    (tmp_path / "series").mkdir()
    for k, z in enumerate((0.0, 5.0, 10.0, 25.0)):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]), z]
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), k + 1
        ds.save_as(tmp_path / "series" / f"s{k}.dcm")
    meas = tmp_path / "ct4.npz"
    assert main(["simulate", "--task", "ct", "--views", "4", "--upsample", "1", "--size", "16",
                 "--input", str(tmp_path / "series"), "--out", str(meas)]) == 0
    for sl in ("0:4", "0,1,3"):    # a gap in the series; a selection with a gap
        assert recon(model, meas, tmp_path / "v.nii.gz", "--solver", "dds", "--slices", sl) == 2
        assert "not evenly spaced" in capsys.readouterr().err


def test_preset_file_and_overrides(model, mri_meas, tmp_path):
    p = tmp_path / "tuned.yaml"
    p.write_text("solver: projection\ntask: mri\nparams: {snr: 0.3, lam: 0.75}\n")
    pl = plan(model, str(mri_meas), str(tmp_path / "o.npy"), preset=str(p), sets=parse_sets(["solver.snr=0.2"]))
    assert pl.cfg.name == "projection" and pl.cfg.lam == 0.75 and pl.cfg.snr == 0.2
    assert pl.cfg.final_projection is True and pl.cfg.steps == 1000   # noise-free data; reference steps
    assert pl.settings.origin["lam"] == f"preset {p}" and pl.settings.origin["snr"] == "--set"
    with pytest.raises(ScoreinvError, match="differs from the preset"):
        plan(model, str(mri_meas), str(tmp_path / "o.npy"), solver="dds", preset=str(p))
    with pytest.raises(ScoreinvError, match="give --solver"):
        plan(model, str(mri_meas), str(tmp_path / "o.npy"))


def test_outputs_are_never_overwritten_by_surprise(model, mri_meas, ct_series, tmp_path, capsys, no_sampling):
    """An existing output, its _std map, a DICOM series folder or the --report file is refused
    without --overwrite, the measurement file itself always; all before any sampling."""
    meas, _ = ct_series
    (tmp_path / "r.npy").write_bytes(b"mine")
    (tmp_path / "m_std.png").write_bytes(b"mine")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM_0001.dcm").write_bytes(b"old")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "meas.npy").write_bytes(mri_meas.read_bytes())        # any name is read as measurements
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    cases = [
        (mri_meas, tmp_path / "r.npy", [], "r.npy: exists; pass --overwrite"),
        (mri_meas, tmp_path / "m.png", ["--samples", "2"], "m_std.png: exists; pass --overwrite"),
        (meas, tmp_path / "series.dcm", [], "the DICOM series folder"),
        (mri_meas, tmp_path / "new.npy", ["--report", str(tmp_path / "notes.json")], "--report"),
        (mri_meas, tmp_path / "new.npy", ["--report", str(tmp_path / "new.npy")], "is the input file"),
        (tmp_path / "meas.npy", tmp_path / "sub" / ".." / "meas.npy", ["--overwrite"], "is the input file"),
        (mri_meas, tmp_path / "new.npy", ["--report", str(mri_meas), "--overwrite"], "is the input file"),
        (mri_meas, tmp_path / "ro" / "x.npy", [], "cannot write in"),
    ]
    import os
    if os.geteuid() == 0:                    # root writes anywhere: no permission to refuse
        cases.pop()
    for m, out, extra, msg in cases:
        argv = ["reconstruct", "--checkpoint", model, "--measurements", str(m), "--out", str(out),
                "--solver", "dds", "--no-progress", *extra]
        assert main(argv) == 2, (out, extra)
        assert msg in capsys.readouterr().err, (out, extra)
    assert (tmp_path / "r.npy").read_bytes() == b"mine" and (tmp_path / "m_std.png").read_bytes() == b"mine"
    assert (tmp_path / "series" / "IM_0001.dcm").read_bytes() == b"old"
    assert (tmp_path / "notes.json").read_text() == "{}" and not (tmp_path / "new.npy").exists()
    assert (tmp_path / "meas.npy").read_bytes() == mri_meas.read_bytes()
    # --overwrite passes the check (sampling is what no_sampling stops) for files and earlier series
    for m, out in ((mri_meas, tmp_path / "r.npy"), (meas, tmp_path / "series.dcm")):
        with pytest.raises(AssertionError, match="sampling started"):
            main(["reconstruct", "--checkpoint", model, "--measurements", str(m), "--out", str(out),
                  "--solver", "dds", "--no-progress", "--overwrite"])
    # the other files the run reads, the checkpoint and a preset, are never replaced either
    ckpt = f"{model}/checkpoints-meta/checkpoint.pt"
    before = open(ckpt, "rb").read()
    (tmp_path / "p.yaml").write_text("solver: dds\ntask: mri\nparams: {eta: 0.5}\n")
    for extra in (["--solver", "dds", "--report", ckpt], ["--preset", str(tmp_path / "p.yaml"), "--report",
                                                          str(tmp_path / "p.yaml")]):
        assert main(["reconstruct", "--checkpoint", model, "--measurements", str(mri_meas), "--out",
                     str(tmp_path / "new.npy"), "--no-progress", "--overwrite", *extra]) == 2, extra
        assert "is the input file" in capsys.readouterr().err, extra
    assert open(ckpt, "rb").read() == before and "eta: 0.5" in (tmp_path / "p.yaml").read_text()
    (tmp_path / "series" / "notes.txt").write_text("user data")   # not an earlier output: never replaced
    assert main(["reconstruct", "--checkpoint", model, "--measurements", str(meas), "--out",
                 str(tmp_path / "series.dcm"), "--solver", "dds", "--overwrite"]) == 2
    assert "not an earlier DICOM output" in capsys.readouterr().err


# --- writers and the source record ----------------------------------------------------------------
def test_writers_formats_and_folders(tmp_path):
    with pytest.raises(ScoreinvError, match="unknown format"):
        writers.output_format(tmp_path / "x.jpg")
    assert writers.std_path("a/recon.nii.gz") == "a/recon_std.nii.gz"
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("user data")
    with pytest.raises(ScoreinvError, match="not an earlier DICOM output"):
        writers.check_output(tmp_path / "keep.dcm", 3)
    with pytest.raises(ScoreinvError, match="not an earlier DICOM output"):
        writers.write_volume(tmp_path / "keep.dcm", np.zeros((2, 4, 4)), source_record.OutputMeta())
    assert (tmp_path / "keep" / "notes.txt").exists()
    with pytest.raises(ScoreinvError, match="finite"):
        writers.write_volume(tmp_path / "n.npy", np.full((4, 4), np.nan))
    # MRI without a source record: [0, 1] values, 12-bit storage, MR modality
    import pydicom
    from pydicom.pixels import apply_rescale
    x = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    meta = source_record.meta_from_source(None, "mri", 1, pixel_size=0.5)
    writers.write_volume(tmp_path / "m.dcm", x, meta)
    d = pydicom.dcmread(tmp_path / "m.dcm")
    assert d.Modality == "MR" and [float(v) for v in d.PixelSpacing] == [0.5, 0.5]
    np.testing.assert_allclose(apply_rescale(d.pixel_array, d), x[0], atol=float(d.RescaleSlope) / 2 + 1e-7)


def test_source_record_follows_padding_and_resize():
    """The centre of the image stays where it was after padding 10x16 -> 16x16 and resizing to 8x8."""
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [10.0, 20.0, 30.0], [0, 1, 0, 0, 0, -1]
    ds.PixelSpacing, ds.SliceThickness, ds.PatientID = [0.5, 0.25], 2.0, "p1"
    arr = np.random.default_rng(1).random((1, 10, 16)) * 1000
    src = source_record.describe_source("x.dcm", arr, True, "auto", 8, True, [ds])
    assert src["units"] == "HU" and src["intensity"] == {"mode": "hu", "offset": -1024.0, "scale": 4224.0}
    e_row, e_col = np.array([0, 1, 0.0]), np.array([0, 0, -1.0])
    centre_in = np.array([10.0, 20, 30]) + 7.5 * 0.25 * e_row + 4.5 * 0.5 * e_col
    d, s = src["dicom"], src["slices"][0]
    dr, dc = d["PixelSpacing"]
    assert (dr, dc) == (0.5 * 2, 0.25 * 2) and (d["Rows"], d["Columns"]) == (8, 8)
    centre_out = np.asarray(s["ImagePositionPatient"]) + 3.5 * dc * e_row + 3.5 * dr * e_col
    np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)
    assert json.loads(json.dumps(src)) == src


def test_files_without_source_record_still_work(model, mri_meas, tmp_path):
    with np.load(mri_meas, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files if k != "source"}
    np.savez(tmp_path / "old.npz", **d)
    assert load_measurements(tmp_path / "old.npz").source is None
    assert load_measurements(mri_meas).source["dicom"]["PatientID"] == "4MR1"
    assert recon(model, tmp_path / "old.npz", tmp_path / "o.nii.gz", "--solver", "dds") == 0


def test_nifti_input_affine_is_carried_to_nifti_output(model, tmp_path):
    """A reconstruction of a NIfTI volume overlays it: the output affine is the input's (16 x 16
    slices, no resize), for an oblique, anisotropic affine with an sform code of 1 (scanner)."""
    import nibabel as nib
    rng = np.random.default_rng(0)
    c, s = np.cos(0.3), np.sin(0.3)
    a = np.array([[0.7 * c, -0.8 * s, 0.0, -40.0], [0.7 * s, 0.8 * c, 0.0, 25.0], [0.0, 0.0, 2.5, -12.0],
                  [0, 0, 0, 1]])
    img = nib.Nifti1Image((rng.random((16, 16, 3)) * 100).astype(np.float32), a)
    img.set_sform(a, code=1)
    nib.save(img, tmp_path / "in.nii.gz")
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--acceleration", "2", "--input", str(tmp_path / "in.nii.gz"),
                 "--out", str(meas)]) == 0
    assert recon(model, meas, tmp_path / "out.nii.gz", "--solver", "dds") == 0
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out.affine, a, atol=1e-5)
    assert int(out.get_sform(coded=True)[1]) == 1
    # a 32 x 32 volume resized to 16: the voxels double in plane and the volume's centre stays put
    big = nib.Nifti1Image((rng.random((32, 32, 2)) * 100).astype(np.float32), a)
    nib.save(big, tmp_path / "big.nii.gz")
    assert main(["simulate", "--task", "mri", "--mask", "random", "--acceleration", "2", "--size", "16", "--input",
                 str(tmp_path / "big.nii.gz"), "--out", str(tmp_path / "m2.npz")]) == 0
    src = load_measurements(tmp_path / "m2.npz").source
    assert src["format"] == "nifti" and "geometry" in src and "dicom" not in src
    assert recon(model, tmp_path / "m2.npz", tmp_path / "out2.nii.gz", "--solver", "dds") == 0
    out2 = nib.load(tmp_path / "out2.nii.gz").affine
    for k in range(2):
        np.testing.assert_allclose(out2 @ [7.5, 7.5, k, 1], a @ [15.5, 15.5, k, 1], atol=1e-4)
    np.testing.assert_allclose(out2[:3, :2], 2 * a[:3, :2], atol=1e-6)


def test_single_slice_nifti_keeps_its_slice_axis(model, tmp_path):
    """One slice has no neighbour to give the slice step: it comes from the input affine, so the
    third column (sign included) survives, as do a degenerate affine's refusal."""
    import nibabel as nib
    a = np.diag([0.9, 0.9, 2.5, 1.0])
    a[:3, 3] = [10.0, -20.0, 30.0]
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((16, 16)).astype(np.float32), a),
             tmp_path / "one.nii.gz")
    meas = tmp_path / "one.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--acceleration", "2", "--input", str(tmp_path / "one.nii.gz"),
                 "--out", str(meas)]) == 0
    assert recon(model, meas, tmp_path / "out.nii.gz", "--solver", "dds") == 0
    np.testing.assert_allclose(nib.load(tmp_path / "out.nii.gz").affine, a, atol=1e-5)
    bad = a.copy()
    bad[:, 0] = 0
    bad[3, 3] = 1
    img = nib.Nifti1Image(np.ones((16, 16, 1), np.float32), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(bad, code=1)                 # nibabel will not decompose it into a qform
    nib.save(img, tmp_path / "bad.nii.gz")
    with pytest.raises(ScoreinvError, match="zero-length"):
        source_record.describe_source(str(tmp_path / "bad.nii.gz"), np.ones((1, 16, 16)), False, "auto", None,
                                      False)


def test_noise_level_and_warm_start_come_from_the_file(model, tmp_path, monkeypatch, capsys):
    """ddrm reads σ_y from the file's noise record (per slice, the selected ones), a warm start gets the
    classical reconstruction of the file's data; ddrm on a CT sinogram (radon) is refused before sampling."""
    from pydicom.data import get_testdata_file

    from scoreinv.physics.measurements import load_measurements
    from scoreinv.sampling.inputs import classical
    meas = tmp_path / "noisy.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--acceleration", "4", "--size", "16", "--noise", "0.05",
                 "--input", get_testdata_file("MR_small.dcm"), "--out", str(meas)]) == 0
    seen = {}
    real = solvers.posterior

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)
    monkeypatch.setattr(solvers, "posterior", spy)
    assert recon(model, meas, tmp_path / "r.npy", "--solver", "ddrm", "--set", "solver.warm_start=classical",
                 "--set", "solver.warm_sigma=3") == 0
    m = load_measurements(meas)
    assert seen["sigma_y"].tolist() == pytest.approx(m.noise["sigma"])
    assert torch.allclose(seen["x_init"], classical(m.operator(), m.y), atol=1e-6)
    assert "estimate: sample" in capsys.readouterr().out
    assert recon(model, meas, tmp_path / "s.npy", "--solver", "diffpir", "--set", "solver.sigma_end=0.3",
                 "--samples", "2") == 0
    assert "estimate: mean-of-2 tweedie@0.3" in capsys.readouterr().out


def test_ddrm_on_a_ct_sinogram_is_refused_before_sampling(model, ct_series, tmp_path, capsys, no_sampling):
    meas, _ = ct_series
    assert recon(model, meas, tmp_path / "r.npy", "--solver", "ddrm", "--ct-operator", "radon") == 2
    assert "solver ddrm needs an operator with the A = P(Λ)T decomposition" in capsys.readouterr().err
    assert recon(model, meas, tmp_path / "r.npy", "--solver", "dds", "--set", "solver.warm_start=classical",
                 "--set", "solver.warm_sigma=50") == 2
    assert "warm_sigma = 50" in capsys.readouterr().err
