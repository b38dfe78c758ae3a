"""File readers: DICOM series, NIfTI, NRRD, fastMRI HDF5, PNG, NumPy; damaged files raise clearly."""
import numpy as np
import pytest

from scoreinv.data.folder import scan
from scoreinv.data.readers import read_volume
from scoreinv.errors import ScoreinvError


# --- writers shared with test_data_folder.py ---------------------------------------------
def write_dicom_series(folder, n=4, slope=2.0, intercept=-1024.0, rows=16, cols=12, patient="P1",
                       modality="CT", shapes=None, uid=None, spacing=(0.7, 0.7), seed=0):
    """Write n slices in shuffled file order; return the expected (n, rows, cols) volume,
    ordered by position (inferior -> superior)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    vols = {}
    sop = CTImageStorage if modality == "CT" else MRImageStorage
    for fi, i in enumerate(order):
        r, c = shapes[i] if shapes else (rows, cols)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.PatientID = modality, uid, patient
        ds.InstanceNumber = int(n - i)                          # deliberately opposite to the position
        ds.ImagePositionPatient = [0.0, 0.0, float(-20 + 2.5 * i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = list(spacing), 2.5
        ds.Rows, ds.Columns = r, c
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        raw = rng.integers(0, 3000, size=(r, c)).astype(np.uint16)
        ds.PixelData = raw.tobytes()
        ds.save_as(folder / f"s{uid[-6:]}_{fi:03d}.dcm", enforce_file_format=True)
        vols[i] = raw.astype(np.float64) * slope + intercept
    if shapes:
        return None
    return np.stack([vols[i] for i in range(n)])


def write_nifti(path, data, zooms=(1.0, 1.0, 1.0), flip_x=False):
    import nibabel as nib

    aff = np.diag([*zooms, 1.0])
    if flip_x:
        aff[0, 0] = -zooms[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), aff), str(path))


def fft2c(x):
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax)


def truncate(path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[:int(len(b) * keep)])


# --- DICOM ---------------------------------------------------------------------------------
def test_dicom_series_hu_order_and_spacing(tmp_path):
    expected = write_dicom_series(tmp_path / "ct", n=5, slope=2.0, intercept=-1024.0)
    vol = read_volume(tmp_path / "ct")
    assert vol.data.shape == (5, 16, 12) and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, expected.astype(np.float32))   # HU, sorted by position
    assert vol.meta["hu"] is True and vol.meta["modality"] == "CT"
    assert vol.meta["spacing"] == pytest.approx((2.5, 0.7, 0.7))


def test_dicom_mr_is_not_hu_and_series_are_split(tmp_path):
    write_dicom_series(tmp_path / "a", n=3, modality="MR", slope=1.0, intercept=0.0)
    write_dicom_series(tmp_path / "a", n=2, rows=8, cols=8, seed=1)          # second series, same folder
    refs, skipped = scan(tmp_path)
    assert sorted(r.shape for r in refs) == [(2, 8, 8), (3, 16, 12)] and not skipped
    mr = [r for r in refs if r.shape[0] == 3][0]
    assert mr.hu is False and mr.info["modality"] == "MR"


def test_dicom_without_image_is_skipped(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    write_dicom_series(tmp_path / "p", n=2)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.Modality = meta, BasicTextSRStorage, "SR"
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "p" / "report", enforce_file_format=True)       # no suffix: found by its marker
    refs, skipped = scan(tmp_path)
    assert len(refs) == 1 and refs[0].shape == (2, 16, 12)
    assert [(s.path.name, s.reason) for s in skipped] == [("report", "DICOM object without an image")]
    with pytest.raises(ScoreinvError, match="without an image"):
        read_volume(tmp_path / "p" / "report")


def test_dicom_mixed_shapes_raise(tmp_path):
    write_dicom_series(tmp_path / "m", n=3, shapes=[(16, 12), (16, 12), (8, 8)])
    with pytest.raises(ScoreinvError, match="mixes slice shapes"):
        scan(tmp_path)


def test_dicom_truncated_raises_with_name(tmp_path):
    write_dicom_series(tmp_path / "t", n=2)
    bad = sorted((tmp_path / "t").glob("*.dcm"))[0]
    truncate(bad, 0.7)
    with pytest.raises(ScoreinvError, match=bad.name):
        read_volume(tmp_path / "t")


# --- NIfTI ---------------------------------------------------------------------------------
def test_nifti_layout_and_spacing(tmp_path):
    data = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)       # (x, y, z) RAS
    write_nifti(tmp_path / "v.nii.gz", data, zooms=(1.0, 1.5, 3.0))
    vol = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(vol.data, data.transpose(2, 1, 0)[:, ::-1, ::-1])
    assert vol.meta["spacing"] == pytest.approx((3.0, 1.5, 1.0))
    # a left-right flipped affine is reoriented to the same anatomy
    write_nifti(tmp_path / "f.nii", data[::-1], flip_x=True)
    np.testing.assert_array_equal(read_volume(tmp_path / "f.nii").data, data.transpose(2, 1, 0)[:, ::-1, ::-1])


def test_nifti_truncated_and_4d_raise(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    truncate(tmp_path / "v.nii.gz", 0.5)
    with pytest.raises(ScoreinvError, match="v.nii.gz"):
        read_volume(tmp_path / "v.nii.gz")
    write_nifti(tmp_path / "f.nii", np.zeros((4, 4, 4, 3)))
    with pytest.raises(ScoreinvError, match="3-D"):
        read_volume(tmp_path / "f.nii")



# --- NRRD ----------------------------------------------------------------------------------
# the anatomy in the display layout: V[k, r, c] lies at LPS (0.5 c, 0.7 r, 2 k) mm (column -> patient
# left, row -> posterior, slice -> superior); every value differs, so any flip or transpose shows
NV = (np.arange(3 * 5 * 4).reshape(3, 5, 4) * 7 % 61 + 100).astype(np.int16)
NSTEP = (2.0, 0.7, 0.5)                                  # (slice, row, column) mm


def write_nrrd(path, data, header):
    import nrrd

    nrrd.write(str(path), np.ascontiguousarray(data), {"encoding": "gzip", **header}, index_order="F")
    return path


def nrrd_stores(tmp_path):
    """NV stored as NRRD in several layouts and spaces (each file's axis i = array axis i)."""
    d, h, w = NV.shape
    k, r, c = NSTEP
    xyz = NV.transpose(2, 1, 0)                           # (c, r, k) in LPS
    yield "lps", write_nrrd(tmp_path / "lps.nrrd", xyz, {
        "space": "left-posterior-superior", "space directions": np.diag([c, r, k]), "space origin": np.zeros(3)})
    yield "ras", write_nrrd(tmp_path / "ras.nrrd", xyz[::-1, ::-1, :], {   # RAS x = -LPS x: columns reversed
        "space": "RAS", "space directions": np.diag([c, r, k]),
        "space origin": np.array([-(w - 1) * c, -(h - 1) * r, 0.0])})
    yield "las, rows stored anterior-first", write_nrrd(tmp_path / "las.nrrd", xyz[:, ::-1, :], {  # LAS y = -LPS y
        "space": "left-anterior-superior", "space directions": np.diag([c, r, k]),
        "space origin": np.array([0.0, -(h - 1) * r, 0.0])})
    yield "lps, negative row step", write_nrrd(tmp_path / "neg.nrrd", xyz[:, ::-1, :], {    # as pyradiomics' brains
        "space": "left-posterior-superior", "space directions": np.diag([c, -r, k]),
        "space origin": np.array([0.0, (h - 1) * r, 0.0])})
    yield "slices fastest", write_nrrd(tmp_path / "krc.nhdr", NV, {     # detached header + data
        "space": "LPS", "space directions": np.array([[0, 0, k], [0, r, 0], [c, 0, 0]]),
        "space origin": np.zeros(3), "kinds": ["domain"] * 3})


def test_nrrd_orientation_against_a_known_layout(tmp_path):
    want_affine = np.array([[0, 0, -NSTEP[2], 0], [0, -NSTEP[1], 0, 0], [NSTEP[0], 0, 0, 0], [0, 0, 0, 1]])
    for name, path in nrrd_stores(tmp_path):
        vol = read_volume(path)
        np.testing.assert_array_equal(vol.data, NV, err_msg=name)
        np.testing.assert_allclose(vol.meta["affine"], want_affine, atol=1e-9, err_msg=name)
        assert vol.meta["spacing"] == pytest.approx(NSTEP), name
        assert vol.meta["kind"] == "nrrd" and not vol.meta["hu"], name
    # no patient space: the stored layout, axis 3 -> slices, axis 2 -> rows, axis 1 -> columns
    write_nrrd(tmp_path / "plain.nrrd", NV.transpose(2, 1, 0)[:, ::-1], {"spacings": [0.5, 0.7, 2.0]})
    vol = read_volume(tmp_path / "plain.nrrd")
    np.testing.assert_array_equal(vol.data, NV[:, ::-1])
    assert vol.meta["affine"] is None and vol.meta["spacing"] == pytest.approx(NSTEP)
    # one slice with a space: shown as the viewer shows an axial slice
    write_nrrd(tmp_path / "one.nrrd", NV[1].T, {"space": "LPS", "space directions": np.diag([0.5, 0.7, 1.0])[:2],
                                                 "space origin": np.zeros(3)})
    np.testing.assert_array_equal(read_volume(tmp_path / "one.nrrd").data, NV[1:2])


def test_nrrd_in_folder_datasets_and_bad_files(tmp_path):
    from scoreinv.data import build_dataset

    (tmp_path / "p1").mkdir()
    write_nrrd(tmp_path / "p1" / "v.nrrd", NV.transpose(2, 1, 0), {
        "space": "LPS", "space directions": np.diag([0.5, 0.5, 2.0]), "space origin": np.zeros(3)})
    ds = build_dataset(tmp_path / "p1", "all", 8, normalize="minmax")
    assert len(ds) == 3 and ds.describe()["volumes"][0]["kind"] == "nrrd"
    write_nrrd(tmp_path / "rgb.nrrd", np.zeros((3, 4, 5), np.uint8) + np.arange(3)[:, None, None],
               {"kinds": ["RGB-color", "domain", "domain"]})
    with pytest.raises(ScoreinvError, match=r"rgb\.nrrd: NRRD image of sizes \[3, 4, 5\].*scalar"):
        read_volume(tmp_path / "rgb.nrrd")
    write_nrrd(tmp_path / "cut.nrrd", np.random.default_rng(0).integers(0, 999, (20, 20, 20)).astype(np.int16), {})
    truncate(tmp_path / "cut.nrrd", 0.6)
    with pytest.raises(ScoreinvError, match=r"cut\.nrrd: cannot read NRRD data"):
        read_volume(tmp_path / "cut.nrrd")
    (tmp_path / "junk.nrrd").write_text("not a nrrd")
    with pytest.raises(ScoreinvError, match=r"junk\.nrrd: cannot read NRRD header"):
        read_volume(tmp_path / "junk.nrrd")

# --- HDF5 ----------------------------------------------------------------------------------
def test_hdf5_reconstruction_and_kspace(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    coils = rng.normal(size=(3, 4, 12, 10)) + 1j * rng.normal(size=(3, 4, 12, 10))
    rss = np.sqrt((np.abs(coils) ** 2).sum(1))
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f["kspace"] = fft2c(coils).astype(np.complex64)
    np.testing.assert_allclose(read_volume(tmp_path / "multi.h5").data, rss, rtol=1e-4, atol=1e-5)
    single = coils[:, 0]
    with h5py.File(tmp_path / "single.h5", "w") as f:
        f["kspace"] = fft2c(single).astype(np.complex64)
    np.testing.assert_allclose(read_volume(tmp_path / "single.h5").data, np.abs(single), rtol=1e-4, atol=1e-5)
    with h5py.File(tmp_path / "recon.h5", "w") as f:
        f["kspace"] = fft2c(coils).astype(np.complex64)
        f["reconstruction_rss"] = (rss[:, 2:10, 1:9] * 7).astype(np.float32)
    np.testing.assert_allclose(read_volume(tmp_path / "recon.h5").data, rss[:, 2:10, 1:9] * 7, rtol=1e-6)


def test_hdf5_recon_space_crop_and_errors(tmp_path):
    import h5py

    xml = ("<?xml version='1.0'?><ismrmrdHeader xmlns='http://www.ismrm.org/ISMRMRD'><encoding>"
           "<encodedSpace><matrixSize><x>12</x><y>10</y><z>1</z></matrixSize></encodedSpace>"
           "<reconSpace><matrixSize><x>6</x><y>4</y><z>1</z></matrixSize></reconSpace></encoding></ismrmrdHeader>")
    img = np.zeros((2, 12, 10))
    img[:, 3:9, 3:7] = 5.0
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["kspace"] = fft2c(img).astype(np.complex64)
        f["ismrmrd_header"] = xml
    vol = read_volume(tmp_path / "c.h5")
    assert vol.data.shape == (2, 6, 4) and vol.meta["cropped"] is True
    np.testing.assert_allclose(vol.data, 5.0, rtol=1e-4)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.arange(32.0).reshape(2, 4, 4)
    with pytest.raises(ScoreinvError, match="h5_key"):
        read_volume(tmp_path / "other.h5")
    assert read_volume(tmp_path / "other.h5", key="images").data.shape == (2, 4, 4)
    truncate(tmp_path / "c.h5", 0.4)
    with pytest.raises(ScoreinvError, match="c.h5"):
        read_volume(tmp_path / "c.h5")


# --- PNG, NumPy ----------------------------------------------------------------------------
def test_png_modes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    a8 = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "g.png").data, a8[None])
    a16 = rng.integers(0, 65536, (9, 13)).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "g16.png").data, a16[None])
    Image.fromarray(np.stack([a8] * 3, -1)).save(tmp_path / "rgb.png")          # gray stored as RGB
    np.testing.assert_array_equal(read_volume(tmp_path / "rgb.png").data, a8[None])
    big = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "t.png")
    truncate(tmp_path / "t.png", 0.5)
    with pytest.raises(ScoreinvError, match="t.png"):
        read_volume(tmp_path / "t.png")


