"""k-space masks: the reference's column counts, accelerations, centre bands, seeding, errors."""
import pytest
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.masks import (equispaced_mask, make_mask, radial_mask, random_mask,
                                    variable_density_mask)


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
    counts = []
    for seed in range(20):
        m = random_mask((8, w), r, cf, seed=seed)
        n_low = round(w * cf)
        pad = (w - n_low + 1) // 2
        assert bool(m[:, pad:pad + n_low].all())
        assert bool((m == m[0:1]).all())
        counts.append(int(m[0].sum()))
    assert abs(sum(counts) / len(counts) - w / r) < 4  # mean W/R, std of the mean ≈ 1.7
    assert torch.equal(random_mask((8, w), r, cf, seed=3), random_mask((8, w), r, cf, seed=3))
    assert not torch.equal(random_mask((8, w), r, cf, seed=3), random_mask((8, w), r, cf, seed=4))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(make_mask("random", (8, w), r, cf, generator=g), random_mask((8, w), r, cf, seed=3))


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
