"""Polychromatic X-ray physics for metal-artifact simulation (docs/design.md §3.3).

- `MarTables`: the physical tables shipped in `scoreinv/resources/mar` (GE 120 kVp spectrum,
  mass attenuation of water, cortical bone and metals), loaded through importlib.resources.
- HU <-> [0, 1] image scale (HU in [−1024, 3200]) and HU <-> linear attenuation
  μ = (HU / 1000) μ_w + μ_w, μ_w = 0.192 /cm.
- `split_water_bone`: water (HU ≤ 100) / bone (HU ≥ 1500) with a linear blend in between.
- `polychromatic`: p = −log(Σ_E S(E) exp(−Σ_m r_m(E) p_m) / Σ_E S(E)), E = 20..120 keV,
  r_m(E) = μ_m(E) / μ_m(70 keV), p_m the material's line integral at 70 keV.
- `water_bhc`: the cubic water beam-hardening correction p_70 ≈ c1 p + c2 p² + c3 p³, fitted by
  least squares over 0–50 cm of water (0.05 cm steps).

Written by hand (no library models a polychromatic CT scan with these tables); it follows
the published simulation so that numbers are comparable.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ..errors import ScoreinvError, check_choice, check_finite

HU_MIN, HU_MAX = -1024.0, 3200.0   # the reference's [0, 1] <-> HU window: every reader and writer uses it
MU_WATER = 0.192  # 1/cm at 70 keV, as the reference simulation
KEV = 70
KVP = 120
ENERGIES = np.arange(20, KVP + 1)  # keV
PHOTONS = 2e7
SCATTER = 20.0
WATER_HU, BONE_HU = 100.0, 1500.0
METALS = {"titanium": ("MiuofTi", 4.5), "iron": ("MiuofFe", 7.8), "copper": ("MiuofCu", 8.9),
          "gold": ("MiuofAu", 2.0)}  # densities (g/cm^3) of the reference simulation (gold sic)
_MASS_ATTEN_COLUMN = 6  # total attenuation with coherent scattering, cm^2/g


def _load(name: str) -> np.ndarray:
    try:
        ref = resources.files("scoreinv") / "resources" / "mar" / f"{name}.mat"
        with resources.as_file(ref) as p:
            from scipy.io import loadmat
            return np.asarray(loadmat(str(p))[name], dtype=np.float64)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        raise ScoreinvError(f"MAR table {name}.mat missing or unreadable in scoreinv/resources/mar ({e}); "
                            "reinstall the package") from e


@dataclass(frozen=True)
class MarTables:
    """Spectrum S(E) and attenuation ratios r_m(E) = μ_m(E)/μ_m(70 keV), E = 20..120 keV.

    ratios: (M, E) for materials (water, bone, metal); metal_mu: metal μ at 70 keV in 1/cm.
    """

    spectrum: np.ndarray
    ratios: np.ndarray
    metal_mu: float
    water_mass_mu: float

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def load(metal: str = "titanium") -> "MarTables":
        check_choice("metal", metal, METALS)
        spec = _load("GE14Spectrum120KVP")[ENERGIES - 1, 1]
        var, density = METALS[metal]
        mats = [_load("MiuofH2O"), _load("MiuofBONE_Cortical_ICRU44"), _load(var)]
        mu = np.stack([m[ENERGIES - 1, _MASS_ATTEN_COLUMN] for m in mats])
        mu70 = np.array([m[KEV - 1, _MASS_ATTEN_COLUMN] for m in mats])
        return MarTables(spectrum=spec, ratios=mu / mu70[:, None], metal_mu=float(density * mu70[2]),
                         water_mass_mu=float(mu70[0]))


def hu_to_unit(hu, hu_min: float = HU_MIN, hu_max: float = HU_MAX):
    """HU -> image scale: (HU - hu_min) / (hu_max - hu_min), not clipped; the one HU mapping of the
    package. The default window is the reference's: (HU + 1024) / 4224 (−1024 -> 0, 3200 -> 1).
    Works on floats, NumPy arrays and tensors; callers that need [0, 1] clip the result."""
    return (hu - hu_min) / (hu_max - hu_min)


def unit_to_hu(x, hu_min: float = HU_MIN, hu_max: float = HU_MAX):
    """Image scale -> HU, the inverse of `hu_to_unit`: x · (hu_max − hu_min) + hu_min (default x · 4224 − 1024)."""
    return x * (hu_max - hu_min) + hu_min


def hu_to_mu(hu):
    """HU -> linear attenuation at 70 keV in 1/cm: μ_w (1 + HU/1000)."""
    return hu / 1000.0 * MU_WATER + MU_WATER


def mu_to_hu(mu):
    """Linear attenuation (1/cm) -> HU."""
    return (mu - MU_WATER) * 1000.0 / MU_WATER


def split_water_bone(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split μ (1/cm, any shape) into water and bone parts (sum = μ), linear blend in between."""
    tw, tb = hu_to_mu(WATER_HU), hu_to_mu(BONE_HU)
    frac = ((mu - tw) / (tb - tw)).clamp(0.0, 1.0)
    bone = frac * mu
    return mu - bone, bone


def polychromatic(p70: torch.Tensor, tables: MarTables) -> torch.Tensor:
    """Combine material line integrals over the spectrum.

    p70: (M, ...) line integrals (dimensionless, μ·cm) at 70 keV of the first M materials in
    (water, bone, metal). Returns the polychromatic line integral, shape (...), float64.
    """
    p70 = check_finite("material line integrals", p70).to(torch.float64)
    m = p70.shape[0]
    if not 1 <= m <= tables.ratios.shape[0]:
        raise ScoreinvError(f"expected 1 to {tables.ratios.shape[0]} materials on axis 0, got {m}")
    ratios = torch.as_tensor(tables.ratios[:m], device=p70.device)
    spec = torch.as_tensor(tables.spectrum, device=p70.device)
    total = torch.zeros(p70.shape[1:], dtype=torch.float64, device=p70.device)
    shape = (m,) + (1,) * (p70.ndim - 1)
    for e in range(spec.shape[0]):  # loop over energies: memory stays one sinogram
        total = total + spec[e] * torch.exp(-(ratios[:, e].reshape(shape) * p70).sum(0))
    return -torch.log(total / spec.sum())


@functools.lru_cache(maxsize=8)
def water_bhc_coefficients(metal: str = "titanium") -> tuple[float, float, float]:
    """(c1, c2, c3) with c1 p + c2 p² + c3 p³ ≈ p_70 for water, least squares over 0–50 cm."""
    t = MarTables.load(metal)
    thickness = np.arange(0.0, 50.0 + 1e-9, 0.05)
    p70 = t.water_mass_mu * thickness
    pk = polychromatic(torch.as_tensor(p70)[None], t).numpy()
    a = np.stack([pk, pk ** 2, pk ** 3], axis=1)
    coef = np.linalg.lstsq(a, p70, rcond=None)[0]
    return tuple(float(c) for c in coef)


def water_bhc(p: torch.Tensor, metal: str = "titanium") -> torch.Tensor:
    """Apply the cubic water beam-hardening correction to polychromatic line integrals."""
    c1, c2, c3 = water_bhc_coefficients(metal)
    return p * (c1 + p * (c2 + p * c3))
