"""MAR physics without a CT operator: tables, spectrum, noise, beam hardening, implants, LI."""
import numpy as np
import pytest
import scipy.ndimage
import torch

from scoreinv.errors import ScoreinvError
from scoreinv.physics.mar_metal import (implant_mask, linear_interpolation, random_implants, segment_metal,
                                        trace_edges)
from scoreinv.physics.mar_spectra import (MarTables, hu_to_mu, hu_to_unit, mu_to_hu, polychromatic,
                                          split_water_bone, unit_to_hu, water_bhc)


def test_tables_and_units():
    t = MarTables.load("titanium")
    assert t.spectrum.shape == (101,) and t.ratios.shape == (3, 101)
    assert np.allclose(t.ratios[:, 70 - 20], 1.0)  # ratio 1 at 70 keV
    assert abs(t.water_mass_mu - 0.1929) < 1e-4
    assert abs(t.metal_mu - 4.5 * 0.5361) < 1e-6  # Ti: 4.5 g/cm^3 x 0.5361 cm^2/g at 70 keV
    assert (np.diff(t.ratios[0]) < 0).all()  # attenuation falls with energy
    assert hu_to_unit(-1024.0) == 0 and hu_to_unit(3200.0) == 1
    assert abs(unit_to_hu(hu_to_unit(123.0)) - 123.0) < 1e-9
    assert hu_to_mu(0.0) == pytest.approx(0.192) and hu_to_mu(-1000.0) == pytest.approx(0.0)
    assert mu_to_hu(hu_to_mu(1500.0)) == pytest.approx(1500.0)
    with pytest.raises(ScoreinvError, match="unknown metal"):
        MarTables.load("unobtainium")


def test_split_water_bone():
    hu = torch.tensor([-1000.0, 0.0, 100.0, 800.0, 1500.0, 2500.0], dtype=torch.float64)
    mu = hu_to_mu(hu)
    water, bone = split_water_bone(mu)
    assert torch.allclose(water + bone, mu)
    assert torch.all(bone[:3] == 0) and torch.all(water[4:] == 0)
    assert bone[3] == pytest.approx(float(mu[3]) * 0.5)  # halfway between 100 and 1500 HU


def test_polychromatic_monochromatic_limits_and_hardening():
    t = MarTables.load()
    p = torch.linspace(0, 8, 17, dtype=torch.float64)
    poly = polychromatic(p[None], t)
    assert abs(float(poly[0])) < 1e-12
    # beam hardening: the effective attenuation per unit of p decreases with thickness
    slope = poly[1:] / p[1:]
    assert torch.all(slope[1:] < slope[:-1])
    # closed form for a two-energy spectrum
    t2 = MarTables(spectrum=np.array([1.0, 3.0]), ratios=np.array([[2.0, 0.5]]), metal_mu=1.0, water_mass_mu=0.2)
    ref = -torch.log((1 * torch.exp(-2 * p) + 3 * torch.exp(-0.5 * p)) / 4)
    assert torch.allclose(polychromatic(p[None], t2), ref)


def test_water_bhc_linearises_water():
    t = MarTables.load()
    thick = torch.linspace(0.5, 45, 30, dtype=torch.float64)
    p70 = t.water_mass_mu * thick
    poly = polychromatic(p70[None], t)
    corrected = water_bhc(poly)
    assert float(((poly - p70).abs() / p70).max()) > 0.05  # uncorrected: off by > 5 % (0.5 in p)
    assert float((corrected - p70).abs().max()) < 0.015  # corrected: cubic fit error only
    assert float(((corrected - p70).abs() / p70)[p70 > 0.5].max()) < 0.02


def test_linear_interpolation_matches_numpy():
    g = torch.Generator().manual_seed(1)
    sino = torch.randn(2, 5, 30, generator=g, dtype=torch.float64)
    trace = torch.zeros(2, 5, 30, dtype=torch.bool)
    trace[:, :, 8:14] = True
    trace[0, 1, 0:3] = True  # at the left end
    trace[1, 2, 25:] = True  # at the right end
    out = linear_interpolation(sino, trace)
    for b in range(2):
        for v in range(5):
            ok = ~trace[b, v].numpy()
            ref = np.interp(np.arange(30), np.nonzero(ok)[0], sino[b, v].numpy()[ok])
            assert np.allclose(out[b, v].numpy(), ref)
    full = torch.ones(1, 1, 30, dtype=torch.bool)
    assert torch.equal(linear_interpolation(sino[:1, :1], full), sino[:1, :1])


