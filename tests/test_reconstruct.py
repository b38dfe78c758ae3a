"""`scoreinv reconstruct` end to end (tiny 16x16 model trained 1 step): outputs, samples, presets, geometry."""
import json

import numpy as np
import pytest
import torch
from recon_cases import SPACING, F, expected_position, recon

from scoreinv import source_record
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.physics.measurements import load_measurements
from scoreinv.reconstruct import plan
from scoreinv.sampling import solvers
from scoreinv.sampling.settings import parse_sets


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
