"""The one sampler loop (docs/design.md §2.7): a time schedule, a predictor, a corrector, a conditioning
hook applied before each step, the final Tweedie denoising step and a final hook.

Per level, in the reference code's order (default, `order="code"`):
    x <- hook(x) -> corrector(s) -> hook(x) -> predictor
In the paper's Eq. 7 order (`order="paper"`) the score is evaluated at the unprojected x̂_t
while the step is applied from the projected x̂'_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import Diverged
from .steps import ddim_predictor, langevin_corrector, reverse_diffusion_predictor, x0_predictor

Hook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LoopResult:
    x: torch.Tensor       # (B, C, H, W) final sample
    nfe: int              # network evaluations per sample


class NFECounter:
    """Wrap a score function and count its calls."""

    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, x, t):
        self.n += 1
        return self.fn(x, t)


def pc_loop(score_fn, sde, x: torch.Tensor, times: torch.Tensor, *, predictor: str | None = "reverse_diffusion",
            corrector_steps: int = 1, snr: float = 0.16, hook: Hook | None = None,
            order: str = "code", denoise: Callable | None = None, final_hook: Hook | None = None,
            generator: torch.Generator | None = None, progress: bool = False, eta: float = 0.0,
            x0_hook: Hook | None = None, x0_step: Callable | None = None) -> LoopResult:
    """Run predictor-corrector sampling from x at times[0] down to times[-1].

    times: (N,) float64 decreasing; each level i uses (times[i], times[i+1]) for the predictor
    (the last level predicts to time 0 for VE: σ_next = 0 makes it a plain denoising-like step
    only through `denoise`). `denoise(x, t) -> x0` is the final Tweedie step at t = times[-1].
    predictor: "reverse_diffusion" (ancestral), "ddim" (with `eta` and `x0_hook`, the data-consistency
    step on the clean estimate), "x0" (a restoration step `x0_step(u, x̂0, σ, σ')` on the Tweedie
    estimate: DDRM, DiffPIR), or None (corrector only, annealed Langevin).
    """
    counter = NFECounter(score_fn)
    n = times.shape[0]
    b = x.shape[0]
    it = range(n)
    if progress:
        it = tqdm(it, desc="sampling", leave=False)
    for i in it:
        t = times[i].expand(b).to(x.device)
        t_next = times[i + 1].expand(b).to(x.device) if i + 1 < n else None
        for _ in range(corrector_steps):
            xe = x
            if hook is not None:
                xp = hook(x, t)
                xe, x = (x, xp) if order == "paper" else (xp, xp)
            x, _ = langevin_corrector(counter, sde, x, t, snr, generator, x_eval=xe)
            _check_finite(x, i, times)
        if predictor is not None and t_next is not None:
            xe = x
            if hook is not None:
                xp = hook(x, t)
                xe, x = (x, xp) if order == "paper" else (xp, xp)
            if predictor == "ddim":
                x, _ = ddim_predictor(counter, sde, x, t, t_next, generator, eta=eta, x0_hook=x0_hook)
            elif predictor == "x0":
                x, _ = x0_predictor(counter, sde, x, t, t_next, x0_step)
            else:
                x, _ = reverse_diffusion_predictor(counter, sde, x, t, t_next, generator, x_eval=xe)
            _check_finite(x, i, times)
    nfe = counter.n
    if denoise is not None:
        x = denoise(x, times[-1].expand(b).to(x.device))
        nfe += 1
    if final_hook is not None:
        x = final_hook(x, times[-1].expand(b).to(x.device))
    return LoopResult(x, nfe)


def _check_finite(x: torch.Tensor, i: int, times: torch.Tensor) -> None:
    """Stop a chain that blew up, saying where (the operators would refuse its NaN input anyway)."""
    if not bool(torch.isfinite(x).all()):
        raise Diverged(f"sampler diverged: NaN/Inf at noise level {i + 1} of {times.shape[0]} "
                       f"(t = {float(times[i]):.4g}); the steps are too large for the schedule: lower the step "
                       "parameter (snr; larger r for the likelihood solvers; smaller zeta for dps) or use more "
                       "noise levels")
