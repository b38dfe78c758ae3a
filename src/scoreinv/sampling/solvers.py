"""Named solvers: configurations of the one sampler loop (DESIGN.md §2.4), plus fast ones.

| name                | conditioning                          | loop                                   | NFE         |
| `baseline`          | likelihood score with ŷ_t (Score SDE) | PC, 1 corrector + predictor per level  | 2·steps     |
| `langevin`          | likelihood score with y (Jalal et al.)| corrector only, `corrector_steps`/level| steps·cs    |
| `langevin_projection` | projection before each ALD step     | corrector only                         | steps·cs    |
| `projection`        | projection before each step (paper)   | PC                                     | 2·steps     |
| `dds`               | λ-projection of the Tweedie estimate  | DDIM, EDM σ schedule (fast)            | steps       |
| `dps`               | DPS gradient through the denoiser     | ancestral predictor                    | steps (+bwd)|
Every solver ends with the Tweedie denoising step and a hard (λ = 1) projection with y
(`final_projection`, on by default for noise-free data; turn off for noisy data).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import ScoreinvError, check_choice, check_range
from ..sde import VESDE
from .conditioning import DPSScore, LikelihoodScore, Projection
from .loop import pc_loop

SOLVERS = ("baseline", "langevin", "langevin_projection", "projection", "dds", "dps")


@dataclass
class SolverConfig:
    name: str = "projection"
    steps: int = 1000             # noise levels
    snr: float = 0.16             # Langevin corrector signal-to-noise ratio
    lam: float = 1.0              # λ of the projection
    r: float = 1.0                # likelihood std rate (projection_sigma_rate) for baseline/langevin
    corrector_steps: int = 1
    predictor: bool = True        # projection: False = corrector only; MAR reference uses predictor only
    corrector: bool = True
    order: str = "code"           # code | paper (Eq. 7)
    eta: float = 0.85             # dds stochasticity
    rho: float = 7.0              # EDM schedule exponent (dds, dps)
    zeta: float = 1.0             # dps step
    cg_iters: int = 10            # CG iterations for operators without an exact T
    final_projection: bool = True

    def nfe(self) -> int:
        if self.name in ("langevin", "langevin_projection"):
            return self.steps * self.corrector_steps + 1
        if self.name in ("dds", "dps"):
            return self.steps
        per = (self.corrector_steps if self.corrector else 0) + (1 if self.predictor else 0)
        return self.steps * per - (1 if self.predictor else 0) + 1


# Reference hyperparameters (DESIGN.md §2.4) as named presets per task.
PRESETS: dict[tuple[str, str], dict] = {
    ("ct", "projection"): dict(snr=0.246, lam=0.841),
    ("ct", "langevin_projection"): dict(snr=0.246, lam=0.841, steps=700, corrector_steps=3),
    ("ct", "baseline"): dict(snr=0.246, r=1.231),
    ("ct", "langevin"): dict(snr=0.212, r=0.713, steps=700, corrector_steps=3),
    ("mri", "projection"): dict(snr=0.517, lam=1.0),
    ("mri", "baseline"): dict(snr=0.608, r=1.231),
    ("mri", "langevin"): dict(snr=0.212, r=0.713, steps=700, corrector_steps=3),
    ("mri", "langevin_projection"): dict(snr=0.386, lam=1.0, steps=700, corrector_steps=3),
    ("mar", "projection"): dict(lam=0.355, corrector=False),
    ("mar", "langevin_projection"): dict(snr=0.261, lam=0.865, steps=700, corrector_steps=3),
    ("mar", "baseline"): dict(snr=0.246, r=1.231),
    ("mar", "langevin"): dict(snr=0.212, r=0.713, steps=700, corrector_steps=3),
    ("ct", "dds"): dict(steps=50, lam=1.0, eta=0.85),
    ("mri", "dds"): dict(steps=50, lam=1.0, eta=0.85),
    ("mar", "dds"): dict(steps=50, lam=1.0, eta=0.85),
    ("ct", "dps"): dict(steps=200, zeta=1.0),
    ("mri", "dps"): dict(steps=200, zeta=1.0),
    ("mar", "dps"): dict(steps=200, zeta=1.0),
}


def solver_config(name: str, task: str | None = None, **overrides) -> SolverConfig:
    """Preset for (task, name) updated by `overrides`; validated."""
    check_choice("solver", name, SOLVERS)
    kw = dict(PRESETS.get((task, name), {})) if task else {}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(SolverConfig)}
    bad = set(kw) - fields
    if bad:
        raise ScoreinvError(f"unknown solver parameter(s) {sorted(bad)}; expected some of {sorted(fields)}")
    cfg = SolverConfig(name=name, **kw)
    validate(cfg)
    return cfg


def validate(c: SolverConfig) -> None:
    check_choice("solver", c.name, SOLVERS)
    for name in ("steps", "corrector_steps", "cg_iters"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ScoreinvError(f"solver.{name} = {v!r}: expected an integer")
    check_range("solver.steps", c.steps, 1)
    check_range("solver.snr", c.snr, 0.0)
    check_range("solver.lam (λ)", c.lam, 0.0, 1.0)
    check_range("solver.r", c.r, 1e-6)
    check_range("solver.corrector_steps", c.corrector_steps, 1)
    check_range("solver.eta", c.eta, 0.0, 1.0)
    check_range("solver.zeta", c.zeta, 0.0)
    check_range("solver.cg_iters", c.cg_iters, 1)
    check_choice("solver.order", c.order, ("code", "paper"))
    if c.name == "projection" and not (c.predictor or c.corrector):
        raise ScoreinvError("solver.predictor and solver.corrector cannot both be off")


def edm_times(sde, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. σ schedule (σ_max → σ_min, exponent ρ) as VE times; uniform t for VP."""
    if not isinstance(sde, VESDE):
        return sde.time_grid(n)
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    smax, smin = sde.sigma_max ** (1 / rho), sde.sigma_min ** (1 / rho)
    sig = (smax + i * (smin - smax)) ** rho
    return (torch.log(sig / sde.sigma_min) / torch.log(torch.tensor(sde.sigma_max / sde.sigma_min))).clamp(sde.eps, 1.0)


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
    gen = generator if dev.type == "cpu" else None
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
    check_range("samples", samples, 1)
    b = y.shape[0]
    yk = y.repeat(samples, *([1] * (y.ndim - 1)))
    x, nfe = solve(model, op, yk, cfg, generator, progress)
    xs = x.reshape(samples, b, *x.shape[1:])
    return {"mean": xs.mean(0), "std": xs.std(0, unbiased=True) if samples > 1 else torch.zeros_like(xs[0]),
            "samples": xs, "nfe": nfe * samples}
