"""Named solvers: configurations of the one sampler loop (docs/design.md §2.8), plus fast ones.

| name                | conditioning                          | loop                                   | NFE         |
| `baseline`          | likelihood score with ŷ_t (Score SDE) | PC, 1 corrector + predictor per level  | 2·steps     |
| `langevin`          | likelihood score with y (Jalal et al.)| corrector only, `corrector_steps`/level| steps·cs    |
| `langevin_projection` | projection before each ALD step     | corrector only                         | steps·cs    |
| `projection`        | projection before each step (paper)   | PC                                     | 2·steps     |
| `dds`               | λ-projection of the Tweedie estimate  | DDIM, EDM σ schedule (fast)            | steps       |
| `dps`               | DPS gradient through the denoiser     | ancestral predictor                    | steps (+bwd)|
| `ddrm`              | DDRM blend of y and x̂0 per coefficient| "x0" step (DDRMStep), EDM σ schedule   | steps       |
| `diffpir`           | HQS proximal step on x̂0 (exact or CG) | "x0" step (DiffPIRStep), EDM σ schedule| steps       |
Every solver ends with the Tweedie denoising step (ddrm and diffpir: followed by their own step
to σ = 0) and a hard (λ = 1) projection with y (`final_projection`; whether it is on for given
data is decided in `settings`, with the solver table, the reference presets and the precedence
of tuned presets, --steps and --set).

Every solver can start warm (`warm_start: classical` or `tv`, SDEdit-style; docs/design.md §2.11):
from x = x_classical + σ_w z at σ_w = `warm_sigma`, running its `steps` levels over [σ_w, σ_min]
instead of [σ_max, σ_min] (the same NFE, denser levels), and can end early (`sigma_end`: the
schedule stops at σ_end and the output is the Tweedie estimate there, a partial posterior mean).

Volumes (docs/design.md §9): with `coupling: ztv` the batch is a stack of slices in order (`volume`
labels say which images form one volume; default: the whole batch) and every data-consistency
step couples neighbouring slices by a z-TV term (`coupling.ZTVCoupling`); `network_batch` bounds
the images per network call (the network is the memory hog; the data-consistency step runs on the
whole volume at once, so chunking the network changes nothing else).
"""
from __future__ import annotations

import math

import torch

from ..errors import ScoreinvError, check_images, check_int
from ..sde import VESDE
from .conditioning import DDRMStep, DiffPIRStep, DPSScore, LikelihoodScore, Projection, require_decomposition
from .coupling import ZTVCoupling, volume_labels
from .inputs import check_noise_level, warm_image
from .loop import pc_loop
from .settings import SOLVERS, SolverConfig, estimate_name, solver_config, validate  # noqa: F401  (the solver table lives there)

EDM_SOLVERS = ("dds", "dps", "ddrm", "diffpir")     # on the EDM σ schedule (D16); the others on a uniform t grid


def sigma_of(sde, t: float) -> float:
    """The VE-equivalent σ (β/α) of the SDE at time t."""
    return float(sde.sigma_eff(torch.tensor([float(t)], dtype=torch.float64))[0])


def time_of_sigma(sde, sigma: float) -> float:
    """The time t in [eps, 1] at which the SDE's σ (β/α, increasing in t) equals `sigma`: closed form
    for VE, bisection otherwise."""
    if isinstance(sde, VESDE):
        t = math.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        return min(max(t, sde.eps), 1.0)
    lo, hi = sde.eps, 1.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sigma_of(sde, mid) < sigma else (lo, mid)
    return 0.5 * (lo + hi)


