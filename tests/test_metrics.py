"""Metrics against scikit-image, the paper's region / histogram / MAR variants, registry, summaries."""
import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from skimage.transform import resize

from scoreinv import metrics as M
from scoreinv.errors import ScoreinvError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _sk(a, b, kind):
    """scikit-image reference on one image pair (ground truth first), Wang et al. settings."""
    a, b = np.clip(np.asarray(a, np.float64), 0, 1), np.clip(np.asarray(b, np.float64), 0, 1)
    if kind == "psnr":
        return sk_psnr(a, b, data_range=1.0)
    return sk_ssim(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def _phantom(n):
    return torch.from_numpy(resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)).float()


@pytest.mark.parametrize("shape", [(32, 32), (17, 40), (11, 11), (48, 24)])
@pytest.mark.parametrize("kind", ["psnr", "ssim"])
def test_psnr_ssim_match_skimage_on_random_images(shape, kind):
    g = _gen(1)
    ref = torch.rand(3, 1, *shape, generator=g)
    x = ref + 0.15 * torch.randn(3, 1, *shape, generator=g)      # leaves [0, 1]: clipping matters
    ours = getattr(M, kind)(x, ref)
    assert ours.shape == (3,)
    for i in range(3):
        assert abs(float(ours[i]) - _sk(ref[i, 0], x[i, 0], kind)) <= 1e-5


@pytest.mark.parametrize("kind", ["psnr", "ssim"])
def test_psnr_ssim_match_skimage_on_structured_images(kind):
    ref = _phantom(64)[None, None].repeat(2, 1, 1, 1)
    x = ref.clone()
    x[0] = x[0] * 0.9 + 0.05                                       # contrast change
    x[1] = torch.roll(x[1], 1, dims=-1) + 0.02 * torch.randn(64, 64, generator=_gen(2))
    ours = getattr(M, kind)(x, ref)
    for i in range(2):
        assert abs(float(ours[i]) - _sk(ref[i, 0], x[i, 0], kind)) <= 1e-5
    assert float(ours[0]) != float(ours[1])


def test_identical_images_and_clipping():
    ref = torch.rand(2, 1, 16, 16, generator=_gen(3))
    assert torch.isinf(M.psnr(ref, ref)).all()
    assert torch.allclose(M.ssim(ref, ref), torch.ones(2, dtype=torch.float64))
    wild = ref * 3 - 1
    assert torch.allclose(M.psnr(wild, ref), M.psnr(wild.clamp(0, 1), ref))
    assert torch.allclose(M.ssim(wild, ref), M.ssim(wild.clamp(0, 1), ref))


def test_circle_mask_geometry():
    m = M.circle_mask(32, 32)
    assert m[16, 16] and m[0, 16] and m[16, 0] and not m[0, 0] and not m[31, 31]
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1)) and torch.equal(m, m.T)
    assert abs(int(m.sum()) - np.pi * 16 ** 2) < 2 * np.pi * 16        # area within a perimeter
    r = M.circle_mask(20, 30)                                            # radius = min(H, W) / 2
    assert not r[:, :5].any() and not r[:, -5:].any() and r[:, 5].any()


@pytest.mark.parametrize("kind", ["psnr", "ssim"])
def test_circle_metric_equals_skimage_on_masked_images(kind):
    g = _gen(4)
    ref = torch.rand(2, 1, 24, 24, generator=g)
    x = ref + 0.1 * torch.randn(2, 1, 24, 24, generator=g)
    ii, jj = np.meshgrid(np.arange(24) + 0.5 - 12, np.arange(24) + 0.5 - 12, indexing="ij")
    disc = (ii ** 2 + jj ** 2) <= 12 ** 2                               # built by hand
    ours = getattr(M, f"{kind}_circle")(x, ref)
    for i in range(2):
        a = np.clip(ref[i, 0].numpy(), 0, 1) * disc
        b = np.clip(x[i, 0].numpy(), 0, 1) * disc
        assert abs(float(ours[i]) - _sk(a, b, kind)) <= 1e-5
    # errors outside the disc do not count
    x2 = x.clone()
    x2[..., 0, 0] = 1 - x2[..., 0, 0].clamp(0, 1)
    assert torch.allclose(getattr(M, f"{kind}_circle")(x2, ref), ours)


