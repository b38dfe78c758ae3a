"""Procedural CT phantoms: rendering conventions, HU mapping, anatomy, determinism, resolution."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoreinv.data import build_dataset
from scoreinv.data import phantoms as P
from scoreinv.data.phantom_render import ellipse_coverage, render
from scoreinv.errors import ScoreinvError

# modified Shepp-Logan (Toft): value, a, b, x0, y0, phi (degrees)
SHEPP = [(1.0, 0.69, 0.92, 0.0, 0.0, 0.0), (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
         (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0), (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
         (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0), (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
         (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0), (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
         (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0), (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0)]


def batch_of(rows, size=64):
    e = torch.tensor([[v, a, b, x, y, math.radians(p)] for v, a, b, x, y, p in rows]).unsqueeze(0)
    return P.PhantomBatch(e, torch.zeros(1), -1024.0, 3200.0, size, False)


def numpy_raster(ell, size):
    """Reference rasteriser by explicit rotation (pixel centres, y up)."""
    c = (2 * np.arange(size) + 1) / size - 1
    x, y = np.meshgrid(c, -c)
    img = np.zeros((size, size))
    for v, a, b, x0, y0, phi in ell:
        u = (x - x0) * np.cos(phi) + (y - y0) * np.sin(phi)
        w = -(x - x0) * np.sin(phi) + (y - y0) * np.cos(phi)
        img += v * ((u / a) ** 2 + (w / b) ** 2 <= 1)
    return img


def test_hu_mapping():
    assert P.hu_to_unit(0.0) == pytest.approx(1024 / 4224)
    assert P.hu_to_unit(-1024.0) == 0.0 and P.hu_to_unit(3200.0) == 1.0
    assert P.hu_to_unit(-3000.0) == 0.0 and P.hu_to_unit(5000.0) == 1.0
    t = P.hu_to_unit(torch.tensor([0.0, 1000.0]), -1000.0, 1000.0)
    assert torch.allclose(t, torch.tensor([0.5, 1.0]))
    with pytest.raises(ScoreinvError):
        P.check_window(100, 100)


def test_matches_scikit_image_shepp_logan():
    skd = pytest.importorskip("skimage.data")
    ref = skd.shepp_logan_phantom()
    img = render(batch_of(SHEPP), 400, antialias=False)[0, 0].numpy()
    assert np.mean(np.abs(img - ref) < 0.02) > 0.99
    assert np.mean(np.abs(img[::-1] - ref) < 0.02) < 0.9          # the orientation matters


def test_hard_render_equals_reference_rasteriser():
    g = torch.Generator().manual_seed(5)
    p = P.sample_phantoms(4, g, textured=False, native_size=48)
    img = render(p, 48, antialias=False)[:, 0].double().numpy()
    for i in range(4):
        ref = np.clip(numpy_raster(p.ellipses[i].double().numpy(), 48), 0, 1)
        assert np.mean(np.abs(img[i] - ref) < 1e-5) > 0.998      # float32 boundary ties only


def test_antialiased_area():
    # one ellipse of value 1: the pixel sum times the pixel area is pi a b
    cases = [(0.5, 0.5, 0.0, 32, 0.005), (0.6, 0.2, 0.7, 32, 0.005), (0.6, 0.2, 0.7, 128, 0.001),
             (0.05, 0.03, 1.0, 128, 0.01), (0.1, 0.01, 0.3, 512, 0.01)]
    for a, b, phi, size, tol in cases:
        e = torch.tensor([[[1.0, a, b, 0.1, -0.05, phi]]])
        area = float(ellipse_coverage(e, size).sum()) * (2 / size) ** 2
        hard = float(ellipse_coverage(e, size, antialias=False).sum()) * (2 / size) ** 2
        assert area == pytest.approx(math.pi * a * b, rel=tol)
        assert hard == pytest.approx(math.pi * a * b, rel=max(tol, 0.1))


@pytest.mark.parametrize("textured", [False, True])
def test_fine_render_downsamples_to_native(textured):
    ds = build_dataset("phantoms" if textured else "ellipses", "val", 48)
    p = ds.sample_params(4, torch.Generator().manual_seed(1))
    native = p.render(48)
    fine = F.avg_pool2d(p.render(192), 4)
    hard = p.render(48, antialias=False)
    err = (native - fine).abs().mean()
    assert err < 1e-3
    assert (hard - fine).abs().mean() > 4 * err                 # anti-aliasing is what makes it agree


def test_plain_is_piecewise_constant_textured_is_not():
    g = torch.Generator().manual_seed(2)
    plain = P.sample_phantoms(4, g, textured=False, native_size=64).render(64, antialias=False)
    tex = P.sample_phantoms(4, g, textured=True, native_size=64).render(64, antialias=False)
    for i in range(4):
        assert len(torch.unique(plain[i])) <= 40
        assert len(torch.unique(tex[i])) > 1000


def _hu(p, size):
    return p.render(size, antialias=False)[:, 0] * (p.hu_max - p.hu_min) + p.hu_min


def test_anatomy_in_hu():
    g = torch.Generator().manual_seed(3)
    p = P.sample_phantoms(32, g, textured=False, native_size=256)
    hu = _hu(p, 256).numpy()
    ell = p.ellipses.double().numpy()
    c = (2 * np.arange(256) + 1) / 256 - 1
    x, y = np.meshgrid(c, -c)

    def inside(e, shrink=1.0):
        v, a, b, x0, y0, phi = e
        u = (x - x0) * np.cos(phi) + (y - y0) * np.sin(phi)
        w = -(x - x0) * np.sin(phi) + (y - y0) * np.cos(phi)
        return (u / (a * shrink)) ** 2 + (w / (b * shrink)) ** 2 <= 1

    n_bone = n_air = 0
    for i in range(32):
        kind = int(p.kind[i])
        assert abs(hu[i][0, 0] - (-1024)) < 1e-3                     # outside the field of view
        assert abs(hu[i][0, 128] - P.HU_AIR) < 1e-2                   # air inside it, above the body
        soft = inside(ell[i, P.CORE], 0.98)
        for k in range(P.ORGANS.start, ell.shape[1]):
            if ell[i, k, 0] != 0:
                soft &= ~inside(ell[i, k], 1.3)
        if soft.sum() > 20:
            assert -100 < np.median(hu[i][soft]) < 150                # soft tissue
        bones = [k for k in [P.SPINE.start, *range(P.RIBS.start, P.RIBS.stop)] if ell[i, k, 0] != 0]
        for k in bones:
            if k == P.SPINE.start:                                    # cortical shell of the vertebra
                core = inside(ell[i, k], 0.97) & ~inside(ell[i, k + 1], 1.1)
            else:
                core = inside(ell[i, k], 0.3)
            if core.sum():
                assert hu[i][core].min() > 600                        # bone, brighter than soft tissue
                n_bone += 1
        if kind == 0:
            ring = inside(ell[i, P.INNER]) & ~inside(ell[i, P.CORE], 1.02)
            assert np.median(hu[i][ring]) > 1000                      # skull
        for k in [*range(P.AIR.start, P.AIR.stop), *range(P.LUNGS.start, P.LUNGS.stop)]:
            if ell[i, k, 0] != 0:
                core = inside(ell[i, k], 0.5)
                if core.sum():
                    assert np.median(hu[i][core]) < -750              # air pockets, lungs
                    n_air += 1
    assert n_bone > 20 and n_air > 10


def test_plain_values_within_window_so_ellipse_list_is_exact():
    g = torch.Generator().manual_seed(4)
    p = P.sample_phantoms(64, g, textured=False, native_size=96)
    cov = ellipse_coverage(p.ellipses, 96, antialias=False)
    raw = (p.ellipses[..., 0].unsqueeze(1) @ cov).squeeze(1) * (p.hu_max - p.hu_min) + p.hu_min
    inside = raw > -1024 + 1
    assert raw[inside].min() >= P.PLAIN_HU_RANGE[0] - 1e-2
    assert raw.max() <= P.PLAIN_HU_RANGE[1]
    assert p.exact and not P.sample_phantoms(1, g, textured=True, native_size=8).exact


def test_seeded_sets_and_streams():
    val = build_dataset("phantoms", "val", 32, n_val=40)
    val2 = build_dataset("phantoms", "val", 32, n_val=64)
    test = build_dataset("phantoms", "test", 32, n_test=24)
    train = build_dataset("phantoms", "train", 32)
    assert len(val) == 40 and len(test) == 24 and len(build_dataset("phantoms", "test", 32)) == 256
    assert torch.equal(val[3], val2[3]) and torch.equal(val[39], val2[39])   # prefix does not depend on n
    assert not torch.equal(val[0], test[0])
    a = train.sample_batch(4, torch.Generator().manual_seed(7))
    b = train.sample_batch(4, torch.Generator().manual_seed(7))
    c = train.sample_batch(4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(train.sample_batch(4, g), train.sample_batch(4, g))  # a fresh batch each call
    assert a.shape == (4, 1, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(train[5], train[5]) and not torch.equal(train[5], train[6])
    fixed = torch.stack([val[i] for i in range(len(val))] + [test[i] for i in range(len(test))])
    for img in a:
        assert (fixed - img).abs().flatten(1).amax(1).min() > 0.05     # training images are not held-out ones
    other_seed = build_dataset("phantoms", "val", 32, seed=1)
    assert not torch.equal(other_seed[0], val[0])


def test_params_reproduce_images():
    for split in ("train", "val"):
        ds = build_dataset("ellipses", split, 32)
        p = ds.params(3)
        assert torch.allclose(p.render(32)[0], ds[3], atol=1e-6)
        assert p.exact


def test_shards():
    train = build_dataset("ellipses", "train", 16)
    s0, s1 = train.shard(0, 2), train.shard(1, 2)
    a = s0.sample_batch(4, torch.Generator().manual_seed(0))
    b = s1.sample_batch(4, torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)                                   # same generator, disjoint streams
    val = build_dataset("ellipses", "val", 16, n_val=10)
    v0, v1 = val.shard(0, 3), val.shard(2, 3)
    assert len(v0) == 4 and len(v1) == 3
    assert torch.equal(v1[0], val[2]) and torch.equal(v0[3], val[9])
    with pytest.raises(ScoreinvError):
        val.shard(3, 3)


def test_window_option_and_errors():
    soft = build_dataset("ellipses", "val", 32, hu_min=-160, hu_max=240)
    assert soft.describe()["exact_ellipse_list"] is False
    assert float(soft[0].max()) == 1.0                             # bone clipped by the narrow window
    with pytest.raises(ScoreinvError, match="window"):
        build_dataset("ellipses", "val", 32, hu_min=10, hu_max=0)
    with pytest.raises(ScoreinvError, match="split"):
        build_dataset("phantoms", "all", 32)
    with pytest.raises(ScoreinvError, match="batch_size"):
        build_dataset("phantoms", "train", 32).sample_batch(0, torch.Generator())
    with pytest.raises(ScoreinvError, match="generator"):
        build_dataset("phantoms", "train", 32).sample_batch(2, 3)
    with pytest.raises(ScoreinvError, match="render"):
        render(batch_of(SHEPP), 2)


def test_texture_class_masks_partition_the_body():
    from scoreinv.data.phantom_render import ellipse_coverage as cov_of
    g = torch.Generator().manual_seed(9)
    p = P.sample_phantoms(24, g, textured=True, native_size=64)
    cov = cov_of(p.ellipses, 64, antialias=False)
    masks = (p.class_weights @ cov).clamp(0, 1)                         # (B, C, P): fat, soft, bone, lung
    body = cov[:, P.OUTER]
    total = masks.sum(1)
    air = cov[:, P.AIR].sum(1).clamp(0, 1) * (p.ellipses[:, P.AIR, 0] != 0).float().amax(1, keepdim=True)
    # every body pixel belongs to exactly one class, except bowel gas (no texture)
    assert torch.equal(total[body == 0], torch.zeros_like(total[body == 0]))
    inner = (body == 1) & (air == 0)
    assert float((total[inner] - 1).abs().max()) == 0.0
    head = p.kind == 0
    skull = (cov[:, P.INNER] == 1) & (cov[:, P.CORE] == 0)
    assert bool((masks[:, 2][skull & head[:, None]] == 1).all())        # skull is bone, not soft tissue
