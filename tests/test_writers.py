"""The output writers (formats, DICOM series folders) and the source record that carries geometry."""
import json

import numpy as np
import pytest

from scoreinv import source_record, writers
from scoreinv.errors import ScoreinvError


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