def _two_peak(lo=0.1, hi=0.6, bright=0.9, n=32, seed=5):
    g = _gen(seed)
    img = torch.full((n, n), lo)
    u = torch.rand(n, n, generator=g)
    img[u > 0.5] = hi                     # ~50 % background, ~40 % tissue, ~10 % bright
    img[u > 0.9] = bright
    return img[None, None]


def test_histogram_normalisation_maps_peaks_to_zero_and_one():
    img = torch.cat([_two_peak(0.1, 0.6, 0.9), _two_peak(0.05, 0.45, 0.95, seed=6)])
    lo, hi = M.histogram_peaks(img)
    assert torch.allclose(lo, torch.tensor([0.1, 0.05], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(hi, torch.tensor([0.6, 0.45], dtype=torch.float64), atol=1e-6)
    out = M.hist_normalise(img)
    for b, (l, h) in enumerate([(0.1, 0.6), (0.05, 0.45)]):
        assert torch.allclose(out[b][img[b] == l], torch.tensor(0.0, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(out[b][img[b] == h], torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    # noisy peaks are found to within one bin
    noisy = (img + 0.003 * torch.randn(img.shape, generator=_gen(7))).clamp(0, 1)
    lo_n, hi_n = M.histogram_peaks(noisy)
    assert (lo_n - lo).abs().max() < 1 / 255 and (hi_n - hi).abs().max() < 1 / 255


def test_hist_metric_equals_by_hand_computation():
    ref = _two_peak(0.1, 0.6, 0.9)
    x = (ref * 0.8 + 0.1).clone()         # affine intensity change: undone by the normalisation
    assert float(M.psnr_hist(x, ref)) > 100 and abs(float(M.ssim_hist(x, ref)) - 1) < 1e-9
    x = ref + 0.05 * torch.randn(ref.shape, generator=_gen(8))
    xn, rn = M.hist_normalise_pair(x, ref)
    assert float(rn.max()) == 1.0 and float(rn.min()) >= 0 and float(xn.max()) <= 1
    disc = M.circle_mask(32, 32).numpy()
    assert abs(float(M.psnr_hist(x, ref)) - _sk(rn[0, 0].numpy() * disc, xn[0, 0].numpy() * disc, "psnr")) < 1e-6
    assert abs(float(M.ssim_hist(x, ref)) - _sk(rn[0, 0].numpy() * disc, xn[0, 0].numpy() * disc, "ssim")) < 1e-6


def test_hist_normalisation_rejects_one_peak_image():
    with pytest.raises(ScoreinvError, match="two-peak"):
        M.hist_normalise(torch.full((1, 1, 16, 16), 0.8))


def test_mar_metrics_zero_metal_pixels():
    g = _gen(9)
    ref = torch.rand(2, 1, 20, 20, generator=g)
    x = ref + 0.1 * torch.randn(2, 1, 20, 20, generator=g)
    metal = torch.zeros(20, 20, dtype=torch.bool)
    metal[8:12, 5:9] = True
    for kind in ("psnr", "ssim"):
        ours = getattr(M, f"{kind}_mar")(x, ref, metal_mask=metal)
        for i in range(2):
            a, b = ref[i, 0].clamp(0, 1).numpy().copy(), x[i, 0].clamp(0, 1).numpy().copy()
            a[metal.numpy()] = 0
            b[metal.numpy()] = 0
            assert abs(float(ours[i]) - _sk(a, b, kind)) <= 1e-5
        x2 = x.clone()
        x2[:, :, metal] = 5.0                                      # anything inside the metal
        assert torch.allclose(getattr(M, f"{kind}_mar")(x2, ref, metal_mask=metal[None, None]), ours)
    with pytest.raises(ScoreinvError, match="metal mask"):
        M.psnr_mar(x, ref)
    with pytest.raises(ScoreinvError, match="metal_mask"):
        M.psnr_mar(x, ref, metal_mask=torch.zeros(19, 20, dtype=torch.bool))


def test_nmse_closed_form():
    ref = torch.rand(3, 1, 8, 8, generator=_gen(10)) + 0.1
    assert torch.allclose(M.nmse(1.1 * ref, ref), torch.full((3,), 0.01, dtype=torch.float64))
    assert torch.allclose(M.nmse(ref, ref), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ScoreinvError, match="all zeros"):
        M.nmse(ref, torch.zeros_like(ref))


def test_registry_and_input_errors():
    ref = torch.rand(2, 1, 16, 16, generator=_gen(11))
    for name in ("psnr", "ssim", "nmse", "psnr_circle", "ssim_circle", "psnr_hist", "ssim_hist"):
        assert M.get_metric(name) is getattr(M, name)
    with pytest.raises(ScoreinvError, match="psnr_circle"):
        M.get_metric("psnr_disc")
    with pytest.raises(ScoreinvError, match="differs"):
        M.psnr(ref, ref[:, :, :8])
    with pytest.raises(ScoreinvError, match="B, C, H, W"):
        M.ssim(ref[0], ref[0])
    bad = ref.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ScoreinvError, match="NaN"):
        M.psnr(bad, ref)
    with pytest.raises(ScoreinvError, match="real images"):
        M.psnr(ref.to(torch.complex64), ref)
    with pytest.raises(ScoreinvError, match="at least 11x11"):
        M.ssim(ref[..., :10, :10], ref[..., :10, :10])


def test_summarise_and_records():
    vals = torch.tensor([30.0, 32.0, 34.0])
    mean, std = M.summarise(vals)
    assert mean == pytest.approx(32.0) and std == pytest.approx(np.std([30, 32, 34]))
    assert M.summarise([1.0, 3.0], ddof=1)[1] == pytest.approx(np.sqrt(2))
    assert M.summarise([float("inf"), 30.0]) == (float("inf"), float("inf"))
    with pytest.raises(ScoreinvError, match="NaN"):
        M.summarise([1.0, float("nan")])
    with pytest.raises(ScoreinvError, match="no values"):
        M.summarise([])
    g = _gen(12)
    ref = torch.rand(3, 1, 16, 16, generator=g)
    x = ref + 0.05 * torch.randn(3, 1, 16, 16, generator=g)
    recs = M.per_image_records(["psnr", "ssim"], x, ref, ids=["a", "b", "c"])
    assert [r["id"] for r in recs] == ["a", "b", "c"]
    assert recs[1]["psnr"] == pytest.approx(float(M.psnr(x, ref)[1]))
    assert recs[2]["ssim"] == pytest.approx(float(M.ssim(x, ref)[2]))
    with pytest.raises(ScoreinvError, match="ids"):
        M.per_image_records(["psnr"], x, ref, ids=["a"])


def test_hu_window_metrics_use_2000_hu_data_range():
    """An error of 20 HU everywhere inside the window is PSNR 20 log10(2000 / 20) = 40 dB; HU outside
    the window are clipped (a 500 HU error above +1000 HU costs nothing)."""
    from scoreinv.metrics import HU_WINDOW_MAX, compute_metrics, psnr_hu, ssim_hu
    from scoreinv.physics.mar_spectra import HU_MAX, HU_MIN

    def scale(hu):
        return (torch.as_tensor(hu, dtype=torch.float64) - HU_MIN) / (HU_MAX - HU_MIN)

    ref_hu = torch.linspace(-900, 900, 32 * 32, dtype=torch.float64).reshape(1, 1, 32, 32)
    got = psnr_hu(scale(ref_hu + 20), scale(ref_hu))
    assert abs(float(got[0]) - 40.0) < 1e-6
    bone = torch.full((1, 1, 32, 32), HU_WINDOW_MAX + 300.0, dtype=torch.float64)
    assert torch.isinf(psnr_hu(scale(bone + 500), scale(bone))).all()
    # the same error on the [0, 1] scale (data range 4224 HU) reads 20 log10(4224 / 2000) dB higher
    plain = compute_metrics(["psnr"], scale(ref_hu + 20), scale(ref_hu))["psnr"]
    assert abs(float(plain[0]) - float(got[0]) - 20 * math.log10((HU_MAX - HU_MIN) / 2000)) < 1e-6
    assert float(ssim_hu(scale(ref_hu), scale(ref_hu))[0]) == pytest.approx(1.0)