def edm_times(sde, n: int, rho: float = 7.0, sigma_hi: float | None = None,
              sigma_lo: float | None = None) -> torch.Tensor:
    """Karras et al. σ schedule (σ_hi → σ_lo, default σ_max → σ_min, exponent ρ) as VE times; uniform
    t for VP (between the times of σ_hi and σ_lo)."""
    if not isinstance(sde, VESDE):
        if sigma_hi is None and sigma_lo is None:
            return sde.time_grid(n)
        return grid_times(sde, n, sigma_hi, sigma_lo)
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    shi = sde.sigma_max if sigma_hi is None else sigma_hi
    slo = sde.sigma_min if sigma_lo is None else sigma_lo
    smax, smin = shi ** (1 / rho), slo ** (1 / rho)
    sig = (smax + i * (smin - smax)) ** rho
    return (torch.log(sig / sde.sigma_min) / torch.log(torch.tensor(sde.sigma_max / sde.sigma_min))).clamp(sde.eps, 1.0)


def grid_times(sde, n: int, sigma_hi: float | None = None, sigma_lo: float | None = None) -> torch.Tensor:
    """n times uniform in t from the time of σ_hi (default 1) down to that of σ_lo (default eps)."""
    if sigma_hi is None and sigma_lo is None:
        return sde.time_grid(n)
    t_hi = 1.0 if sigma_hi is None else time_of_sigma(sde, sigma_hi)
    t_lo = sde.eps if sigma_lo is None else time_of_sigma(sde, sigma_lo)
    return torch.linspace(t_hi, t_lo, n, dtype=torch.float64)


def sigma_range(sde, cfg: SolverConfig) -> tuple[float | None, float | None]:
    """(σ_hi, σ_lo) of the schedule: None where it is the SDE's own end (σ_max; σ_min). Raises if the
    warm start or σ_end lies outside the model's range (docs/design.md §2.11)."""
    s_max, s_min = sigma_of(sde, 1.0), sigma_of(sde, sde.eps)
    hi = lo = None
    if cfg.warm_start != "none":
        if not s_min < cfg.warm_sigma < s_max:
            raise ScoreinvError(f"solver.warm_sigma = {cfg.warm_sigma:g}: the warm start must begin inside the "
                                f"model's noise range ({s_min:.3g}, {s_max:.3g})")
        hi = cfg.warm_sigma
    if cfg.sigma_end > 0:
        top = hi if hi is not None else s_max
        if not cfg.sigma_end < top:
            raise ScoreinvError(f"solver.sigma_end = {cfg.sigma_end:g}: must be below the schedule's start "
                                f"σ = {top:.3g}")
        lo = max(cfg.sigma_end, s_min) if cfg.sigma_end > s_min else None
    return hi, lo


def schedule(sde, cfg: SolverConfig) -> torch.Tensor:
    """The solver's times (steps,) float64, decreasing: EDM σ (D16) for EDM_SOLVERS, uniform t otherwise,
    over sigma_range."""
    hi, lo = sigma_range(sde, cfg)
    if cfg.name in EDM_SOLVERS:
        return edm_times(sde, cfg.steps, cfg.rho, hi, lo)
    return grid_times(sde, cfg.steps, hi, lo)


def check_run(cfg: SolverConfig, op, sde) -> None:
    """Everything about (settings, operator, model) that can be refused before sampling: the
    parameters, an operator the solver cannot use (ddrm without a decomposition), the schedule."""
    validate(cfg)
    if cfg.name == "ddrm":
        require_decomposition("ddrm", op)
    sigma_range(sde, cfg)


