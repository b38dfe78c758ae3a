"""Metal-artifact simulation (docs/design.md §3.3) and the MAR measurement operator (§2.4).

`simulate_mar` follows the published simulation on top of `ParallelBeamCT`:

1. image x ∈ [0, 1] -> HU = 4224 x − 1024 -> μ = μ_w (1 + HU/1000) (1/cm), split into water
   and bone (linear blend between 100 and 1500 HU);
2. project each material (line integrals at 70 keV, μ·cm), combine over the 120 kVp spectrum
   (20-120 keV) with each material's attenuation ratio;
3. Poisson noise (2e7 photons + 20 scatter photons, zero counts -> 1; `noise.add_poisson_noise`), cubic water
   beam-hardening correction; FBP (Ram-Lak) -> the artifact-free reference `poly_image`;
4. the same with the implant (titanium, 4.5 g/cm³) as a third material; its line integrals on
   the trace's edge entries (along the detector) divided by 4 (partial volume);
5. metal trace = sinogram entries whose rays cross the implant; LI = linear interpolation
   across the trace in each view; FBP of both sinograms -> `artifact_image`, `li_image`.

Geometry as the paper: N views over 180°, ⌈√2 N⌉ bins over the image diagonal, pixel
0.3 mm × 512/N (`mar_ct`). Images are returned in the [0, 1] scale (metal exceeds 1).

`MarOperator` is the solver's A = P(Λ) A_ct: sinogram entries off the metal trace (and, for
sparse-view MAR, only measured views), zero elsewhere; there is no cheap exact T for the
spatial Radon transform, so solvers use the generic CG `lstsq`. `mar_measurement` converts a
beam-hardening-corrected sinogram into measurements of the [0, 1]-scale image (exact for
monochromatic data: μ is affine in x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ScoreinvError, check_images, check_range
from .base import LinearOperator
from .ct import ParallelBeamCT
from .geometry import ParallelGeometry, dense_angles, sparse_view_indices
from .mar_metal import linear_interpolation, random_implants, trace_edges
from .mar_spectra import (MU_WATER, PHOTONS, SCATTER, MarTables, hu_to_mu, hu_to_unit, mu_to_hu, polychromatic,
                          split_water_bone, unit_to_hu, water_bhc)
from .noise import add_poisson_noise

MM_PER_CM = 10.0
# μ (1/cm) = MU_A x + MU_B for images x in the [0, 1] scale
MU_A = 4.224 * MU_WATER
MU_B = -0.024 * MU_WATER


def mar_pixel_size(n: int) -> float:
    """The paper's pixel side for an N x N image: 0.3 mm × 512 / N."""
    return 0.3 * 512.0 / n


def mar_ct(n: int, pixel_size: float | None = None) -> ParallelBeamCT:
    """The paper's MAR scanner: N views over [0, π), ⌈√2 N⌉ bins spanning the image diagonal."""
    h = mar_pixel_size(n) if pixel_size is None else check_range("pixel_size", pixel_size, 1e-9)
    n_det = math.ceil(math.sqrt(2.0) * n)
    return ParallelBeamCT(ParallelGeometry(n, dense_angles(n), pixel_size=h, n_det=n_det,
                                           det_spacing=math.sqrt(2.0) * n * h / n_det))


@dataclass
class MarResult:
    """Outputs of `simulate_mar` (images (B, 1, N, N) in the [0, 1] scale, sinograms (B, V, D))."""

    artifact_image: torch.Tensor   # FBP of the metal sinogram (metal-artifact image)
    sinogram: torch.Tensor         # metal sinogram after water BHC, line integrals (μ·cm)
    metal_mask: torch.Tensor       # bool (B, 1, N, N): the implant
    metal_trace: torch.Tensor      # bool (B, V, D): rays crossing the implant
    li_image: torch.Tensor         # FBP of the LI-inpainted sinogram
    li_sinogram: torch.Tensor
    poly_image: torch.Tensor       # same scan without metal (noise + beam hardening only)
    ground_truth: torch.Tensor     # the input image


def _to_unit(mu_cm: torch.Tensor) -> torch.Tensor:
    return hu_to_unit(mu_to_hu(mu_cm)).float()


def _fbp_cm(ct: ParallelBeamCT, p: torch.Tensor) -> torch.Tensor:
    """FBP of dimensionless line integrals -> μ in 1/cm (sinogram units are mm · value)."""
    return ct.fbp(p * MM_PER_CM)


def metal_trace(ct: ParallelBeamCT, metal: torch.Tensor) -> torch.Tensor:
    """Sinogram entries (B, V, D) whose rays cross `metal` ((B, 1, N, N) bool)."""
    path = ct.forward(metal.to(torch.float32))
    return path > 1e-6 * ct.geometry.pixel_size


