"""One orientation convention (scoreinv.data.orientation): the same anatomy stored as RAS NIfTI,
LPS NIfTI, permuted NIfTI and DICOM in several ImageOrientationPatient reads to the same array;
`simulate` and the folder datasets read alike; the NIfTI inverse round-trips."""
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_factory import enhanced_ct, save, slice_ds

from scoreinv.cli import main
from scoreinv.data import build_dataset, orientation
from scoreinv.data.readers import read_volume
from scoreinv.physics.measurements import load_measurements
from scoreinv.source_record import describe_source

D, H, W = 3, 5, 4
# the anatomy in the display layout: V[k, r, c] lies at LPS (c, r, k) mm (column -> patient left,
# row -> posterior, slice -> superior); every value differs, so any flip or transpose shows
V = (np.arange(D * H * W).reshape(D, H, W) * 7 % 61 + 100).astype(np.float32)
# voxel (k, r, c) -> RAS (-c, -r, k)
A_DISPLAY = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def nifti(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, float)), str(path))
    return path


def dicom_series(folder, iop, stored_of, ipp_of):
    """One file per slice k: stored values stored_of(V[k]) (uint16, intercept 0), position ipp_of(k)."""
    uid = pydicom.uid.generate_uid()
    for n, k in enumerate([1, 2, 0]):                        # file order shuffled
        s = stored_of(V[k]).astype(np.uint16)
        save(slice_ds(s, iop=iop, ipp=ipp_of(k), intercept=0.0, modality="MR", series=uid), folder / f"{n}.dcm")
    return folder


def stores(tmp_path):
    """The anatomy V in seven storage layouts."""
    xyz = V.transpose(2, 1, 0)                               # (c, r, k): LPS voxel order
    yield "nifti RAS", nifti(tmp_path / "ras.nii.gz", xyz[::-1, ::-1, :],
                             [[1, 0, 0, -(W - 1)], [0, 1, 0, -(H - 1)], [0, 0, 1, 0], [0, 0, 0, 1]])
    yield "nifti LPS", nifti(tmp_path / "lps.nii.gz", xyz, np.diag([-1.0, -1, 1, 1]))
    yield "nifti (k, r, c)", nifti(tmp_path / "krc.nii", V, A_DISPLAY)
    yield "dicom axial", dicom_series(tmp_path / "ax", (1, 0, 0, 0, 1, 0), lambda s: s, lambda k: (0, 0, k))
    yield "dicom rotated 180", dicom_series(tmp_path / "rot", (-1, 0, 0, 0, -1, 0), lambda s: s[::-1, ::-1],
                                            lambda k: (W - 1, H - 1, k))
    yield "dicom transposed", dicom_series(tmp_path / "tr", (0, 1, 0, 1, 0, 0), lambda s: s.T, lambda k: (0, 0, k))
    yield "dicom normal down", dicom_series(tmp_path / "dn", (1, 0, 0, 0, -1, 0), lambda s: s[::-1],
                                            lambda k: (0, H - 1, k))
    yield "dicom enhanced", save(enhanced_ct(V[[2, 0, 1]], [(0, 0, 2), (0, 0, 0), (0, 0, 1)], [(1.0, 0.0)] * 3),
                                 tmp_path / "enh.dcm")


def test_every_storage_reads_to_the_same_anatomy(tmp_path):
    for name, path in stores(tmp_path):
        vol = read_volume(path)
        np.testing.assert_array_equal(vol.data, V, err_msg=name)
        np.testing.assert_allclose(vol.meta["affine"], A_DISPLAY, atol=1e-9, err_msg=name)
        assert vol.meta["spacing"] == pytest.approx((1.0, 1.0, 1.0)), name
        if vol.meta["kind"] == "dicom":                      # exact positions of each slice's first pixel
            np.testing.assert_allclose(vol.meta["positions"], [[0, 0, k] for k in range(D)], err_msg=name)


@pytest.mark.parametrize("iop, flip", [((1, 0, 0, 0, 0, -1), False), ((-1, 0, 0, 0, 0, 1), True),
                                       ((0, 1, 0, 0, 0, -1), False), ((0, -1, 0, 0, 0, -1), None)])
