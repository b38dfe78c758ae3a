"""MRI bad input (issue 13): real k-space where complex is expected, a mask that does not fit the
image, odd image sizes (handled: exact physics; refused only by a prior that cannot serve them),
NaN/Inf in k-space, and masks that leave no centre line. Each case: a ScoreinvError naming what
was expected, and through the command line exit status 2 with nothing overwritten."""
from __future__ import annotations

import contextlib
import hashlib
import io
import re

import numpy as np
import pytest
import torch

from scoreinv import config as C
from scoreinv.cli import main
from scoreinv.errors import ScoreinvError
from scoreinv.physics.base import real_inner
from scoreinv.physics.masks import check_centre, equispaced_mask, make_mask, random_mask, variable_density_mask
from scoreinv.physics.measurements import load_measurements
from scoreinv.physics.mri import CartesianMRI, PhasedMRI, fft2c, kspace_rms, mirror
from scoreinv.score import check_model_size, read_checkpoint, resolve_checkpoint


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- the operators ------------------------------------------------------------------------------
def test_real_kspace_is_refused_by_the_operators():
    m = make_mask("random", (16, 16), 4, seed=0)
    x = torch.rand(1, 1, 16, 16, generator=_gen())
    y = CartesianMRI(m).forward(x)
    for op in (CartesianMRI(m), CartesianMRI(m, complex_image=True), PhasedMRI(m, torch.zeros(16, 16))):
        with pytest.raises(ScoreinvError, match="real float32 values.*expected complex k-space"):
            op.adjoint(y.abs())
        assert op.adjoint(y).shape == (1, 1, 16, 16)            # the complex k-space itself still passes
    with pytest.raises(ScoreinvError, match="expected complex k-space"):
        CartesianMRI(m).zero_filled(y.real)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_kspace_is_refused(bad):
    m = make_mask("random", (16, 16), 4, seed=0)
    op = CartesianMRI(m)
    y = op.forward(torch.rand(2, 1, 16, 16, generator=_gen()))
    y[1, 8, 8] = complex(bad, 0.0)
    with pytest.raises(ScoreinvError, match="NaN or Inf"):
        op.adjoint(y)
    with pytest.raises(ScoreinvError, match="NaN or Inf"):
        kspace_rms(y, m)
    y[1, 8, 8] = complex(0.0, bad)                            # the imaginary part alone
    with pytest.raises(ScoreinvError, match="NaN or Inf"):
        op.zero_filled(y)


def test_mask_that_does_not_fit_is_refused():
    m = make_mask("random", (16, 16), 4, seed=0)
    with pytest.raises(ScoreinvError, match=r"does not fit the k-space grid \(16, 12\)"):
        CartesianMRI(m, image_shape=(16, 12))
    with pytest.raises(ScoreinvError, match=r"expected a 2-D k-space mask"):
        CartesianMRI(m[None].expand(3, 16, 16))
    op = CartesianMRI(m)
    with pytest.raises(ScoreinvError, match=r"expected \(B, 16, 16\)"):
        op.adjoint(torch.zeros(1, 16, 12, dtype=torch.complex64))
    with pytest.raises(ScoreinvError, match=r"expected slices of size \(16, 16\)"):
        op.forward(torch.zeros(1, 1, 12, 16))