def test_trace_edges_matches_scipy_erosion():
    g = torch.Generator().manual_seed(2)
    trace = torch.rand(6, 40, generator=g) > 0.4
    ref = trace.numpy() ^ scipy.ndimage.binary_erosion(trace.numpy(), structure=np.ones((1, 3)))
    assert np.array_equal(trace_edges(trace).numpy(), ref)


def test_implants():
    disc = implant_mask("disc", (64, 64), (0.0, 0.0), 0.1, width_cm=1.0)
    assert abs(int(disc.sum()) - np.pi * 25) < 12
    rod = implant_mask("rod", (64, 64), (0.0, 0.0), 0.1, angle=0.0, length_cm=3.0, width_cm=0.5)
    ys, xs = rod.nonzero(as_tuple=True)
    assert 29 <= int(xs.max() - xs.min()) + 1 <= 31 and 4 <= int(ys.max() - ys.min()) + 1 <= 6
    screw = implant_mask("screw", (64, 64), (0.0, 0.0), 0.05, length_cm=2.0, width_cm=0.4)
    assert screw.sum() > 0
    body = torch.zeros(64, 64, dtype=torch.bool)
    body[20:44, 20:44] = True
    a = random_implants(body, 0.06, generator=torch.Generator().manual_seed(5))
    b = random_implants(body, 0.06, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.any()
    several = random_implants(body, 0.06, n=3, kinds=("disc",), generator=torch.Generator().manual_seed(1))
    _, n_comp = scipy.ndimage.label(several.numpy())
    assert 1 <= n_comp <= 3
    with pytest.raises(ScoreinvError, match="unknown implant kind"):
        random_implants(body, 0.06, kinds=("nail",))


def test_segment_metal():
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 8, 8] = float(hu_to_unit(8000.0))
    img[0, 0, 2, 2] = 1.0  # 3200 HU: bone-like, not metal
    seg = segment_metal(img)
    assert int(seg.sum()) == 9 and bool(seg[0, 0, 7:10, 7:10].all())
    assert int(segment_metal(img, smear=1).sum()) == 1


def test_mar_operator_to_moves_the_wrapped_ct_operator_too():
    from scoreinv.physics.mar import MarOperator, mar_ct
    ct = mar_ct(16)
    op = MarOperator(ct, torch.ones(ct.meas_shape, dtype=torch.bool))
    moved = []
    ct_to = ct.to
    ct.to = lambda device: (moved.append(device), ct_to(device))[1]
    assert op.to("cpu") is op
    assert moved == ["cpu"]                      # the inner CT went along, not only the mask
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op.forward(x), ct.forward(x))


def test_a_warm_start_from_tv_is_refused_for_mar_and_names_the_flag(tmp_path):
    from scoreinv.physics.mar import MarOperator, mar_ct
    from scoreinv.sampling.inputs import warm_image
    from scoreinv.sampling import settings as S
    from scoreinv.sampling.settings import resolve, solver_config
    ct = mar_ct(16)
    op = MarOperator(ct, torch.ones(ct.meas_shape, dtype=torch.bool))
    y = op.forward(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ScoreinvError, match="solver.warm_start = tv: not for MAR.*warm_start classical"):
        warm_image(op, y, solver_config("diffpir", warm_start="tv"))          # library use, no task: the operator
    with pytest.raises(ScoreinvError, match="solver.warm_start = tv: not for MAR"):
        solver_config("diffpir", "mar", warm_start="tv")
    with pytest.raises(ScoreinvError, match="solver.warm_start = tv: not for MAR"):   # commands: before any work
        resolve("mar", "diffpir", sets={"solver": {"warm_start": "tv"}})
    assert resolve("ct", "diffpir", sets={"solver": {"warm_start": "tv"}}).cfg.warm_start == "tv"
    bad = tmp_path / "mar-tv.yaml"                                              # nor a preset that asks for it
    S.write_preset(bad, S.Preset("diffpir", "mar", {"warm_start": "tv", "steps": 20}, {}))
    with pytest.raises(ScoreinvError, match="solver.warm_start = tv: not for MAR"):
        S.load_preset(bad)
    assert warm_image(op, y, solver_config("diffpir", "mar", warm_start="classical")).shape == (1, 1, 16, 16)