def device_generator(generator: torch.Generator | None, device) -> torch.Generator | None:
    """A generator on `device` seeded from the CPU `generator` (None stays None), so that the step
    noise of a CUDA run repeats with the seed as a CPU run's does (same GPU and torch version)."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


class NetworkBatches:
    """The model with its network evaluated at most `size` images at a time (score, denoise); the
    rest (sde, patch prior, reseed) passes through. A patch prior is not split: it already evaluates
    at most `model.max_patches` windows at a time, and one call keeps one tiling offset for the
    whole volume (docs/design.md §2.12)."""

    def __init__(self, model, size: int):
        self.model, self.size, self.sde = model, check_int("network batch", size), model.sde

    @property
    def patch_size(self) -> int:
        return getattr(self.model, "patch_size", 0)

    def reseed(self, seed: int) -> None:
        self.model.reseed(seed)

    def _split(self, fn, x, t):
        if x.shape[0] <= self.size or self.patch_size:
            return fn(x, t)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return torch.cat([fn(x[i:i + self.size], t[i:i + self.size]) for i in range(0, x.shape[0], self.size)])

    def score(self, x, t):
        return self._split(self.model.score, x, t)

    def denoise(self, x, t):
        return self._split(self.model.denoise, x, t)


def coupling_of(cfg: SolverConfig, labels: torch.Tensor) -> ZTVCoupling | None:
    """The z-TV coupling of a solver run (docs/design.md §9.1), or None: coupling none, or λ_z = 0
    (then the uncoupled step is the exact solution, and the result equals coupling none bit for bit)."""
    if cfg.coupling == "none" or cfg.ztv_lambda == 0:
        return None
    return ZTVCoupling(cfg.ztv_lambda, labels, cfg.admm_iters, cfg.admm_rho, cfg.cg_iters)


def _start(sde, cfg: SolverConfig, times: torch.Tensor, shape, generator, x_init, dev) -> torch.Tensor:
    """The chain's first state: a prior draw, or (warm start) α(t₀)(x_init + σ_w z) at t₀ = times[0]."""
    if cfg.warm_start == "none":
        return sde.prior_sampling(shape, generator, device="cpu").to(dev)
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev)
    a, b = sde.marginal_coeffs(times[:1])
    return float(a[0]) * x_init.to(dev, torch.float32) + float(b[0]) * z


