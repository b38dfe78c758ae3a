"""The measurement file: round trip, operator rebuild, and clear errors on bad files."""
import json

import numpy as np
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.masks import make_mask
from scoreinv.physics.measurements import FORMAT_VERSION, load_measurements, save_measurements
from scoreinv.physics.mri import CartesianMRI
from scoreinv.physics.sense import SenseMRI, birdcage_maps


def _mri_file(tmp_path, name="m.npz"):
    op = CartesianMRI(make_mask("equispaced", (16, 16), 4))
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = op.forward(x)
    p = tmp_path / name
    save_measurements(p, "mri", op, y, {"model": "gaussian", "level": 0.01}, ground_truth=x,
                      extras={"note": np.arange(3)})
    return p, op, x, y


def test_roundtrip_cartesian(tmp_path):
    p, op, x, y = _mri_file(tmp_path)
    m = load_measurements(p)
    assert m.task == "mri" and len(m) == 3 and m.image_size == (16, 16)
    assert m.noise == {"model": "gaussian", "level": 0.01}
    assert torch.equal(m.y, y) and torch.equal(m.ground_truth, x)
    assert np.array_equal(m.extras["note"], np.arange(3))
    op2 = m.operator()
    assert torch.equal(op2.mask, op.mask)
    assert torch.allclose(op2.forward(x), y)


def test_roundtrip_sense(tmp_path):
    maps = birdcage_maps(3, (12, 12))
    op = SenseMRI(maps, make_mask("random", (12, 12), 2, seed=1), complex_image=True)
    x = torch.rand(2, 1, 12, 12) + 1j * torch.rand(2, 1, 12, 12)
    y = op.forward(x.to(torch.complex64))
    save_measurements(tmp_path / "s.npz", "mri", op, y, {"model": "none", "level": 0.0})
    op2 = load_measurements(tmp_path / "s.npz").operator()
    assert isinstance(op2, SenseMRI) and op2.complex_image
    assert torch.allclose(op2.forward(x.to(torch.complex64)), y)


def _rewrite(src, dst, drop=(), **replace):
    with np.load(src) as z:
        d = {k: z[k] for k in z.files if k not in drop}
    d.update(replace)
    np.savez(dst, **d)
    return dst


def test_bad_files(tmp_path):
    p, *_ = _mri_file(tmp_path)
    with pytest.raises(ScoreinvError, match="no such"):
        load_measurements(tmp_path / "missing.npz")
    with pytest.raises(ScoreinvError, match="version 2 is not supported; expected 1"):
        load_measurements(_rewrite(p, tmp_path / "v.npz", format_version=np.array(FORMAT_VERSION + 1)))
    with pytest.raises(ScoreinvError, match="missing key.*noise"):
        load_measurements(_rewrite(p, tmp_path / "k.npz", drop=("noise",)))
    with pytest.raises(ScoreinvError, match="unknown task"):
        load_measurements(_rewrite(p, tmp_path / "t.npz", task=np.array("pet")))
    with pytest.raises(ScoreinvError, match="not valid JSON"):
        load_measurements(_rewrite(p, tmp_path / "j.npz", operator=np.array("{kind")))
    with pytest.raises(ScoreinvError, match="NaN"):
        bad = np.full((3, 16, 16), np.nan, dtype=np.complex64)
        load_measurements(_rewrite(p, tmp_path / "n.npz", measurements=bad))
    # truncated and garbage files name the file
    data = p.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScoreinvError, match="trunc.npz.*unreadable or truncated"):
        load_measurements(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ScoreinvError, match="junk.npz"):
        load_measurements(tmp_path / "junk.npz")
    # operator problems surface when rebuilding
    with pytest.raises(ScoreinvError, match="does not match its operator kind 'spect'"):
        load_measurements(_rewrite(p, tmp_path / "o.npz", operator=np.array(json.dumps({"kind": "spect"}))))
    m = load_measurements(_rewrite(p, tmp_path / "d.npz", drop=("op_mask",)))
    with pytest.raises(ScoreinvError, match="op_mask"):
        m.operator()
    m = load_measurements(_rewrite(p, tmp_path / "s.npz", op_mask=np.ones((8, 8), dtype=bool)))
    with pytest.raises(ScoreinvError, match="image_size"):
        m.operator()


