"""MNI152 brain slices: offline loading, value range, held-out slabs, contrasts, determinism."""
import socket

import numpy as np
import pytest
import torch

from scoreinv.data import brain as Bm
from scoreinv.data import build_dataset
from scoreinv.errors import ScoreinvError


def test_template_loads_without_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    Bm.template_maps.cache_clear()
    Bm._volume.cache_clear()
    maps = Bm.template_maps()
    assert maps.shape[0] == 4 and maps.shape[1] == Bm.Z_HI - Bm.Z_LO + 1 and maps.shape[2] == maps.shape[3]
    gm, wm, csf = maps[0], maps[1], maps[2]
    assert 0 <= gm.min() and gm.max() <= 1 and 0 <= csf.min() and csf.max() <= 1
    assert gm.sum() > 1e5 and wm.sum() > 1e5 and csf.sum() > 1e4     # real tissue maps, not empty


@pytest.mark.slow
def test_fast_path_equals_nilearn_loaders():
    fast = Bm.load_template()
    ref = Bm.load_template(use_nilearn=True)
    for a, b in zip(fast, ref):
        np.testing.assert_array_equal(a, b)


def test_slabs_disjoint_with_gaps():
    splits = {s: set(Bm.slab_slices(s)) for s in ("train", "val", "test")}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not splits[a] & splits[b]
            gap = min(abs(x - y) for x in splits[a] for y in splits[b]) - 1
            assert gap >= Bm.SLAB_GAP                                   # >= 8 unread slices between
    assert len(splits["train"]) > 3 * len(splits["val"])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_planes_stay_in_their_slab(split):
    ds = build_dataset("brain", split, 16)
    k0, f = ds.planes(2000, torch.Generator().manual_seed(0))
    allowed = set(Bm.slab_slices(split))
    assert set(k0.tolist()) <= allowed and set((k0 + 1).tolist()) <= allowed
    assert float(f.min()) >= 0 and float(f.max()) <= 1
    assert len(set(k0.tolist())) >= len(allowed) - len(Bm.SLABS[split]) - 1   # the whole slab is used


def test_images_in_unit_range_and_varied():
    ds = build_dataset("brain", "train", 32)
    x = ds.sample_batch(8, torch.Generator().manual_seed(1))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert bool((x.flatten(1).std(1) > 0.1).all())                     # non-constant slices
    assert (x[0] - x[1]).abs().mean() > 0.02                           # different images


def test_contrast_families():
    # same planes (same seed, no deformation/noise/bias): T2 inverts the CSF/WM order of T1
    opts = dict(deform=0.0, noise=0.0, bias=0.0)
    t1 = build_dataset("brain", "val", 32, contrasts="t1", **opts).generate(6, torch.Generator().manual_seed(3))
    t2 = build_dataset("brain", "val", 32, contrasts="t2", **opts).generate(6, torch.Generator().manual_seed(3))
    t1b = build_dataset("brain", "val", 32, contrasts="t1", **opts).generate(6, torch.Generator().manual_seed(3))
    brain = (t1 > 0.3) & (t2 > 0.3)                                   # away from the brain edge
    for i in range(6):
        a, b, c = t1[i][brain[i]], t2[i][brain[i]], t1b[i][brain[i]]
        assert np.corrcoef(a, b)[0, 1] < -0.5
        assert np.corrcoef(a, c)[0, 1] > 0.99


def test_fixed_sets_deterministic_and_distinct():
    v1 = build_dataset("brain", "val", 16, n_val=8)
    v2 = build_dataset("brain", "val", 16, n_val=8)
    t = build_dataset("brain", "test", 16, n_test=8)
    assert torch.equal(v1[0], v2[0]) and torch.equal(v1[7], v2[7])
    assert not torch.equal(v1[0], t[0])
    b = v1.sample_batch(5, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(img, v1[i]) for i in range(8)) for img in b)    # drawn from the fixed set


def test_options_validated():
    with pytest.raises(ScoreinvError, match="contrasts"):
        build_dataset("brain", "train", 16, contrasts="t7")
    with pytest.raises(ScoreinvError, match="noise"):
        build_dataset("brain", "train", 16, noise=-1)
    with pytest.raises(ScoreinvError, match="hu_min"):
        build_dataset("brain", "train", 16, hu_min=-100)
    assert len(build_dataset("brain", "train", 16, hu_min=-1024.0, axis=0)) > 0   # neutral options pass


@pytest.mark.parametrize("size", [256, 255])
def test_canvas_is_the_template_grid_beyond_the_crop(size):
    """S > N: output pixel i samples source pixel i − ⌊(S − N)/2⌋ exactly (no resampling), for odd and
    even S − N; S <= N: the source stretched over the image, as the 64/128 presets were trained."""
    import torch.nn.functional as F
    n = 193
    src = torch.rand(2, 1, n, n, generator=torch.Generator().manual_seed(0))
    c = Bm.canvas_coords(size, n)
    yo, xo = torch.meshgrid(c, c, indexing="ij")
    out = F.grid_sample(src, torch.stack([xo, yo], -1).expand(2, size, size, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    o = (size - n) // 2
    torch.testing.assert_close(out, F.pad(src, (o, size - n - o, o, size - n - o)), atol=1e-4, rtol=0)
    for s in (64, 128, 193):
        assert torch.equal(Bm.canvas_coords(s, n), (2 * torch.arange(s, dtype=torch.float32) + 1) / s - 1)


def test_brain_at_256_is_on_the_native_1mm_grid():
    maps = Bm.template_maps()
    n = maps.shape[-1]
    assert n < 256 and Bm.template_pixel_mm(256) == 1.0 and Bm.template_pixel_mm(64) == n / 64
    ds = build_dataset("brain", "val", 256, deform=0.0, noise=0.0, bias=0.0, n_val=2)
    assert ds.describe()["pixel_mm"] == 1.0
    x = torch.stack([ds[i] for i in range(2)])[:, 0]
    support = np.nonzero(maps[:3].sum(0).max(0) > 0)                        # the brain over all planes, 1 mm
    tall, wide = np.ptp(support[0]) + 1, np.ptp(support[1]) + 1
    for img in x.numpy():
        rows, cols = np.nonzero(img > 1e-3)
        assert np.ptp(rows) + 1 <= tall and np.ptp(cols) + 1 <= wide         # not magnified to the canvas
        assert np.ptp(rows) + 1 >= 0.85 * tall                               # but the whole brain, 1 px = 1 mm
        o = (256 - n) // 2                                                   # centred: the crop's place on the canvas
        assert rows.min() >= o + support[0].min() and rows.max() <= o + support[0].max()
