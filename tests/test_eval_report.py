"""The comparison figure of `scoreinv eval`: a posterior-std row appears when a solver drew K > 1 samples."""
import numpy as np
from PIL import Image

from scoreinv.eval_report import comparison_figure


def _arrays(with_std: bool) -> dict:
    rng = np.random.default_rng(0)
    gt = rng.random((2, 1, 16, 16)).astype(np.float32)
    a = {"index": np.arange(2), "ground_truth": gt, "recon_tv": gt + 0.01, "recon_dds": gt - 0.02}
    if with_std:
        a["std_dds"] = np.full_like(gt, 0.05)
    return a


def test_std_row_only_with_samples(tmp_path):
    plain, with_std = tmp_path / "plain.png", tmp_path / "std.png"
    comparison_figure(_arrays(False), ["tv", "dds"], plain, "ct", n_images=2)
    comparison_figure(_arrays(True), ["tv", "dds"], with_std, "ct", n_images=2)
    h0, h1 = Image.open(plain).size[1], Image.open(with_std).size[1]
    assert Image.open(plain).size[0] == Image.open(with_std).size[0]
    assert abs(h1 / h0 - 1.5) < 0.05          # three rows per image instead of two
