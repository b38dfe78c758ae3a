"""`scoreinv reconstruct` on bad input and existing outputs: clear errors, all before any sampling."""
import json

import numpy as np
import pytest
import torch
from recon_cases import recon, rewrite

from scoreinv.cli import main
from scoreinv.score import read_checkpoint


def test_bad_inputs_fail_before_sampling(model, mri_meas, tmp_path, capsys, no_sampling):
    from pydicom.data import get_testdata_file
    big = tmp_path / "big.npz"
    assert main(["simulate", "--task", "mri", "--mask", "random", "--size", "24", "--input", get_testdata_file("MR_small.dcm"),
                 "--out", str(big)]) == 0
    ck = read_checkpoint(f"{model}/checkpoints-meta/checkpoint.pt")
    del ck["ema"]
    torch.save(ck, tmp_path / "noema.pt")
    rewrite(mri_meas, tmp_path / "v2.npz", format_version=np.array(2))
    with np.load(mri_meas) as z:
        y = z["measurements"].copy()
    y[0, 3, 3] = np.nan
    rewrite(mri_meas, tmp_path / "nan.npz", measurements=y)
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
    rewrite(mri_meas, tmp_path / "src.npz", source=np.array(json.dumps({"intensity": {"offset": "x"}})))
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


def test_ddrm_on_a_ct_sinogram_is_refused_before_sampling(model, ct_series, tmp_path, capsys, no_sampling):
    meas, _ = ct_series
    assert recon(model, meas, tmp_path / "r.npy", "--solver", "ddrm", "--ct-operator", "radon") == 2
    assert "solver ddrm needs an operator with the A = P(Λ)T decomposition" in capsys.readouterr().err
    assert recon(model, meas, tmp_path / "r.npy", "--solver", "dds", "--set", "solver.warm_start=classical",
                 "--set", "solver.warm_sigma=50") == 2
    assert "warm_sigma = 50" in capsys.readouterr().err