def test_numpy_files(tmp_path):
    rng = np.random.default_rng(3)
    a2, a3 = rng.random((5, 6)), rng.random((3, 5, 6))
    np.save(tmp_path / "a2.npy", a2)
    np.save(tmp_path / "a3.npy", a3)
    np.save(tmp_path / "c.npy", a3 * np.exp(1j))
    np.testing.assert_allclose(read_volume(tmp_path / "a2.npy").data, a2[None], rtol=1e-6)
    np.testing.assert_allclose(read_volume(tmp_path / "a3.npy").data, a3, rtol=1e-6)
    np.testing.assert_allclose(read_volume(tmp_path / "c.npy").data, a3, rtol=1e-5)
    np.savez(tmp_path / "one.npz", x=a3)
    np.savez(tmp_path / "many.npz", image=a2, mask=a2 > 0.5)
    np.savez(tmp_path / "bad.npz", p=a2, q=a2)
    assert read_volume(tmp_path / "one.npz").data.shape == (3, 5, 6)
    assert read_volume(tmp_path / "many.npz").data.shape == (1, 5, 6)
    with pytest.raises(ScoreinvError, match="npz_key"):
        read_volume(tmp_path / "bad.npz")
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan))
    with pytest.raises(ScoreinvError, match="NaN"):
        read_volume(tmp_path / "nan.npy")
    np.save(tmp_path / "line.npy", np.zeros(7))
    with pytest.raises(ScoreinvError, match=r"line.npy.*\(7,\)"):
        read_volume(tmp_path / "line.npy")
    np.save(tmp_path / "cut.npy", rng.random((50, 50)))
    truncate(tmp_path / "cut.npy", 0.5)
    with pytest.raises(ScoreinvError, match="cut.npy"):
        read_volume(tmp_path / "cut.npy")


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScoreinvError, match="unsupported file type"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(ScoreinvError, match="no such file"):
        read_volume(tmp_path / "absent.nii")
