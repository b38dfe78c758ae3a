"""What a solver needs besides y: the measurement noise level and the classical reconstruction
(docs/design.md §2.11).

- `measurement_sigma`: the noise standard deviation σ_y of the data the solver sees, read from the
  measurement's noise record (the `noise` entry of a measurement file, `Problem.noise`), so that
  nothing has to be asked of the user: 0 for noise-free data; MRI (complex Gaussian) the record's
  per-slice σ (E|n|² = σ², per sampled coefficient); CT and MAR (Poisson counts) the delta-method
  variance of a log-transformed count, var(p) ≈ e^p / I0 for a line integral p (μ·cm) and I0
  photons per ray (scatter and the polychromatic spectrum ignored), carried to the solver's
  measurement scale (CT: y = 10 p / μ_max; MAR: `mar_measurement`) and, for the Fourier-slice
  operator, through its sinogram conversion. A scalar per slice: the root mean variance over the
  measured entries (the Poisson noise is heteroscedastic; DDRM and DiffPIR take one level).
  Data seen through an estimated phase (`PhasedMRI`, docs/design.md §3.5) add the phase misfit
  σ_φ of (D32): no real image fits them exactly, so a solver that trusted them as noise-free
  would fit the misfit (brain2 8x: 11 dB, below the zero-filled image).
- `classical`: the classical reconstruction a warm start begins from: FBP for CT sinograms,
  normalized MAR (`nmar`, the stronger of the two classical MAR methods: 35.1 against LI's
  30.3 dB on a lung2 slice at 256) for MAR, the zero-filled image of the conjugate-completed data for
  operators with the decomposition (MRI; the direct Fourier reconstruction of Fourier-slice CT),
  else the minimum-norm least-squares solution by conjugate gradient.
- `warm_image`: the image a warm start begins from: `classical` above (`warm_start: classical`), or
  the TV reconstruction (`warm_start: tv`; CS-TV for MRI: the `tv` baseline, PDHG, box [0, 1] for real
  images, weight `warm_weight` relative to ‖A‖²), the stronger classical image where views or
  k-space are sparse (FBP at 10 views is 11 dB below TV on lung2); MAR keeps NMAR (TV would have
  to know the metal trace).
- `problem_inputs`: both for a batch of a `tasks.Problem` (eval, tune).
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError
from .conditioning import dc_data

PHASE_FIT_WEIGHT = 1e-3     # TV weight (relative to ‖A‖²) of the real-image fit that measures σ_φ (D32)


def _poisson_sinogram_variance(record: dict, task: str, op, y: torch.Tensor) -> torch.Tensor:
    """Per-entry variance (B, V, D) of a Poisson-noisy CT or MAR sinogram y in its measurement scale."""
    i0 = float(record.get("photons", record.get("level", 0.0)))
    if not i0 > 0:
        raise ScoreinvError(f"noise record {record!r}: a Poisson record needs photons > 0")
    y = y.to(torch.float64)
    if task == "mar":
        from ..physics.mar import MM_PER_CM, MU_A, MU_B
        ct = op.ct
        ones = torch.ones(1, 1, *ct.image_shape, dtype=torch.float64, device=y.device)
        p = (MU_A * y + MU_B * ct.forward(ones)) / MM_PER_CM           # μ·cm
        var = (MM_PER_CM / MU_A) ** 2 * torch.exp(p) / i0
        keep = getattr(op, "keep", None)
        return var * keep.to(var.device) if keep is not None else var
    from ..tasks import MU_MAX
    scale = float(record.get("mu_max_per_cm", MU_MAX)) / 10.0          # p = scale · y
    return torch.exp(scale * y) / (i0 * scale ** 2)


def measurement_sigma(record: dict | None, task: str, solve_op, file_op=None, file_y: torch.Tensor | None = None,
                      index=None) -> torch.Tensor:
    """σ_y per slice (B,) float64 of the data `solve_op` sees (module docstring).

    record: the noise record; file_op, file_y: the operator and measurements the record refers to
    (a CT sinogram when the solver sees its Fourier-slice conversion); default the solver's own;
    index: rows of a per-slice record (MRI σ list) for the B slices (default 0..B-1). Data seen
    through an estimated phase (`PhasedMRI`): the larger of the record's σ and the phase misfit σ_φ
    of (D32) (`phase_misfit`), which a real image cannot fit either."""
    sig = _record_sigma(record, task, solve_op, file_op, file_y, index)
    from ..physics.mri import PhasedMRI
    if isinstance(solve_op, PhasedMRI):
        phi = _per_slice(record or {}, "phase_misfit", sig.numel(), index)     # simulate_mri stores σ_φ per slice
        if phi is None:
            same = file_op is None or isinstance(file_op, PhasedMRI)      # MRI: the file's k-space is what it sees
            phi = phase_misfit(solve_op, file_y if same else None)
        sig = torch.maximum(sig, phi)
    return sig


def phase_misfit(op, y: torch.Tensor | None) -> torch.Tensor:
    """σ_φ (B,) float64: the misfit of a real image seen through an estimated phase (docs/design.md §3.5),

        (D32)  σ_φ = ( Σ_Λ |A' x_TV − y|² / |Λ| )^½,   x_TV ≈ argmin_{0 ≤ x ≤ 1} 1/(2‖A'‖²) ‖A' x − y‖² + w TV(x), w = 10⁻³

    the root mean square over the sampled k-space coefficients (`kspace_rms`) of what a lightly
    regularised real image leaves of the data (x_TV: the `tv` baseline at weight PHASE_FIT_WEIGHT,
    its box [0, 1] and its fixed PDHG budget, not run to convergence): the phase error δ puts
    |x| sin δ outside the real-image model, and TV, which cannot fit aliasing, leaves it there. On
    brain2 at 256 (8x and 4x random columns) it is 0.85-1.0 times the misfit of the true image."""
    if y is None:
        raise ScoreinvError("phase_misfit: the k-space the phased operator sees is needed")
    from ..baselines import get_baseline
    from ..physics.mri import kspace_rms
    x = get_baseline("tv")(op, y, weight=PHASE_FIT_WEIGHT).x
    return kspace_rms(op.forward(x) - y, op.mask).double().cpu()


def _per_slice(rec: dict, key: str, b: int, index) -> torch.Tensor | None:
    """rec[key] (a per-slice list) at rows `index` (default 0..b-1) as (b,) float64; None when the
    record has no such list covering them."""
    vals = rec.get(key)
    idx = list(range(b)) if index is None else [int(i) for i in index]
    if isinstance(vals, (list, tuple)) and len(vals) > max(idx):
        return torch.tensor([float(vals[i]) for i in idx], dtype=torch.float64)
    return None


def _record_sigma(record: dict | None, task: str, solve_op, file_op, file_y, index) -> torch.Tensor:
    """σ_y (B,) of the noise record alone (`measurement_sigma`)."""
    rec = record or {}
    model = rec.get("model", "none")
    if file_y is None:
        raise ScoreinvError("measurement_sigma: the measurements (file_y) are needed")
    b = file_y.shape[0]
    if model == "none":
        return torch.zeros(b, dtype=torch.float64)
    if model == "gaussian":
        per = _per_slice(rec, "sigma", b, index)
        if per is not None:
            return per
        sig = rec.get("sigma")
        if isinstance(sig, (int, float)):
            return torch.full((b,), float(sig), dtype=torch.float64)
        from ..physics.mri import kspace_rms      # no per-slice σ: level x RMS of the sampled data
        op = file_op or solve_op
        return float(rec.get("level", 0.0)) * kspace_rms(file_y, op.mask).double().cpu()
    if model == "poisson":
        op = file_op or solve_op
        var = _poisson_sinogram_variance(rec, task, op, file_y)
        if solve_op is not op and hasattr(solve_op, "noise_variance"):
            return solve_op.noise_variance(var).sqrt().cpu()
        if task == "mar":
            keep = op.keep.to(var.device).expand_as(var).to(var.dtype)
            return ((var.flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)).sqrt()).cpu()
        return var.flatten(1).mean(1).sqrt().cpu()
    raise ScoreinvError(f"noise record {rec!r}: unknown noise model {model!r}; expected none, gaussian or poisson")


def classical(op, y: torch.Tensor, cg_iters: int = 10) -> torch.Tensor:
    """The classical reconstruction (B, 1, H, W) of y (module docstring)."""
    from ..physics.mar import MarOperator
    if isinstance(op, MarOperator):
        from ..baselines import get_baseline
        return get_baseline("nmar")(op, y).x
    if callable(getattr(op, "fbp", None)):
        return op.fbp(y)
    if op.has_decomposition:
        return op.T_inv(dc_data(op, y)[1])
    x0 = torch.zeros(y.shape[0], 1, *op.image_shape, device=y.device)
    return op.lstsq(y, x0, 0.0, iters=max(cg_iters, 1))


def warm_image(op, y: torch.Tensor, cfg) -> torch.Tensor | None:
    """The image (B, 1, H, W) a warm start of `cfg` begins from, None without one (module docstring)."""
    if cfg.warm_start == "none":
        return None
    if cfg.warm_start == "classical":
        return classical(op, y, cfg.cg_iters)
    from ..physics.mar import MarOperator
    if isinstance(op, MarOperator):
        from .settings import MAR_TV_START
        raise ScoreinvError(MAR_TV_START)
    from ..baselines import get_baseline
    return get_baseline("tv")(op, y, weight=cfg.warm_weight).x


def problem_inputs(problem, cfg, sl: slice | None = None) -> dict:
    """{'sigma_y': (B,), 'x_init': (B, 1, H, W) or None} for images `sl` of a tasks.Problem: the noise
    level of what the score solvers see, and the classical reconstruction (from the data the
    baselines see, `warm_image`) when `cfg` warm-starts; on the CPU, as the problem."""
    from ..tasks import slice_operator
    sl = sl if sl is not None else slice(0, problem.y.shape[0])
    idx = range(problem.y.shape[0])[sl]
    bop = slice_operator(problem.baseline_op, sl)
    by = problem.baseline_y[sl]
    sig = measurement_sigma(problem.noise, problem.task, slice_operator(problem.op, sl), bop, by, index=idx)
    return {"sigma_y": sig, "x_init": warm_image(bop, by, cfg)}


def check_noise_level(sigma_y: torch.Tensor) -> torch.Tensor:
    """σ_y as finite values >= 0 (B,) float64."""
    s = torch.as_tensor(sigma_y, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ScoreinvError(f"measurement noise level {s.tolist()}: expected finite values >= 0")
    return s


__all__ = ["measurement_sigma", "phase_misfit", "classical", "warm_image", "problem_inputs", "check_noise_level"]