@pytest.mark.parametrize("shape", [(15, 17), (17, 15), (9, 9)])
def test_odd_sizes_are_exact(shape):
    """Odd H or W: the fftshift layout keeps DC at (H//2, W//2), the spectrum of a real image is
    Hermitian about it (the mirror index), the operator is adjoint and the full mask inverts it."""
    h, w = shape
    x = torch.rand(2, 1, h, w, generator=_gen(1), dtype=torch.float64)
    z = fft2c(x[:, 0])
    assert torch.allclose(mirror(z), z.conj(), atol=1e-12)
    assert torch.allclose(fft2c(torch.ones(h, w, dtype=torch.float64))[h // 2, w // 2].real,
                          torch.tensor(float(np.sqrt(h * w)), dtype=torch.float64))
    m = make_mask("random", shape, 2, seed=0, require_centre=True)
    assert bool(m[:, w // 2].all())                           # the centre band holds DC
    op = CartesianMRI(m)
    y = torch.randn(2, h, w, dtype=torch.complex128, generator=_gen(2))
    assert torch.allclose(real_inner(op.forward(x), y), real_inner(x, op.adjoint(y)), rtol=1e-10)
    done, data = op.completed(op.forward(x))
    assert torch.allclose(data[:, done], z[:, done], atol=1e-12)   # the completion is the true spectrum
    full = CartesianMRI(torch.ones(h, w))
    assert torch.allclose(full.zero_filled(full.forward(x)), x, atol=1e-12)


def test_a_whole_image_prior_refuses_an_odd_size_clearly():
    cfg = C.from_dict(read_checkpoint(resolve_checkpoint("mri64"))["config"])
    with pytest.raises(ScoreinvError, match="63x63.*whole-image network for 64x64"):
        check_model_size(cfg, 63, 63)


# --- masks without a centre -----------------------------------------------------------------------
def test_masks_without_a_centre_line_are_refused():
    with pytest.raises(ScoreinvError, match="no fully sampled centre column"):
        random_mask((64, 64), 4, center_fraction=0.0)
    with pytest.raises(ScoreinvError, match="no fully sampled centre column"):
        make_mask("random", (64, 64), 48)                    # 0.32 / 48 of 64 columns rounds to 0
    with pytest.raises(ScoreinvError, match="no calibration square"):
        variable_density_mask((64, 64), 4, center_fraction=0.0)
    # the reference's equispaced rule at 64 columns: a centre column up to 8x, none at 16x
    assert bool(make_mask("equispaced", (64, 64), 8, require_centre=True)[:, 32].all())
    assert not bool(equispaced_mask((64, 64), 4)[:, 32].any())
    with pytest.raises(ScoreinvError, match=r"acceleration 16 on 64 columns: samples no k-space centre line.*"
                                            r"round\(64 x 4 / 1000\) = 0"):
        make_mask("equispaced", (64, 64), 16, require_centre=True)
    with pytest.raises(ScoreinvError, match="column 8 of 16"):
        check_centre(torch.zeros(16, 16, dtype=torch.bool).index_fill_(1, torch.tensor([0, 4, 12]), True))
    for kind in ("random", "variable_density", "radial"):     # these rules always keep DC
        assert bool(make_mask(kind, (64, 64), 8, seed=3, require_centre=True)[32, 32])


# --- the measurement file and the commands -------------------------------------------------------
def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


def _digest(p) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mri_bad")
    yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    np.save(root / "img.npy", 0.2 + 0.5 * ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1))
    np.save(root / "odd.npy", np.random.default_rng(0).random((15, 15)))
    rc, err = _run(["simulate", "--task", "mri", "--mask", "random", "--input", str(root / "img.npy"),
                    "--out", str(root / "mri.npz")])
    assert rc == 0, err
    with np.load(root / "mri.npz") as z:
        good = {k: z[k] for k in z.files}
    y = good["measurements"].copy()
    y[0, 8, 8] = np.inf
    np.savez(root / "inf_kspace.npz", **{**good, "measurements": y})
    np.savez(root / "real_kspace.npz", **{**good, "measurements": good["measurements"].real.copy()})
    np.savez(root / "narrow_mask.npz", **{**good, "op_mask": good["op_mask"][:, :12]})
    (root / "existing.npy").write_bytes(b"a user's result")
    (root / "existing.npz").write_bytes(b"a user's measurements")
    return root


@pytest.mark.parametrize("name,expect", [("inf_kspace.npz", r"NaN or Inf"),
                                         ("real_kspace.npz", r"must be complex k-space"),
                                         ("narrow_mask.npz", r"op_mask has shape \(16, 12\).*image_size \(16, 16\)")])
def test_reconstruct_refuses_bad_kspace_files(files, name, expect):
    out = files / "existing.npy"
    before = _digest(out)
    rc, err = _run(["reconstruct", "--checkpoint", "mri64", "--measurements", str(files / name), "--solver", "dds",
                    "--out", str(out), "--overwrite", "--no-progress"])
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and name in lines[0], err
    assert re.search(expect, lines[0]), lines[0]
    assert _digest(out) == before


def test_load_measurements_names_the_mask(files):
    meas = load_measurements(files / "narrow_mask.npz")
    with pytest.raises(ScoreinvError, match="op_mask has shape"):
        meas.operator()


@pytest.mark.parametrize("argv,expect", [
    (["--mask", "random", "--center-fraction", "0"], r"no fully sampled centre column"),
    (["--mask", "random", "--acceleration", "12"], r"no fully sampled centre column"),
    (["--mask", "variable_density", "--center-fraction", "0"], r"no calibration square"),
])
def test_simulate_refuses_masks_without_a_centre(files, argv, expect):
    out = files / "existing.npz"
    before = _digest(out)
    rc, err = _run(["simulate", "--task", "mri", "--input", str(files / "img.npy"), *argv, "--out", str(out),
                    "--overwrite"])
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and re.search(expect, lines[0]), err
    assert _digest(out) == before


def test_odd_size_simulates_and_a_whole_image_prior_refuses_it(files, tmp_path):
    """An odd 15 x 15 image is simulated (exact physics), and reconstructing it with the 64 x 64
    whole-image prior stops with the size in the message before anything is written."""
    meas = tmp_path / "odd.npz"
    rc, err = _run(["simulate", "--task", "mri", "--mask", "random", "--input", str(files / "odd.npy"),
                    "--out", str(meas)])
    assert rc == 0, err
    m = load_measurements(meas)
    assert m.image_size == (15, 15) and bool(m.arrays["mask"][:, 7].all())
    op = m.operator()
    gt = m.ground_truth
    assert float((op.forward(gt) - m.y).abs().max()) < 1e-5
    out = files / "existing.npy"
    before = _digest(out)
    rc, err = _run(["reconstruct", "--checkpoint", "mri64", "--measurements", str(meas), "--solver", "dds",
                    "--out", str(out), "--overwrite", "--no-progress"])
    assert rc == 2 and "15x15" in err and "64x64" in err, err
    assert _digest(out) == before