@pytest.mark.parametrize("change, message", [
    ({"noise": np.array(json.dumps({"model": "gaussian", "level": -0.1}))}, "noise level -0.1"),
    ({"noise": np.array(json.dumps({"model": "gaussian", "level": "high"}))}, "noise level 'high'"),
    ({"noise": np.array(json.dumps({"model": "rician", "level": 0.1}))}, "unknown noise model 'rician'"),
    ({"noise": np.array(json.dumps({"model": "poisson"}))}, "without a level"),
    ({"task": np.array("ct")}, "task 'ct' does not match its operator kind 'cartesian_mri'"),
    ({"task": np.array("mar")}, "task 'mar' does not match"),
    ({"measurements": np.ones((3, 16, 16), dtype=np.float32)}, "MRI measurements must be complex"),
    ({"ground_truth": np.full((3, 1, 16, 16), np.nan, dtype=np.float32)}, "finite float images"),
])
def test_contents_checked_on_load(tmp_path, change, message):
    """Keys that disagree with each other are refused when the file is read (not deep in a solver)."""
    p, *_ = _mri_file(tmp_path)
    with pytest.raises(ScoreinvError, match=message):
        load_measurements(_rewrite(p, tmp_path / "bad.npz", **change))


def test_real_sinogram_task_checked(tmp_path):
    from scoreinv.physics.ct import ParallelBeamCT
    from scoreinv.physics.geometry import ParallelGeometry, dense_angles
    op = ParallelBeamCT(ParallelGeometry(16, dense_angles(8)))
    x = torch.rand(1, 1, 16, 16)
    p = tmp_path / "ct.npz"
    save_measurements(p, "ct", op, op.forward(x), {"model": "none", "level": 0.0})
    assert load_measurements(p).task == "ct"
    with pytest.raises(ScoreinvError, match="CT measurements must be real"):
        load_measurements(_rewrite(p, tmp_path / "c.npz", measurements=op.forward(x).numpy().astype(np.complex64)))
    with pytest.raises(ScoreinvError, match="task 'mri' does not match"):
        save_measurements(tmp_path / "x.npz", "mri", op, op.forward(x), {"model": "none", "level": 0.0})
    spec = json.loads(str(np.load(p)["operator"]))
    spec["geometry"]["n"] = "sixteen"       # a value that is not a number: an error, not a traceback
    m = load_measurements(_rewrite(p, tmp_path / "g.npz", operator=np.array(json.dumps(spec))))
    with pytest.raises(ScoreinvError, match="g.npz: operator 'ct': missing or malformed parameter"):
        m.operator()


def test_save_validates(tmp_path):
    op = CartesianMRI(make_mask("equispaced", (16, 16), 4))
    with pytest.raises(ScoreinvError, match="unknown task"):
        save_measurements(tmp_path / "a.npz", "pet", op, torch.zeros(1, 16, 16, dtype=torch.complex64), {})
    with pytest.raises(ScoreinvError, match="measurements"):
        save_measurements(tmp_path / "a.npz", "mri", op, torch.zeros(1, 8, 8, dtype=torch.complex64), {})
    with pytest.raises(ScoreinvError, match="noise model"):
        save_measurements(tmp_path / "a.npz", "mri", op, torch.zeros(1, 16, 16, dtype=torch.complex64),
                          {"model": "laplace"})
    assert not (tmp_path / "a.npz").exists()


def test_roundtrip_ct_operators(tmp_path):
    from scoreinv.physics.ct import ParallelBeamCT
    from scoreinv.physics.fourier_slice import FourierSliceCT
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    for op in (ParallelBeamCT.sparse_view(12, 5, pixel_size=0.5), FourierSliceCT(12)):
        y = op.forward(x)
        save_measurements(tmp_path / "c.npz", "ct", op, y, {"model": "none", "level": 0.0}, ground_truth=x)
        op2 = load_measurements(tmp_path / "c.npz").operator()
        assert type(op2) is type(op) and op2.geometry == op.geometry
        assert torch.allclose(op2.forward(x), y)