@torch.no_grad()
def solve(model, op, y: torch.Tensor, cfg: SolverConfig, generator: torch.Generator | None = None,
          progress: bool = False, *, sigma_y=None, x_init: torch.Tensor | None = None, volume=None,
          network_batch: int | None = None) -> tuple[torch.Tensor, int]:
    """One posterior sample per measurement: y (B, *meas_shape) -> (x (B, 1, H, W), NFE per sample).

    sigma_y: the measurement noise std (float or (B,), units of y; `inputs.measurement_sigma`),
    used by ddrm and diffpir (default 0: noise-free); x_init: (B, 1, H, W) the image a warm start
    begins from (default `inputs.warm_image(op, y, cfg)`); volume: (B,)
    integer labels of the volume each slice belongs to, slices in order (default: one volume; used
    by `coupling: ztv`); network_batch: at most this many images per network call (default all)."""
    check_run(cfg, op, model.sde)
    y = op.check_measurement(y)
    labels = volume_labels(volume, y.shape[0])
    if network_batch is not None:
        model = NetworkBatches(model, network_batch)
    sde = model.sde
    b = y.shape[0]
    h, w = op.image_shape
    dev = y.device
    times = schedule(sde, cfg)
    sy = check_noise_level(0.0 if sigma_y is None else sigma_y)
    if sy.numel() not in (1, b):
        raise ScoreinvError(f"measurement noise level: {sy.numel()} values for {b} measurements")
    if cfg.warm_start != "none":
        x_init = warm_image(op, y, cfg) if x_init is None else \
            check_images("warm-start image", x_init, size=op.image_shape, channels=1)
        if x_init.shape[0] != b:
            raise ScoreinvError(f"warm-start image: {x_init.shape[0]} images for {b} measurements")
    x = _start(sde, cfg, times, (b, 1, h, w), generator, x_init, dev)
    gen = generator if dev.type == "cpu" else device_generator(generator, dev)
    if getattr(model, "patch_size", 0) and generator is not None:   # tiling offsets (docs/design.md §2.12)
        model.reseed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    coupler = coupling_of(cfg, labels)
    proj = Projection(op, y, sde, cfg.lam, gen, noisy=True, cg_iters=cfg.cg_iters, coupling=coupler)
    final = proj.hard if cfg.final_projection else None
    denoise = lambda x, t: model.denoise(x, t)  # noqa: E731
    common = dict(generator=gen, progress=progress, denoise=denoise, final_hook=final)
    name = cfg.name
    if name == "projection":
        res = pc_loop(model.score, sde, x, times, predictor="reverse_diffusion" if cfg.predictor else None,
                      corrector_steps=cfg.corrector_steps if cfg.corrector else 0, snr=cfg.snr, hook=proj,
                      order=cfg.order, **common)
    elif name == "langevin_projection":
        res = pc_loop(model.score, sde, x, times, predictor=None,
                      corrector_steps=cfg.corrector_steps, snr=cfg.snr, hook=proj, order=cfg.order, **common)
    elif name in ("baseline", "langevin"):
        like = LikelihoodScore(model.score, op, y, sde, cfg.r, gen, noisy_y=(name == "baseline"))
        res = pc_loop(like, sde, x, times,
                      predictor="reverse_diffusion" if name == "baseline" else None,
                      corrector_steps=cfg.corrector_steps, snr=cfg.snr, **common)
    elif name == "dds":
        clean = Projection(op, y, sde, cfg.lam, gen, noisy=False, cg_iters=cfg.cg_iters, coupling=coupler)
        res = pc_loop(model.score, sde, x, times, predictor="ddim", corrector_steps=0,
                      eta=cfg.eta, x0_hook=lambda x0, t: clean.project(x0, y), **common)
    elif name == "dps":
        res = pc_loop(DPSScore(model, op, y, times, cfg.zeta), sde, x, times, predictor="reverse_diffusion",
                      corrector_steps=0, **common)
    elif name in ("ddrm", "diffpir"):
        if name == "ddrm":
            step = DDRMStep(op, y, sy.to(dev), cfg.eta, cfg.eta_b, gen, cfg.noise_scale)
        else:
            step = DiffPIRStep(op, y, sde, sy.to(dev), cfg.hqs_lambda, cfg.hqs_zeta, cfg.sigma_floor, gen,
                               cfg.cg_iters, cfg.noise_scale, coupling=coupler)
        last = (lambda x, t: final(step.final(x, t), t)) if final is not None else step.final
        res = pc_loop(model.score, sde, x, times, predictor="x0", corrector_steps=0, x0_step=step,
                      **{**common, "final_hook": last})
    else:  # validate() already refused unknown names
        raise ScoreinvError(f"unknown solver {name!r}")
    return res.x, res.nfe


def posterior(model, op, y: torch.Tensor, cfg: SolverConfig, samples: int = 1,
              generator: torch.Generator | None = None, progress: bool = False, *, sigma_y=None,
              x_init: torch.Tensor | None = None, volume=None, network_batch: int | None = None) -> dict:
    """K posterior samples per measurement, batched: mean (B,1,H,W), std (B,1,H,W), samples (K,B,1,H,W).
    sigma_y ((B,) or a float), x_init (B, 1, H, W), volume (B,) and network_batch as in `solve`, per
    measurement (the K copies of a volume are K volumes: they never couple)."""
    check_int("samples", samples)
    b = y.shape[0]
    lab = volume_labels(volume, b)
    span = int(lab.max() - lab.min()) + 1
    lab = torch.cat([lab + k * span for k in range(samples)])
    yk = y.repeat(samples, *([1] * (y.ndim - 1)))
    if sigma_y is not None:
        s = check_noise_level(sigma_y)
        sigma_y = s.repeat(samples) if s.numel() == b else s
    if x_init is not None:
        x_init = x_init.repeat(samples, 1, 1, 1)
    x, nfe = solve(model, op, yk, cfg, generator, progress, sigma_y=sigma_y, x_init=x_init, volume=lab,
                   network_batch=network_batch)
    xs = x.reshape(samples, b, *x.shape[1:])
    return {"mean": xs.mean(0), "std": xs.std(0, unbiased=True) if samples > 1 else torch.zeros_like(xs[0]),
            "samples": xs, "nfe": nfe * samples}
