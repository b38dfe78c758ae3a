"""`scoreinv simulate` end to end through scoreinv.cli.main on small images."""
import numpy as np
import pytest
import torch

from scoreinv.cli import main
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.measurements import load_measurements

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _phantom(n=32):
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    img = 0.2 * ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1)
    img += 0.3 * ((xx - 0.2) ** 2 + yy ** 2 < 0.08) + 0.1 * np.sin(5 * xx) * (img > 0)
    return img


@pytest.fixture
def npy(tmp_path):
    p = tmp_path / "img.npy"
    np.save(p, _phantom())
    return p


def test_ct_sparse_view_noisy_and_show(tmp_path, npy):
    out = tmp_path / "ct.npz"
    assert main(["simulate", "--task", "ct", "--views", "8", "--upsample", "2", "--input", str(npy),
                 "--out", str(out)]) == 0
    m = load_measurements(out)
    op = m.operator()
    assert isinstance(op, ParallelBeamCT) and m.y.shape == (1, 8, op.geometry.n_det)
    x = m.ground_truth
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)  # min-max scaled
    # no inverse crime: the data come from a finer grid, close to but not equal to A x
    rel = float((m.y - op.forward(x)).norm() / m.y.norm())
    assert 1e-4 < rel < 0.05, rel
    noisy = tmp_path / "ctn.npz"
    assert main(["simulate", "--task", "ct", "--views", "8", "--upsample", "2", "--noise", "1e4", "--input",
                 str(npy), "--out", str(noisy)]) == 0
    mn = load_measurements(noisy)
    assert mn.noise["model"] == "poisson" and mn.noise["photons"] == 1e4
    assert not torch.allclose(mn.y, m.y)
    assert float((mn.y - m.y).norm() / m.y.norm()) < 0.2
    fig = tmp_path / "ct.png"
    assert main(["simulate", "--show", str(out), "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == PNG_MAGIC


def test_mri_png_input_noise_and_show(tmp_path):
    from PIL import Image
    png = tmp_path / "img.png"
    Image.fromarray((_phantom(24) / _phantom(24).max() * 255).astype(np.uint8)).save(png)
    out = tmp_path / "mri.npz"
    # the reference's equispaced rule keeps no centre line on 24 columns at 4x: refused, nothing written
    assert main(["simulate", "--task", "mri", "--acceleration", "4", "--mask", "equispaced", "--input", str(png),
                 "--out", str(out)]) == 2 and not out.exists()
    assert main(["simulate", "--task", "mri", "--acceleration", "4", "--mask", "random", "--noise", "0.05",
                 "--input", str(png), "--out", str(out), "--seed", "3"]) == 0
    m = load_measurements(out)
    op = m.operator()
    assert m.y.shape == (1, 24, 24) and m.y.is_complex()
    assert int(op.mask[0].sum()) == 6 and bool(op.mask[:, 12].all())  # round(24 / 4) columns, the centre among them
    clean = op.forward(m.ground_truth)
    sig = m.noise["sigma"][0]
    resid = (m.y - clean)[:, op.mask]
    assert float(resid.abs().pow(2).mean().sqrt()) == pytest.approx(sig, rel=0.25)
    assert bool((m.y[:, ~op.mask] == 0).all())
    fig = tmp_path / "mri.png"
    assert main(["simulate", "--show", str(out), "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == PNG_MAGIC


def test_mri_sense_nifti_volume(tmp_path):
    import nibabel as nib
    vol = np.stack([_phantom(16) * (k + 1) for k in range(3)], -1)
    p = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(p))
    out = tmp_path / "sense.npz"
    assert main(["simulate", "--task", "mri", "--coils", "4", "--mask", "radial", "--acceleration", "2",
                 "--input", str(p), "--out", str(out)]) == 0
    m = load_measurements(out)
    assert m.y.shape == (3, 4, 16, 16) and m.ground_truth.shape == (3, 1, 16, 16)
    assert torch.allclose(m.operator().forward(m.ground_truth), m.y, atol=1e-5)
    assert float(m.ground_truth.max()) == pytest.approx(1.0)  # min-max over the whole volume
    assert float(m.ground_truth[0].max()) == pytest.approx(1 / 3, rel=1e-3)


def test_mar_dicom_hu_and_show(tmp_path):
    from pydicom.data import get_testdata_file
    dcm = get_testdata_file("CT_small.dcm")
    out = tmp_path / "mar.npz"
    assert main(["simulate", "--task", "mar", "--input", dcm, "--size", "32", "--implants", "1", "--out",
                 str(out)]) == 0
    m = load_measurements(out)
    op = m.operator()
    gt = m.ground_truth
    # DICOM CT: HU window [-1024, 3200] -> [0, 1]; this slice spans about -900..1200 HU
    assert 0.02 < float(gt.min()) < 0.1 and 0.4 < float(gt.max()) < 0.55
    assert {"artifact_image", "li_image", "metal_mask", "metal_trace", "sinogram"} <= set(m.extras)
    keep = torch.as_tensor(~m.extras["metal_trace"])
    assert torch.equal(op.keep, keep)
    assert bool((m.y[~keep] == 0).all())
    fig = tmp_path / "mar.png"
    assert main(["simulate", "--show", str(out), "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == PNG_MAGIC


def test_cli_errors(tmp_path, npy, capsys):
    assert main(["simulate", "--task", "ct", "--out", str(tmp_path / "a.npz")]) == 2
    assert "--input" in capsys.readouterr().err
    bad = tmp_path / "img.xyz"
    bad.write_text("hello")
    assert main(["simulate", "--task", "mri", "--input", str(bad), "--out", str(tmp_path / "a.npz")]) == 2
    assert "unsupported file type" in capsys.readouterr().err
    assert main(["simulate", "--task", "mri", "--input", str(tmp_path / "none.npy"), "--out",
                 str(tmp_path / "a.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 truncated")
    assert main(["simulate", "--show", str(junk), "--out", str(tmp_path / "f.png")]) == 2
    assert "junk.npz" in capsys.readouterr().err
    np.save(tmp_path / "flat.npy", np.ones((8, 8)))
    assert main(["simulate", "--task", "mri", "--input", str(tmp_path / "flat.npy"), "--out",
                 str(tmp_path / "a.npz")]) == 2
    assert "constant" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects unknown mask kinds
        main(["simulate", "--task", "mri", "--mask", "spiral", "--input", str(npy), "--out", str(tmp_path / "a.npz")])
    assert main(["simulate", "--task", "mri", "--coils", "0", "--input", str(npy), "--out",
                 str(tmp_path / "a.npz")]) == 2
    assert "--coils" in capsys.readouterr().err
    assert not (tmp_path / "a.npz").exists()


def test_ct_pads_non_square_input(tmp_path):
    np.save(tmp_path / "rect.npy", np.random.default_rng(0).random((8, 12)))
    out = tmp_path / "r.npz"
    assert main(["simulate", "--task", "ct", "--upsample", "1", "--input", str(tmp_path / "rect.npy"),
                 "--out", str(out)]) == 0
    m = load_measurements(out)
    assert m.image_size == (12, 12)
    assert torch.all(m.ground_truth[0, 0, :2] == m.ground_truth.min())  # padded rows
    assert torch.allclose(m.operator().forward(m.ground_truth), m.y, atol=1e-5)  # upsample 1: same grid


def test_project_fine_chunks_agree_and_upsample_one_is_exact():
    from scoreinv.tasks import project_fine
    from scoreinv.physics.geometry import ParallelGeometry, dense_angles
    g = ParallelGeometry(12, dense_angles(9), pixel_size=1.5)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    one = project_fine(g, x, 2)
    many = project_fine(g, x, 2, max_nnz=1000)  # several view chunks
    assert torch.allclose(one, many, atol=1e-5)
    # a piecewise-constant (nearest) upsampling would reproduce A x exactly; bicubic differs a little
    ax = ParallelBeamCT(g).forward(x)
    rel = float((one - ax).norm() / ax.norm())
    assert 1e-4 < rel < 0.05


def test_fan_beam_roundtrip(tmp_path):
    np.save(tmp_path / "p.npy", _phantom(16))
    out = tmp_path / "fan.npz"
    assert main(["simulate", "--task", "ct", "--fan", "--views", "12", "--upsample", "1", "--input",
                 str(tmp_path / "p.npy"), "--out", str(out)]) == 0
    m = load_measurements(out)
    op = m.operator()
    assert type(op).__name__ == "FanBeamCT" and op.geometry.n_views == 12
    assert np.allclose(np.diff(op.geometry.angles), 2 * np.pi / 12)  # evenly spaced over 360 degrees
    assert torch.allclose(op.forward(m.ground_truth), m.y, atol=1e-5)


def test_mar_volume_take_and_show_slice(tmp_path, capsys):
    vol = np.stack([_phantom(24), _phantom(24)[::-1].copy()])
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "mar.npz"
    assert main(["simulate", "--task", "mar", "--views", "8", "--input", str(tmp_path / "v.npy"), "--out",
                 str(out), "--seed", "2"]) == 0
    m = load_measurements(out)
    assert m.arrays["keep"].shape == (2, 24, m.y.shape[-1])
    one = m.take(1)
    assert len(one) == 1 and one.extras["metal_mask"].shape == (1, 1, 24, 24)
    op = one.operator()
    assert torch.equal(op.keep, torch.as_tensor(m.arrays["keep"][1:2]))
    assert int(op.keep.any(-1).sum()) <= 8  # sparse-view MAR: only measured views kept
    assert main(["simulate", "--show", str(out), "--slice", "1", "--out", str(tmp_path / "f.png")]) == 0
    assert main(["simulate", "--show", str(out), "--slice", "2", "--out", str(tmp_path / "g.png")]) == 2
    assert "holds 2 slice" in capsys.readouterr().err


def test_nifti_slice_reads_like_a_volume_of_one(tmp_path, capsys):
    """A 2-D NIfTI slice gets the same in-plane layout as each slice of a 3-D volume: rows
    anterior -> posterior, columns patient right -> left (scoreinv.data.orientation)."""
    import nibabel as nib

    from scoreinv.data.readers import read_volume
    a = np.random.default_rng(3).random((16, 12)).astype(np.float32)           # (x, y) RAS
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "slice.nii.gz"))
    nib.save(nib.Nifti1Image(a[..., None], np.eye(4)), str(tmp_path / "vol.nii.gz"))
    two = read_volume(tmp_path / "slice.nii.gz").data
    three = read_volume(tmp_path / "vol.nii.gz").data
    assert two.shape == (1, 12, 16) and np.array_equal(two, three)
    assert np.array_equal(two[0], a.T[::-1, ::-1])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "series.nii.gz"))
    assert main(["simulate", "--task", "mri", "--input", str(tmp_path / "series.nii.gz"), "--out",
                 str(tmp_path / "m.npz")]) == 2
    assert "series.nii.gz" in (err := capsys.readouterr().err) and "3-D" in err and "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()
