"""Named solvers: configurations of the one sampler loop (docs/design.md §2.8), plus fast ones.

| name                | conditioning                          | loop                                   | NFE         |
| `baseline`          | likelihood score with ŷ_t (Score SDE) | PC, 1 corrector + predictor per level  | 2·steps     |
| `langevin`          | likelihood score with y (Jalal et al.)| corrector only, `corrector_steps`/level| steps·cs    |
| `langevin_projection` | projection before each ALD step     | corrector only                         | steps·cs    |
| `projection`        | projection before each step (paper)   | PC                                     | 2·steps     |
| `dds`               | λ-projection of the Tweedie estimate  | DDIM, EDM σ schedule (fast)            | steps       |
| `dps`               | DPS gradient through the denoiser     | ancestral predictor                    | steps (+bwd)|
Every solver ends with the Tweedie denoising step and a hard (λ = 1) projection with y
(`final_projection`; whether it is on for given data is decided in `settings`, with the solver
table, the reference presets and the precedence of tuned presets, --steps and --set).
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError, check_int
from ..sde import VESDE
from .conditioning import DPSScore, LikelihoodScore, Projection
from .loop import pc_loop
from .settings import SOLVERS, SolverConfig, solver_config, validate  # noqa: F401  (the solver table lives there)


def edm_times(sde, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. σ schedule (σ_max → σ_min, exponent ρ) as VE times; uniform t for VP."""
    if not isinstance(sde, VESDE):
        return sde.time_grid(n)
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    smax, smin = sde.sigma_max ** (1 / rho), sde.sigma_min ** (1 / rho)
    sig = (smax + i * (smin - smax)) ** rho
    return (torch.log(sig / sde.sigma_min) / torch.log(torch.tensor(sde.sigma_max / sde.sigma_min))).clamp(sde.eps, 1.0)


def device_generator(generator: torch.Generator | None, device) -> torch.Generator | None:
    """A generator on `device` seeded from the CPU `generator` (None stays None), so that the step
    noise of a CUDA run repeats with the seed as a CPU run's does (same GPU and torch version)."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def solve(model, op, y: torch.Tensor, cfg: SolverConfig, generator: torch.Generator | None = None,
          progress: bool = False) -> tuple[torch.Tensor, int]:
    """One posterior sample per measurement: y (B, *meas_shape) -> (x (B, 1, H, W), NFE per sample)."""
    validate(cfg)
    y = op.check_measurement(y)
    sde = model.sde
    b = y.shape[0]
    h, w = op.image_shape
    dev = y.device
    x = sde.prior_sampling((b, 1, h, w), generator, device="cpu").to(dev)
    gen = generator if dev.type == "cpu" else device_generator(generator, dev)
    proj = Projection(op, y, sde, cfg.lam, gen, noisy=True, cg_iters=cfg.cg_iters)
    final = proj.hard if cfg.final_projection else None
    denoise = lambda x, t: model.denoise(x, t)  # noqa: E731
    common = dict(generator=gen, progress=progress, denoise=denoise, final_hook=final)
    name = cfg.name
    if name == "projection":
        res = pc_loop(model.score, sde, x, sde.time_grid(cfg.steps), predictor="reverse_diffusion" if cfg.predictor else None,
                      corrector_steps=cfg.corrector_steps if cfg.corrector else 0, snr=cfg.snr, hook=proj,
                      order=cfg.order, **common)
    elif name == "langevin_projection":
        res = pc_loop(model.score, sde, x, sde.time_grid(cfg.steps), predictor=None,
                      corrector_steps=cfg.corrector_steps, snr=cfg.snr, hook=proj, order=cfg.order, **common)
    elif name in ("baseline", "langevin"):
        like = LikelihoodScore(model.score, op, y, sde, cfg.r, gen, noisy_y=(name == "baseline"))
        res = pc_loop(like, sde, x, sde.time_grid(cfg.steps),
                      predictor="reverse_diffusion" if name == "baseline" else None,
                      corrector_steps=cfg.corrector_steps, snr=cfg.snr, **common)
    elif name == "dds":
        clean = Projection(op, y, sde, cfg.lam, gen, noisy=False, cg_iters=cfg.cg_iters)
        res = pc_loop(model.score, sde, x, edm_times(sde, cfg.steps, cfg.rho), predictor="ddim", corrector_steps=0,
                      eta=cfg.eta, x0_hook=lambda x0, t: clean.project(x0, y), **common)
    elif name == "dps":
        times = edm_times(sde, cfg.steps, cfg.rho)
        res = pc_loop(DPSScore(model, op, y, times, cfg.zeta), sde, x, times, predictor="reverse_diffusion",
                      corrector_steps=0, **common)
    else:  # validate() already refused unknown names
        raise ScoreinvError(f"unknown solver {name!r}")
    return res.x, res.nfe


def posterior(model, op, y: torch.Tensor, cfg: SolverConfig, samples: int = 1,
              generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """K posterior samples per measurement, batched: mean (B,1,H,W), std (B,1,H,W), samples (K,B,1,H,W)."""
    check_int("samples", samples)
    b = y.shape[0]
    yk = y.repeat(samples, *([1] * (y.ndim - 1)))
    x, nfe = solve(model, op, yk, cfg, generator, progress)
    xs = x.reshape(samples, b, *x.shape[1:])
    return {"mean": xs.mean(0), "std": xs.std(0, unbiased=True) if samples > 1 else torch.zeros_like(xs[0]),
            "samples": xs, "nfe": nfe * samples}
