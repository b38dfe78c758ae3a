"""Shared by the reconstruct tests: the `reconstruct` call they make and the geometry they expect."""
import numpy as np

from scoreinv.cli import main

SPACING = 0.661468           # CT_small.dcm: 128 x 128 pixels of 0.661468 mm
F = 128 / 16                 # resize factor to the model's 16 x 16


def recon(model, meas, out, *extra):
    return main(["reconstruct", "--checkpoint", model, "--measurements", str(meas), "--out", str(out),
                 "--steps", "2", "--no-progress", *extra])


def expected_position(src_ds) -> np.ndarray:
    """Centre of output pixel (0, 0): the input's first pixel corner + half an output pixel."""
    ipp = np.asarray([float(v) for v in src_ds.ImagePositionPatient])
    return ipp + (F - 1) / 2 * SPACING * np.array([1.0, 1.0, 0.0])   # identity orientation


def rewrite(src, dst, **changes):
    """Copy the measurement file `src` to `dst` with some of its arrays replaced."""
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d.update(changes)
    np.savez(dst, **d)
