"""k-space masks: the reference's column counts, accelerations, centre bands, seeding, errors."""
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.masks import (equispaced_mask, fastmri_center_fraction, make_mask, radial_mask,
                                    random_mask, variable_density_mask)


@pytest.mark.parametrize("n_keep,expected", [(10, 10), (30, 31), (60, 60)])
def test_equispaced_reference_counts(n_keep, expected):
    m = equispaced_mask((240, 240), n_keep)
    assert m.shape == (240, 240) and m.dtype == torch.bool
    assert int(m[0].sum()) == expected
    assert bool((m == m[0:1]).all())  # whole columns
    n_low = round(240 * n_keep / 1000)
    pad = (240 - n_low + 1) // 2
    assert bool(m[0, pad:pad + n_low].all())


@pytest.mark.parametrize("r,expected", [(24, 10), (8, 31), (4, 60)])
def test_make_mask_equispaced_acceleration(r, expected):
    assert int(make_mask("equispaced", (240, 240), r)[0].sum()) == expected


def test_random_mask_acceleration_and_centre():
    w, r, cf = 320, 4, 0.08
    for seed in range(20):
        m = random_mask((8, w), r, cf, seed=seed)
        n_low = round(w * cf)
        pad = (w - n_low + 1) // 2
        assert bool(m[:, pad:pad + n_low].all())
        assert bool((m == m[0:1]).all())
        assert int(m[0].sum()) == w // r                 # exactly W/R columns, not only on average
    assert torch.equal(random_mask((8, w), r, cf, seed=3), random_mask((8, w), r, cf, seed=3))
    assert not torch.equal(random_mask((8, w), r, cf, seed=3), random_mask((8, w), r, cf, seed=4))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(make_mask("random", (8, w), r, cf, generator=g), random_mask((8, w), r, cf, seed=3))


@pytest.mark.parametrize("r,n_cols,n_centre", [(4, 64, 20), (8, 32, 10)])
def test_random_mask_fastmri_convention_at_256(r, n_cols, n_centre):
    # fastMRI: centre fraction 0.08 at 4x, 0.04 at 8x -> round(256 x 0.08) = 20, round(256 x 0.04) = 10
    assert fastmri_center_fraction(r) == pytest.approx({4: 0.08, 8: 0.04}[r])
    first = None
    for seed in range(5):
        m = make_mask("random", (256, 256), r, seed=seed)
        assert bool((m == m[0:1]).all()) and int(m[0].sum()) == n_cols
        pad = (256 - n_centre + 1) // 2                   # fastMRI's placement of the centre band
        assert bool(m[0, pad:pad + n_centre].all()) and pad <= 128 < pad + n_centre   # DC (W//2) inside
        outside = torch.cat([m[0, :pad], m[0, pad + n_centre:]])
        assert int(outside.sum()) == n_cols - n_centre
        first = outside if first is None else first
    assert not torch.equal(first, torch.cat([m[0, :pad], m[0, pad + n_centre:]]))   # the rest is drawn at random


@pytest.mark.parametrize("r,n_cols,n_band", [(4, 64, 16), (8, 32, 8)])
def test_equispaced_at_256_keeps_its_centre_band(r, n_cols, n_band):
    # the reference's rule: n_keep = W/R, a centre band of round(W n_keep / 1000) columns
    m = make_mask("equispaced", (256, 256), r)
    assert bool((m == m[0:1]).all()) and int(m[0].sum()) == n_cols
    assert round(256 * n_cols / 1000) == n_band
    pad = (256 - n_band + 1) // 2
    assert bool(m[0, pad:pad + n_band].all()) and pad <= 128 < pad + n_band


@pytest.mark.parametrize("r", [4, 8])
def test_variable_density_at_256(r):
    m = make_mask("variable_density", (256, 256), r, seed=1)
    assert int(m.sum()) == round(256 * 256 / r)
    side = round(0.04 * 256)                              # the calibration square, 10 x 10 around DC
    assert bool(m[128 - side // 2:128 - side // 2 + side, 128 - side // 2:128 - side // 2 + side].all())


def test_random_mask_refuses_an_empty_centre():
    with pytest.raises(ScoreinvError, match="no fully sampled centre"):
        make_mask("random", (256, 256), 200)                # 0.32/200 x 256 rounds to 0 columns
    with pytest.raises(ScoreinvError, match="no fully sampled centre"):
        random_mask((8, 256), 4, center_fraction=0.0)


def test_variable_density_exact_count_and_density():
    m = variable_density_mask((64, 64), 5, center_fraction=0.1, seed=2)
    assert int(m.sum()) == round(64 * 64 / 5)
    side = round(0.1 * 64)
    assert bool(m[32 - side // 2:32 - side // 2 + side, 32 - side // 2:32 - side // 2 + side].all())
    # denser in the centre than at the edge
    assert m[16:48, 16:48].float().mean() > 2 * m[:8].float().mean()


def test_radial_mask():
    m = radial_mask((64, 64), acceleration=4)
    frac = float(m.float().mean())
    assert 0.25 <= frac < 0.3
    two = radial_mask((64, 64), n_spokes=2)  # spokes at 0 and 90 degrees through DC (32, 32)
    assert bool(two[32, :].all()) and bool(two[:, 32].all()) and int(two.sum()) == 127
    assert radial_mask((64, 64), n_spokes=4).sum() < radial_mask((64, 64), n_spokes=8).sum()


def test_mask_errors():
    with pytest.raises(ScoreinvError, match="unknown mask kind"):
        make_mask("spiral", (8, 8), 2)
    with pytest.raises(ScoreinvError, match="acceleration"):
        make_mask("random", (8, 8), 0.5)
    with pytest.raises(ScoreinvError, match="centre band"):
        random_mask((8, 100), 8, center_fraction=0.5)
    with pytest.raises(ScoreinvError, match="n_keep"):
        equispaced_mask((8, 8), 9)
    with pytest.raises(ScoreinvError, match="shape"):
        make_mask("radial", (8,), 2)