def test_one_non_axial_slice_stays_a_slice_shown_as_a_viewer_does(tmp_path, iop, flip):
    """Coronal: superior at the top, patient right on the left; sagittal: superior at the top,
    anterior on the left. A flipped orientation reads to the standard one."""
    p = V[0].astype(np.uint16)
    save(slice_ds(p, iop=iop, intercept=0.0, modality="MR"), tmp_path / "one.dcm")
    got = read_volume(tmp_path / "one.dcm").data
    assert got.shape == (1, H, W)
    want = {False: p, True: p[::-1, ::-1], None: p[:, ::-1]}[flip]
    np.testing.assert_array_equal(got[0], want.astype(np.float32))


def test_simulate_reads_like_the_folder_dataset(tmp_path):
    """`scoreinv simulate` and `--data FOLDER` give identical images for the same file."""
    rng = np.random.default_rng(0)
    vol = (rng.random((16, 16, 3)) * 50 + np.arange(16)[:, None, None] * 10).astype(np.float32)
    nifti(tmp_path / "n" / "v.nii.gz", vol, np.diag([-1.2, -1.2, 3.0, 1.0]))      # LPS storage
    assert main(["simulate", "--task", "mri", "--mask", "random", "--input", str(tmp_path / "n" / "v.nii.gz"), "--out",
                 str(tmp_path / "m.npz")]) == 0
    gt = load_measurements(tmp_path / "m.npz").ground_truth
    ds = build_dataset(tmp_path / "n", "all", 16, normalize="minmax")
    assert torch.equal(gt, torch.stack([ds[i] for i in range(len(ds))]))
    # a DICOM CT series: HU window in both
    uid = pydicom.uid.generate_uid()
    for k in range(2):
        s = rng.integers(0, 2500, (16, 16)).astype(np.uint16)
        save(slice_ds(s, iop=(-1, 0, 0, 0, -1, 0), ipp=(15, 15, k), series=uid), tmp_path / "ct" / f"{k}.dcm")
    assert main(["simulate", "--task", "ct", "--views", "4", "--upsample", "1", "--input", str(tmp_path / "ct"),
                 "--out", str(tmp_path / "c.npz")]) == 0
    gt = load_measurements(tmp_path / "c.npz").ground_truth
    ds = build_dataset(tmp_path / "ct", "all", 16)
    assert torch.equal(gt, torch.stack([ds[i] for i in range(len(ds))]))


def test_nifti_inverse_round_trips(tmp_path):
    """display_to_nifti undoes the reading: a canonically stored file comes back as it was; any
    other storage comes back canonical with every voxel at the same place."""
    for name, path in stores(tmp_path):
        if not name.startswith("nifti"):
            continue
        vol = read_volume(path)
        img = orientation.display_to_nifti(vol.data, vol.meta["affine"])
        orig = nib.load(str(path))
        if name == "nifti RAS":
            np.testing.assert_array_equal(np.asarray(img.dataobj), orig.get_fdata())
            np.testing.assert_allclose(img.affine, orig.affine, atol=1e-9)
        # world position -> value agrees voxel by voxel
        data, a = np.asarray(img.dataobj), img.affine
        back = np.linalg.inv(orig.affine)
        odata = orig.get_fdata()
        for idx in np.ndindex(*data.shape):
            j = np.rint(back @ a @ [*idx, 1])[:3].astype(int)
            assert data[idx] == odata[tuple(j)], name


def test_source_record_geometry_is_the_reader_affine(tmp_path):
    """Pixel (r, c) of slice k lies at IPP_k + c Δc e_row + r Δr e_col = L A (k, r, c) for the
    recorded geometry, whatever the stored orientation."""
    for name, path in stores(tmp_path):
        vol = read_volume(path)
        src = describe_source(str(path), vol.data, False, "minmax", None, False, vol.meta.get("headers"),
                              affine=vol.meta["affine"], positions=vol.meta.get("positions"), kind=vol.meta["kind"])
        geo = src.get("dicom") or src["geometry"]
        dr, dc = geo["PixelSpacing"]
        e_row, e_col = np.asarray(geo["ImageOrientationPatient"][:3]), np.asarray(geo["ImageOrientationPatient"][3:])
        for k, r, c in [(0, 0, 0), (2, 4, 3), (1, 2, 1)]:
            ipp = np.asarray(src["slices"][k]["ImagePositionPatient"])
            lps = (orientation.LPS @ A_DISPLAY @ [k, r, c, 1])[:3]
            np.testing.assert_allclose(ipp + c * dc * e_row + r * dr * e_col, lps, atol=1e-9, err_msg=name)
