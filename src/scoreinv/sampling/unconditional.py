"""Unconditional predictor-corrector sampling: reverse-diffusion predictor + Langevin corrector."""
from __future__ import annotations

import torch

from .loop import pc_loop


@torch.no_grad()
def sample_images(model, n: int, image_size: int, steps: int = 1000, snr: float = 0.16, corrector_steps: int = 1,
                  generator: torch.Generator | None = None, device="cpu", batch_size: int = 16,
                  progress: bool = False) -> torch.Tensor:
    """n samples (n, C, S, S) clipped to [0, 1]; 2·steps network evaluations each."""
    sde = model.sde
    times = sde.time_grid(steps)
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        x = sde.prior_sampling((b, model.net.conv_in.in_channels, image_size, image_size), generator).to(device)
        res = pc_loop(model.score, sde, x, times, corrector_steps=corrector_steps, snr=snr,
                      denoise=lambda x, t: model.denoise(x, t), generator=None if device != "cpu" else generator,
                      progress=progress)
        out.append(res.x.clamp(0, 1).cpu())
    return torch.cat(out)
