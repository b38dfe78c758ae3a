"""DICOM pixel values: pydicom's modality transform, enhanced multi-frame CT, MONOCHROME1,
compressed transfer syntaxes (pylibjpeg), refusals, and the files a folder scan skips."""
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import as_jpeg_lossless, enhanced_ct, save, slice_ds
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from scoreinv.cli import main
from scoreinv.data import dicom
from scoreinv.data.readers import read_volume
from scoreinv.errors import ScoreinvError


def stored(shape=(8, 6), seed=0, hi=3000):
    return np.random.default_rng(seed).integers(0, hi, shape).astype(np.uint16)


# --- the modality transform --------------------------------------------------------------------
def test_missing_slope_applies_the_intercept(tmp_path):
    s = stored()
    save(slice_ds(s, slope=None, intercept=-1024.0), tmp_path / "a.dcm")
    vol = read_volume(tmp_path / "a.dcm")
    np.testing.assert_array_equal(vol.data[0], s.astype(np.float32) - 1024)      # pydicom alone: no intercept
    save(slice_ds(s, slope=2.0, intercept=None), tmp_path / "b.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "b.dcm").data[0], 2 * s.astype(np.float32))


def test_modality_lut_sequence(tmp_path):
    s = stored(hi=4096)
    ds = slice_ds(s, slope=None, intercept=None)
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 16], (np.arange(4096) * 3 % 65536).tolist()
    item["LUTData"].VR = "US"
    ds.ModalityLUTSequence = [item]
    save(ds, tmp_path / "lut.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "lut.dcm").data[0], 3 * s.astype(np.float32))


def test_zero_slope_and_constant_image_are_refused(tmp_path, capsys):
    save(slice_ds(stored(), slope=0.0), tmp_path / "zero.dcm")
    with pytest.raises(ScoreinvError, match=r"zero\.dcm.*RescaleSlope 0.*non-zero slope"):
        read_volume(tmp_path / "zero.dcm")
    save(slice_ds(np.full((8, 6), 7, np.uint16)), tmp_path / "flat.dcm")
    with pytest.raises(ScoreinvError, match=r"flat\.dcm.*every voxel is -1017.*constant"):
        read_volume(tmp_path / "flat.dcm")
    assert main(["simulate", "--task", "ct", "--input", str(tmp_path / "zero.dcm"), "--out",
                 str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert "zero.dcm" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_monochrome1_is_inverted_over_the_stored_range(tmp_path):
    s = stored(hi=4096)
    save(slice_ds(s, photometric="MONOCHROME1", bits=12, slope=1.0, intercept=0.0), tmp_path / "m1.dcm")
    save(slice_ds(4095 - s, bits=12, slope=1.0, intercept=0.0), tmp_path / "m2.dcm")
    m1, m2 = read_volume(tmp_path / "m1.dcm").data, read_volume(tmp_path / "m2.dcm").data
    np.testing.assert_array_equal(m1, m2)                    # the same picture, larger = brighter
    # with a rescale: the range is the transform of the stored range, so the inversion is exact
    save(slice_ds(s, photometric="MONOCHROME1", bits=12, slope=2.0, intercept=-100.0), tmp_path / "r1.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "r1.dcm").data[0],
                                  (2.0 * (4095 - s.astype(np.float64)) - 100).astype(np.float32))


def test_enhanced_multiframe_ct_per_frame_rescale_and_order(tmp_path):
    frames = np.stack([stored(seed=k) for k in range(3)])
    z = [5.0, -5.0, 0.0]                                     # stored out of order
    rescales = [(1.0, -1024.0), (2.0, -1000.0), (1.0, -500.0)]
    save(enhanced_ct(frames, [(0, 0, v) for v in z], rescales), tmp_path / "enh.dcm")
    vol = read_volume(tmp_path / "enh.dcm")
    hu = [frames[i].astype(np.float64) * a + b for i, (a, b) in enumerate(rescales)]
    expected = np.stack([hu[1], hu[2], hu[0]]).astype(np.float32)     # inferior -> superior
    np.testing.assert_array_equal(vol.data, expected)
    assert vol.meta["hu"] and vol.meta["spacing"] == pytest.approx((5.0, 1.0, 1.0))
    np.testing.assert_allclose(vol.meta["positions"], [[0, 0, -5], [0, 0, 0], [0, 0, 5]])
    save(enhanced_ct(frames, [(0, 0, v) for v in z], None, shared_rescale=(1.0, -1024.0)), tmp_path / "sh.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "sh.dcm").data,
                                  frames[[1, 2, 0]].astype(np.float32) - 1024)


def test_slices_follow_the_slice_normal_not_z(tmp_path):
    """A sagittal series: every slice has the same z, the order is along the normal (x)."""
    series = pydicom.uid.generate_uid()
    s = [stored(seed=k) for k in range(3)]
    for k, i in enumerate([2, 0, 1]):                        # file order shuffled
        save(slice_ds(s[i], iop=(0, 1, 0, 0, 0, -1), ipp=(10.0 * i, 0, 0), series=series, number=k + 1),
             tmp_path / "sag" / f"f{k}.dcm")
    vol = read_volume(tmp_path / "sag")
    # resliced to the display layout (axial slices): columns run patient right -> left, i.e. along
    # +x (LPS), so column j is slice j; rows of a slice ran superior -> inferior, axis 0 runs upwards
    assert vol.data.shape == (8, 6, 3)
    for j in range(3):
        np.testing.assert_array_equal(vol.data[::-1, :, j], s[j].astype(np.float32) - 1024)


# --- compressed transfer syntaxes --------------------------------------------------------------
def test_jpeg2000_and_jpeg_lossless_decode_exactly(tmp_path):
    s = stored((32, 32), hi=4096)
    ref = slice_ds(s, bits=12)
    save(ref, tmp_path / "raw.dcm")
    j2k = slice_ds(s, bits=12)
    j2k.compress(JPEG2000Lossless)
    save(j2k, tmp_path / "j2k.dcm")
    save(as_jpeg_lossless(slice_ds(s)), tmp_path / "ljpeg.dcm")
    rle = slice_ds(s, bits=12)
    rle.compress(RLELossless)
    save(rle, tmp_path / "rle.dcm")
    raw = read_volume(tmp_path / "raw.dcm").data
    np.testing.assert_array_equal(raw[0], s.astype(np.float32) - 1024)
    for name in ("j2k", "ljpeg", "rle"):
        assert pydicom.dcmread(tmp_path / f"{name}.dcm").file_meta.TransferSyntaxUID.is_compressed
        np.testing.assert_array_equal(read_volume(tmp_path / f"{name}.dcm").data, raw, err_msg=name)


def test_jpeg_ls_and_jpeg2000_reference_files():
    """pydicom's own MR_small in three transfer syntaxes reads to the same values."""
    raw = read_volume(get_testdata_file("MR_small.dcm")).data
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_volume(get_testdata_file(name)).data, raw, err_msg=name)


def test_missing_decoder_names_syntax_and_package(tmp_path, monkeypatch):
    s = stored((32, 32), hi=4096)
    ds = slice_ds(s, bits=12)
    ds.compress(JPEG2000Lossless)
    save(ds, tmp_path / "j2k.dcm")
    save(as_jpeg_lossless(slice_ds(s)), tmp_path / "lj.dcm")

    class Missing:
        is_available = False
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Missing())
    with pytest.raises(ScoreinvError, match=r"j2k\.dcm.*JPEG 2000 Image Compression \(Lossless Only\).*"
                                            r"pip install pylibjpeg pylibjpeg-openjpeg"):
        read_volume(tmp_path / "j2k.dcm")
    with pytest.raises(ScoreinvError, match=r"lj\.dcm.*JPEG Lossless.*pip install pylibjpeg pylibjpeg-libjpeg"):
        read_volume(tmp_path / "lj.dcm")


# --- skipped files -----------------------------------------------------------------------------
def test_skipped_files_are_reported_by_simulate_and_inspect(tmp_path, capsys):
    series = pydicom.uid.generate_uid()
    for k in range(2):
        save(slice_ds(stored((16, 16), seed=k), ipp=(0, 0, float(k)), series=series), tmp_path / "s" / f"{k}.dcm")
    (tmp_path / "s" / "notes.txt").write_text("not an image")
    (tmp_path / "s" / "broken.dcm").write_bytes(b"\x00" * 10)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "s" / "series.nii"))
    vol = read_volume(tmp_path / "s")
    assert vol.data.shape == (2, 16, 16)
    assert sorted((x.path.name, x.reason.split(" (")[0]) for x in vol.meta["skipped"]) == [
        ("broken.dcm", "cannot read DICOM header"), ("notes.txt", "not an image file"),
        ("series.nii", "NIfTI image has shape")]
    line = "skipped 3 file(s): broken.dcm (cannot read DICOM header"
    assert main(["simulate", "--task", "ct", "--views", "4", "--upsample", "1", "--input", str(tmp_path / "s"),
                 "--out", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert line in out and "notes.txt (not an image file)" in out and "series.nii (NIfTI image has shape" in out
    assert main(["data", "inspect", str(tmp_path / "s"), "--size", "16", "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert line in out and "notes.txt (not an image file)" in out
    # the same broken file given alone is an error naming it, not a traceback
    assert main(["simulate", "--task", "ct", "--input", str(tmp_path / "s" / "broken.dcm"), "--out",
                 str(tmp_path / "n.npz")]) == 2
    err = capsys.readouterr().err
    assert "broken.dcm" in err and "Traceback" not in err


def test_series_with_a_duplicate_position_or_mixed_pixel_size_is_refused(tmp_path):
    """Two slices at one position (a copied file, two acquisitions under one UID) or two pixel sizes in
    one series would be stacked into a wrong volume without a word."""
    s = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 40) + 100
    for k, z in enumerate((0.0, 2.0, 2.0)):
        save(slice_ds(s + k, ipp=(0, 0, z), series="1.2.3.1", number=k + 1), tmp_path / "dup" / f"{k}.dcm")
    with pytest.raises(ScoreinvError, match="same position"):
        read_volume(tmp_path / "dup")
    for k, (z, sp) in enumerate(((0.0, 1.0), (2.0, 1.0), (4.0, 0.5))):
        save(slice_ds(s + k, ipp=(0, 0, z), spacing=(sp, sp), series="1.2.3.2", number=k + 1),
             tmp_path / "mixed" / f"{k}.dcm")
    with pytest.raises(ScoreinvError, match="PixelSpacing"):
        read_volume(tmp_path / "mixed")
    for k, z in enumerate((0.0, 2.0, 4.0)):    # the same slices, well formed, read
        save(slice_ds(s + k, ipp=(0, 0, z), series="1.2.3.3", number=k + 1), tmp_path / "ok" / f"{k}.dcm")
    assert read_volume(tmp_path / "ok").data.shape == (3, 8, 8)