def simulate_mar(image: torch.Tensor, ct: ParallelBeamCT | None = None, metal: torch.Tensor | None = None,
                 metal_name: str = "titanium", photons: float = PHOTONS, scatter: float = SCATTER,
                 n_views: int | None = None, n_implants: int | None = None,
                 generator: torch.Generator | None = None) -> MarResult:
    """Simulate a metal-artifact scan of `image` ((B, 1, N, N) in [0, 1]).

    ct: the scanner (default `mar_ct(N)`); metal: (B, 1, N, N) bool implants (default
    `random_implants` inside the body, `n_implants` each); n_views: sparse-view MAR (the
    images are reconstructed from views round(linspace(0, V−1, n_views)) only; the trace
    and sinogram keep all V rows).
    """
    image = check_images("image", image)
    b, _, n, _ = image.shape
    if image.shape[-1] != n:
        raise ScoreinvError(f"image: MAR needs square slices, got {tuple(image.shape[-2:])}")
    ct = mar_ct(n) if ct is None else ct
    if tuple(ct.image_shape) != (n, n):
        raise ScoreinvError(f"ct operator is for {ct.image_shape} images, image is {(n, n)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    tables = MarTables.load(metal_name)
    if metal is None:
        body = unit_to_hu(image[:, 0]) > -500.0
        metal = torch.stack([random_implants(body[i].cpu(), ct.geometry.pixel_size / MM_PER_CM, n_implants,
                                             generator=g) for i in range(b)])[:, None].to(image.device)
    if metal.shape != image.shape or metal.dtype != torch.bool:
        raise ScoreinvError(f"metal: expected a bool mask of shape {tuple(image.shape)}, got "
                            f"{metal.dtype} {tuple(metal.shape)}")
    if not bool(metal.flatten(1).any(1).all()):
        raise ScoreinvError("metal: every slice needs at least one metal pixel")

    water, bone = split_water_bone(hu_to_mu(unit_to_hu(image.to(torch.float64))))
    p_water = ct.forward(water) / MM_PER_CM
    p_bone = ct.forward(bone) / MM_PER_CM
    poly = water_bhc(add_poisson_noise(polychromatic(torch.stack([p_water, p_bone]), tables), photons, g,
                                       scatter), metal_name)

    trace = metal_trace(ct, metal)
    p_metal = tables.metal_mu * ct.forward(metal.to(torch.float64)) / MM_PER_CM
    edges = trace_edges(trace)
    p_metal = torch.where(edges, p_metal / 4.0, p_metal)
    sino = water_bhc(add_poisson_noise(polychromatic(torch.stack([p_water, p_bone, p_metal]), tables), photons,
                                       g, scatter), metal_name)
    li = linear_interpolation(sino, trace)

    rec_ct, rows = ct, slice(None)
    if n_views is not None:
        idx = sparse_view_indices(ct.geometry.n_views, n_views)
        rec_ct, rows = ct.select_views(idx), torch.as_tensor(idx)
    return MarResult(
        artifact_image=_to_unit(_fbp_cm(rec_ct, sino[:, rows])),
        sinogram=sino.float(), metal_mask=metal, metal_trace=trace,
        li_image=_to_unit(_fbp_cm(rec_ct, li[:, rows])), li_sinogram=li.float(),
        poly_image=_to_unit(_fbp_cm(rec_ct, poly[:, rows])), ground_truth=image)


def mar_measurement(ct: ParallelBeamCT, sinogram: torch.Tensor) -> torch.Tensor:
    """Line integrals (μ·cm) -> measurements of the [0, 1]-scale image: A_ct x = (10 p − MU_B A_ct 1) / MU_A.

    sinogram: (B, V, D) -> (B, V, D) float32 (same scale as `ct.forward(x)`).
    """
    ones = torch.ones(1, 1, *ct.image_shape, dtype=torch.float64, device=sinogram.device)
    return ((sinogram.to(torch.float64) * MM_PER_CM - MU_B * ct.forward(ones)) / MU_A).float()


def mar_keep(trace: torch.Tensor, n_views: int | None = None) -> torch.Tensor:
    """Λ of MAR: True off the metal trace (B, V, D), and only on measured views if n_views is given."""
    keep = ~trace
    if n_views is not None:
        rows = torch.zeros(trace.shape[-2], dtype=torch.bool, device=trace.device)
        rows[torch.as_tensor(sparse_view_indices(trace.shape[-2], n_views), device=trace.device)] = True
        keep = keep & rows[:, None]
    return keep


class MarOperator(LinearOperator):
    """A x = Λ ⊙ A_ct x: the CT sinogram with entries on the metal trace (or unmeasured views) zeroed.

    Args:
        ct: the full (dense-view) CT operator.
        keep: bool (V, D) shared, or (B, V, D) per sample (then batches must have B images).
    Shapes: image (B, 1, N, N) -> (B, V, D); the adjoint is A_ctᵀ (Λ ⊙ y).
    """

    has_decomposition = False

    def __init__(self, ct: LinearOperator, keep):
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool:
            raise ScoreinvError(f"keep: expected a bool mask, got {keep.dtype}")
        if keep.ndim not in (2, 3) or tuple(keep.shape[-2:]) != tuple(ct.meas_shape):
            raise ScoreinvError(f"keep: expected shape {tuple(ct.meas_shape)} or (B, {ct.meas_shape[0]}, "
                                f"{ct.meas_shape[1]}), got {tuple(keep.shape)}")
        self.ct, self.keep = ct, keep
        self.geometry = getattr(ct, "geometry", None)
        self.image_shape, self.meas_shape = tuple(ct.image_shape), tuple(ct.meas_shape)
        frac = float(keep.float().mean())
        self.name = f"MarOperator({self.image_shape[0]}x{self.image_shape[1]}, {100 * frac:.1f}% of the sinogram kept)"

    def _keep(self, ref: torch.Tensor) -> torch.Tensor:
        if self.keep.ndim == 3 and self.keep.shape[0] != ref.shape[0]:
            raise ScoreinvError(f"{self.name}: the mask is per sample for {self.keep.shape[0]} images, "
                                f"got a batch of {ref.shape[0]}")
        return self.keep.to(ref.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ct.forward(x)
        return y * self._keep(y)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self.ct.check_measurement(y)
        return self.ct.adjoint(y * self._keep(y))

    def check_image(self, x, name="image"):
        return self.ct.check_image(x, name)

    def check_measurement(self, y, name="measurement"):
        return self.ct.check_measurement(y, name)
