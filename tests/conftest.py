"""Tests run single-threaded: small tensors gain nothing from threads, and on a shared 2-core
machine torch's thread pool makes them much slower."""
import torch

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Work directory of a 16x16 score model trained for one step (deterministic weights)."""
    from tinymodel import train_tiny
    return train_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory):
    """Every test's scoreinv cache ($SCOREINV_DATA: fetched scans, out-of-distribution references
    computed for models without one) is a fresh folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCOREINV_DATA", str(tmp_path_factory.mktemp("scoreinv-data")))
        yield


# --- inputs of the reconstruct tests (test_reconstruct*.py, test_writers.py) ---------------------
@pytest.fixture
def model(tiny_checkpoint):
    """The tiny model's work directory, under the name the reconstruct tests use."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """A 2-slice CT DICOM series (CT_small.dcm at z and z + 5 mm) and its sparse-view measurements."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from scoreinv.cli import main
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
    """4x MRI measurements of MR_small.dcm at 16x16 (random columns)."""
    from pydicom.data import get_testdata_file

    from scoreinv.cli import main
    out = tmp_path_factory.mktemp("mri") / "mri.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--acceleration", "4", "--size", "16",
                 "--input", get_testdata_file("MR_small.dcm"), "--out", str(out)]) == 0
    return out


@pytest.fixture
def no_sampling(monkeypatch):
    """Any sampling fails the test: refusals must come before it."""
    from scoreinv.sampling import solvers

    def boom(*a, **k):
        raise AssertionError("sampling started")
    monkeypatch.setattr(solvers, "posterior", boom)
    monkeypatch.setattr(solvers, "solve", boom)
