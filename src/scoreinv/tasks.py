"""Inverse problems from images: simulation (CT, MRI, MAR) and the problem builder of eval/tune/demo.

`build_problem(x, options, generator)` turns a batch of ground-truth images (B, 1, S, S) in
[0, 1] into a `Problem`: the operator and measurements the score solvers see, the operator
and measurements the classical baselines see, the naive reconstruction, extras (metal mask)
and the noise record. Task options carry the same names everywhere (`scoreinv simulate`,
`eval`, `tune`, `reconstruct`, `demo`):

- `views` (CT, MAR): measured views, rows round(linspace(0, N-1, views)) of the dense set of
  N angles over [0, π) for N x N images (docs/design.md §3.1). CT default 23 (the paper's setting),
  MAR default all N views.
- `acceleration`, `mask` (MRI): undersampling factor R and k-space mask kind (physics.masks).
- `phase` (MRI): "none" (default: real magnitude images simulated into k-space, as the paper) or
  "smooth": the image becomes |x| e^{iφ} with a random smooth phase φ (`physics.mri.smooth_phase`),
  and the solvers and baselines see the phase-corrected operator A' = P(Λ) fft2c diag(e^{iφ̂}) with
  φ̂ estimated from the fully sampled k-space centre of the data (`physics.mri.PhasedMRI`,
  docs/design.md §3.5); they reconstruct a real image whose magnitude is scored against |x|.
- `coils` (MRI): 1 (default) or C > 1: SENSE, y_c = Λ ⊙ fft2c(S_c x) with C birdcage coil maps
  S_c (`physics.sense.birdcage_maps`) known to solvers and baselines (no calibration error).
- `noise`: CT incident photons per ray (Poisson counts, attenuation of image value 1 =
  `mu_max` per cm; 0 = noise-free); MRI complex Gaussian std relative to the RMS of the
  sampled k-space; MAR photons per ray (0 = the paper's 2e7).

How the solvers see CT data: the sinogram is simulated from the ParallelBeamCT geometry
(pixel 1 mm) without the inverse crime (image upsampled `upsample` times, bicubic, projected
on the finer grid: `project_fine`), Poisson noise added. Classical baselines (fbp, sirt, cgls,
tv) get that sinogram and `ParallelBeamCT`. Score solvers get, by `ct_operator`:
- "radon": the same `ParallelBeamCT` and sinogram; the projection step is solved by CG
  (`cg_iters`), as for any operator without a cheap exact T;
- "fourier": the exact decomposition A = P(Λ) T of `FourierSliceCT` (T = orthonormal 2-D FFT),
  with the sinogram converted by the Fourier-slice theorem (`fourier_from_parallel`; the
  conversion itself differs from the exact forward model by about 9 %, i.e. model mismatch).
DEFAULT_CT_OPERATOR is "radon", the one that gave the higher PSNR when measured (4 test phantoms,
64², 23 views, noise-free, runs/ct64 checkpoint at step 200, 50 levels, same seeds):
projection λ = 1: radon 19.19 ± 0.43 dB vs fourier 18.17 ± 0.53 dB (higher on each image);
projection preset (snr 0.246, λ 0.841): 19.20 vs 18.25; dds: 15.36 vs 14.86 (that checkpoint is
barely trained: FBP gives 33.9 dB on the same data; remeasure with a trained one). Without a model,
hard-projecting the ground truth onto the data keeps it at 51.3 dB (radon, 10 CG iterations)
but 45.7 dB (fourier: conversion mismatch), a ceiling the fourier path imposes on any prior.
The fourier path is about 1.5x faster (no CG). `--ct-operator` reruns the comparison.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .errors import ScoreinvError, check_choice, check_images, check_int, check_range
from .physics.base import LinearOperator

TASKS = ("ct", "mri", "mar")
MRI_PHASES = ("none", "smooth")
CT_OPERATORS = ("fourier", "radon")
DEFAULT_CT_OPERATOR = "radon"
DEFAULT_CT_VIEWS = 23
MU_MAX = 0.81   # attenuation (1/cm) of image value 1: hu_to_mu(3200 HU) = 0.8064, rounded (the noisy tables use 0.81)


# --- CT simulation ---------------------------------------------------------------------------
def ct_geometry(n: int, views: int | None = None, dense_views: int | None = None, fan: bool = False,
                pixel_size: float | None = None, detectors: int | None = None, det_spacing: float | None = None,
                source_distance: float | None = None, detector_distance: float | None = None):
    """Scan geometry for N x N images: parallel beam, views = rows round(linspace(0, dense-1, views))
    of `dense_views` (default N) angles over [0, π); fan beam: `views` (default dense) source
    angles evenly spaced over 2π. Pixel side default 1 mm."""
    from .physics.geometry import FanGeometry, ParallelGeometry, dense_angles, sparse_view_indices
    dense = n if dense_views is None else dense_views
    dense = check_int("--dense-views", dense)
    if fan:
        angles = dense_angles(views or dense, 2 * math.pi)
    else:
        angles = dense_angles(dense, math.pi)
        if views is not None:
            angles = angles[sparse_view_indices(dense, views)]
    pixel = 1.0 if pixel_size is None else pixel_size
    if fan:
        return FanGeometry(n, angles, pixel, source_distance, detector_distance, n_det=detectors,
                           det_spacing=det_spacing)
    return ParallelGeometry(n, angles, pixel, n_det=detectors, det_spacing=det_spacing)


def ct_operator(geometry) -> LinearOperator:
    """ParallelBeamCT or FanBeamCT of `geometry`."""
    from .physics.measurements import _build_ct, geometry_spec
    return _build_ct({"geometry": geometry_spec(geometry)}, {"angles": geometry.angles})


def project_fine(geometry, x: torch.Tensor, factor: int, max_nnz: float = 3e7) -> torch.Tensor:
    """Sinograms (N, V, D) of x (N, 1, S, S) upsampled `factor` times (bicubic, clamped at 0) and
    projected with the same physical geometry on the finer grid (no inverse crime).

    The fine system matrix is built for chunks of views (at most about `max_nnz` non-zeros
    each, ≈ 1.3 non-zeros per pixel and view) so memory stays bounded; the chunk matrices are
    dropped from the projector cache after use.
    """
    import torch.nn.functional as F

    from .physics.projector import clear_cache
    fine = geometry.refine(factor)
    chunk = max(1, int(max_nnz // (1.5 * fine.n ** 2)))
    n_views = geometry.n_views
    out = torch.empty(x.shape[0], n_views, geometry.n_det)
    for v0 in range(0, n_views, chunk):
        op = ct_operator(fine.with_angles(fine.angles[v0:v0 + chunk]))
        for b0 in range(0, x.shape[0], 8):
            xf = F.interpolate(x[b0:b0 + 8].float(), scale_factor=factor, mode="bicubic", align_corners=False)
            out[b0:b0 + 8, v0:v0 + chunk] = op.forward(xf.clamp_min(0.0))
        if chunk < n_views:
            clear_cache()
    return out


@dataclass
class Simulation:
    """A simulated acquisition: operator, measurements (B, *meas), noise record, extras."""
    op: LinearOperator
    y: torch.Tensor
    noise: dict
    extras: dict = field(default_factory=dict)


def simulate_ct(x: torch.Tensor, generator: torch.Generator, geometry, upsample: int = 4, noise: float = 0.0,
                mu_max: float = MU_MAX) -> Simulation:
    """Sinograms of x (B, 1, S, S) projected on an `upsample`-times finer grid (1 = same grid),
    with Poisson noise of `noise` photons per ray (0 = none)."""
    op = ct_operator(geometry)
    upsample = check_int("--upsample", upsample)
    y = project_fine(geometry, x, int(upsample)) if upsample > 1 else op.forward(x.float())
    check_range("noise (CT photons per ray)", noise, 0.0)
    record = {"model": "none", "level": 0.0}
    if noise > 0:
        from .physics.noise import add_poisson_noise
        # line integrals p = y · μ_max / 10 (μ·cm; image value 1 = μ_max per cm, y in mm · value)
        scale = check_range("mu_max", mu_max, 1e-9) / 10.0
        y = (add_poisson_noise(y.double() * scale, noise, generator) / scale).float()
        record = {"model": "poisson", "level": float(noise), "photons": float(noise), "mu_max_per_cm": float(mu_max)}
    return Simulation(op, y, record)


def check_mri_acquisition(phase: str | None, coils: int | None) -> tuple[str, int]:
    """(phase, coils) validated with None meaning "none" and 1: a smooth phase is simulated for single-coil
    MRI only."""
    phase = check_choice("--phase", "none" if phase is None else phase, MRI_PHASES)
    coils = check_int("--coils", 1 if coils is None else coils)
    if phase != "none" and coils != 1:
        raise ScoreinvError(f"--phase {phase}: a smooth image phase is simulated for single-coil MRI only "
                            f"(--coils 1), got --coils {coils}")
    return phase, coils


def simulate_mri(x: torch.Tensor, generator: torch.Generator, mask: str = "equispaced", acceleration: float = 4.0,
                 center_fraction: float | None = None, coils: int = 1, noise: float = 0.0,
                 phase: str | None = None) -> Simulation:
    """k-space of x (B, 1, H, W): single coil (CartesianMRI) or SENSE with birdcage maps, and
    complex Gaussian noise of std `noise` x RMS of the sampled k-space. A mask that does not sample the
    k-space centre (the reference's equispaced rule at small sizes and high accelerations) is refused
    (`make_mask(..., require_centre=True)`).

    phase "smooth" (single coil): k-space of |x| e^{iφ}, φ = `smooth_phase` drawn after the mask and
    before the noise; the operator returned is `PhasedMRI` with the phase estimated from the noisy
    data's centre (docs/design.md §3.5), extras["true_phase"] holds φ (B, H, W), and the noise record
    the phase misfit σ_φ of (D32) per slice ("phase_misfit"), which the solvers take as noise."""
    from .physics.masks import make_mask
    from .physics.mri import CartesianMRI, estimate_phase, kspace_rms, PhasedMRI, smooth_phase
    from .physics.sense import SenseMRI, birdcage_maps
    shape = tuple(x.shape[-2:])
    phase, coils = check_mri_acquisition(phase, coils)
    check_range("noise (MRI relative standard deviation)", noise, 0.0)
    m = make_mask(mask, shape, acceleration, center_fraction, generator=generator, require_centre=True)
    op = CartesianMRI(m) if coils == 1 else SenseMRI(birdcage_maps(int(coils), shape), m)
    extras = {}
    if phase == "smooth":
        if float(x.min()) < 0:
            raise ScoreinvError("--phase smooth: the images are magnitudes and must be >= 0")
        phi = smooth_phase(x.shape[0], shape, generator, dtype=torch.float64 if x.dtype == torch.float64
                           else torch.float32)
        y = PhasedMRI(m, phi).forward(x)
        extras["true_phase"] = phi
    else:
        y = op.forward(x)
    record = {"model": "none", "level": 0.0}
    if noise > 0:
        from .physics.noise import add_complex_gaussian
        sigma = noise * kspace_rms(y, op.mask)  # (B,): complex std, E|n|^2 = sigma^2
        y = add_complex_gaussian(y, sigma / math.sqrt(2), generator, op.mask)
        record = {"model": "gaussian", "level": float(noise), "sigma": sigma.tolist(),
                  "note": "complex Gaussian on sampled k-space, E|n|^2 = sigma^2, sigma = level x RMS of "
                          "the sampled k-space (per-component std sigma / sqrt(2))"}
    if phase == "smooth":   # the phase the solvers see comes from the (noisy) data only
        from .sampling.inputs import phase_misfit
        op = PhasedMRI(m, estimate_phase(y, m))
        record["phase_misfit"] = phase_misfit(op, y).tolist()     # σ_φ of (D32), per slice, computed once
    return Simulation(op, y, record, extras)


def simulate_mar(x: torch.Tensor, generator: torch.Generator, views: int | None = None,
                 pixel_size: float | None = None, implants: int | None = None, metal: str = "titanium",
                 noise: float = 0.0) -> Simulation:
    """Metal-artifact scans of x (B, 1, S, S) (docs/design.md §3.3): the MAR operator (sinogram off the
    metal trace, measured views only), its measurements and the images (extras)."""
    from .physics.mar import MarOperator, mar_ct, mar_keep, mar_measurement
    from .physics.mar import simulate_mar as _simulate
    from .physics.mar_spectra import PHOTONS
    ct = mar_ct(x.shape[-1], pixel_size)
    photons = check_range("noise (MAR photons per ray)", noise, 0.0) or PHOTONS
    r = _simulate(x, ct, metal_name=metal, photons=photons, n_views=views, n_implants=implants,
                  generator=generator)
    keep = mar_keep(r.metal_trace, views)
    op = MarOperator(ct, keep)
    y = mar_measurement(ct, r.sinogram) * keep
    extras = {"artifact_image": r.artifact_image, "li_image": r.li_image, "poly_image": r.poly_image,
              "metal_mask": r.metal_mask, "metal_trace": r.metal_trace, "sinogram": r.sinogram}
    record = {"model": "poisson", "level": photons, "photons": photons, "scatter": 20,
              "note": "polychromatic 120 kVp, water beam-hardening corrected"}
    return Simulation(op, y, record, extras)


# --- task options and problems ---------------------------------------------------------------
@dataclass(frozen=True)
class TaskOptions:
    """Options of one task; `task_options` builds validated ones with the defaults filled in."""
    task: str
    views: int | None = None
    acceleration: float | None = None
    mask: str | None = None
    noise: float = 0.0
    ct_operator: str | None = None
    upsample: int | None = None
    phase: str | None = None          # MRI: None (= "none") or "smooth"
    coils: int | None = None          # MRI: None (= 1, single coil) or C > 1 (SENSE, birdcage maps)

    def to_dict(self) -> dict:
        """The options as stored in eval/tune records. MRI: `phase` and `coils` only when set, and for random
        masks the mask rule (exact column count, fastMRI centre 0.32/R since issue 13), so a run
        resumed across that change is refused instead of mixing masks."""
        d = dataclasses.asdict(self)
        if not self.smooth_phase:
            del d["phase"]
        if not self.coils:
            del d["coils"]
        if self.task == "mri" and self.mask == "random":
            d["mask_rule"] = "exact round(W/R) columns, centre fraction 0.32/R"
        return d

    @property
    def smooth_phase(self) -> bool:
        return self.task == "mri" and self.phase == "smooth"

    @property
    def decomposes(self) -> bool:
        """Whether the operator the score solvers see (`build_problem`) has the A = P(Λ)T decomposition:
        single-coil Cartesian MRI without a phase, CT with --ct-operator fourier."""
        if self.task == "mri":
            return not self.coils and not self.smooth_phase
        return self.task == "ct" and self.ct_operator == "fourier"

    def setting(self) -> str:
        """A short name of the setting, e.g. 'views=23 noise=0 operator=radon'."""
        if self.task == "mri":
            s = f"R={self.acceleration:g} mask={self.mask}" + (" phase=smooth" if self.smooth_phase else "")
            s += f" coils={self.coils}" if self.coils else ""
        else:
            s = f"views={self.views if self.views is not None else 'all'}"
        s += f" noise={self.noise:g}"
        return s + (f" operator={self.ct_operator}" if self.task == "ct" else "")

    def slug(self) -> str:
        """The setting for file and study names, e.g. 'v23-n0-radon', 'R8-equispaced-n0'."""
        if self.task == "mri":
            return (f"R{self.acceleration:g}-{self.mask}-n{self.noise:g}" + ("-phase" if self.smooth_phase else "")
                    + (f"-c{self.coils}" if self.coils else ""))
        v = f"v{self.views if self.views is not None else 'all'}-n{self.noise:g}"
        return v + (f"-{self.ct_operator}" if self.task == "ct" else "")


def task_options(task: str, views: int | None = None, acceleration: float | None = None, mask: str | None = None,
                 noise: float | None = None, ct_operator: str | None = None,
                 upsample: int | None = None, phase: str | None = None, coils: int | None = None) -> TaskOptions:
    """Validate options for `task` and fill in defaults; an option given for another task raises.
    MRI `coils`: 1 (or None) single coil, C > 1 SENSE with C simulated birdcage coil maps (known to
    the solvers, `physics.sense`); not with a smooth phase (simulated for single coil only)."""
    from .physics.masks import MASK_KINDS
    check_choice("task", task, TASKS)
    given = {"--views": views, "--acceleration": acceleration, "--mask": mask, "--ct-operator": ct_operator,
             "--upsample": upsample, "--phase": phase, "--coils": coils}
    allowed = {"ct": ("--views", "--ct-operator", "--upsample"), "mar": ("--views",),
               "mri": ("--acceleration", "--mask", "--phase", "--coils")}[task]
    wrong = [k for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise ScoreinvError(f"{', '.join(wrong)} do(es) not apply to task {task!r}; its options are "
                            f"{', '.join(allowed)} and --noise")
    noise = check_range("--noise", 0.0 if noise is None else noise, 0.0)
    if views is not None:
        views = check_int("--views", views)
    if task == "mri":
        acceleration = check_range("--acceleration", 4.0 if acceleration is None else acceleration, 1.0)
        mask = check_choice("--mask", "equispaced" if mask is None else mask, MASK_KINDS)
        phase, coils = check_mri_acquisition(phase, coils)
        return TaskOptions(task, None, float(acceleration), mask, noise, phase=None if phase == "none" else phase,
                           coils=None if coils == 1 else coils)
    if task == "ct":
        views = DEFAULT_CT_VIEWS if views is None else int(views)
        ct_operator = check_choice("--ct-operator", ct_operator or DEFAULT_CT_OPERATOR, CT_OPERATORS)
        upsample = 4 if upsample is None else upsample
        upsample = check_int("--upsample", upsample)
        return TaskOptions(task, views, None, None, noise, ct_operator, int(upsample))
    return TaskOptions(task, None if views is None else int(views), None, None, noise)


@dataclass
class Problem:
    """One batch of an inverse problem (all tensors on the CPU).

    x: (B, 1, S, S) ground truth in [0, 1]; op, y: what the score solvers see; baseline_op,
    baseline_y: what the classical baselines see (CT: the sinogram; otherwise op, y);
    naive: (B, 1, S, S) the classical first look (CT: FBP, MRI: zero-filled, MAR: the metal-artifact
    image); extras: MAR metal_mask (B, 1, S, S) bool, metal_trace, li_image, artifact_image.
    """
    options: TaskOptions
    x: torch.Tensor
    op: LinearOperator
    y: torch.Tensor
    baseline_op: LinearOperator
    baseline_y: torch.Tensor
    naive: torch.Tensor
    naive_name: str
    noise: dict
    extras: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.options.task

    @property
    def metal_mask(self) -> torch.Tensor | None:
        return self.extras.get("metal_mask")


def build_problem(x: torch.Tensor, options: TaskOptions, generator: torch.Generator) -> Problem:
    """Simulate measurements of the images x (B, 1, S, S) in [0, 1] for `options` (module docstring)."""
    if not isinstance(options, TaskOptions):
        raise ScoreinvError(f"options: expected TaskOptions (from task_options), got {type(options).__name__}")
    x = check_images("images", x).float().cpu()
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ScoreinvError(f"images: expected values in [0, 1], got [{float(x.min()):g}, {float(x.max()):g}]")
    n = x.shape[-1]
    if options.task in ("ct", "mar") and x.shape[-2] != n:
        raise ScoreinvError(f"images: {options.task} needs square slices, got {tuple(x.shape[-2:])}")
    if options.views is not None and options.views > n:
        raise ScoreinvError(f"--views {options.views}: at most the {n} dense angles of {n}x{n} images")
    if options.task == "ct":
        sim = simulate_ct(x, generator, ct_geometry(n, options.views), options.upsample, options.noise)
        op = sim.op
        if options.ct_operator == "fourier":
            from .physics.fourier_slice import fourier_from_parallel
            op, y = fourier_from_parallel(sim.op, sim.y)
        else:
            y = sim.y
        return Problem(options, x, op, y, sim.op, sim.y, sim.op.fbp(sim.y), "FBP", sim.noise)
    if options.task == "mri":
        sim = simulate_mri(x, generator, options.mask, options.acceleration, coils=options.coils or 1,
                           noise=options.noise, phase=options.phase)
        return Problem(options, x, sim.op, sim.y, sim.op, sim.y, sim.op.adjoint(sim.y), "zero-filled", sim.noise,
                       sim.extras)
    sim = simulate_mar(x, generator, options.views, noise=options.noise)
    ex = {k: sim.extras[k] for k in ("metal_mask", "metal_trace", "li_image", "artifact_image")}
    return Problem(options, x, sim.op, sim.y, sim.op, sim.y, sim.extras["artifact_image"], "metal-artifact FBP",
                   sim.noise, ex)


def repeat_operator(op: LinearOperator, k: int) -> LinearOperator:
    """The operator for a batch repeated k times along dim 0 (y.repeat(k, ...)): per-sample
    masks (MAR's keep of shape (B, V, D)) and phases (PhasedMRI) are repeated; shared operators are
    returned as they are."""
    from .physics.mri import PhasedMRI
    if isinstance(op, PhasedMRI):
        return op.repeat(k)
    keep = getattr(op, "keep", None)
    if k == 1 or keep is None or keep.ndim != 3:
        return op
    from .physics.mar import MarOperator
    return MarOperator(op.ct, keep.repeat(k, 1, 1))


def slice_operator(op: LinearOperator, sl: slice) -> LinearOperator:
    """The operator of samples `sl` of a batch: per-sample masks (MAR's keep of shape (B, V, D))
    and phases (PhasedMRI) are sliced; shared operators are returned as they are."""
    from .physics.mri import PhasedMRI
    if isinstance(op, PhasedMRI):
        return op.select(sl)
    keep = getattr(op, "keep", None)
    if keep is None or keep.ndim != 3:
        return op
    from .physics.mar import MarOperator
    return MarOperator(op.ct, keep[sl])


__all__ = ["TASKS", "MRI_PHASES", "CT_OPERATORS", "DEFAULT_CT_OPERATOR", "DEFAULT_CT_VIEWS", "ct_geometry",
           "ct_operator", "project_fine", "Simulation", "simulate_ct", "simulate_mri", "simulate_mar", "TaskOptions",
           "task_options", "Problem", "build_problem", "repeat_operator", "slice_operator"]
