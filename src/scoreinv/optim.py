"""Learning-rate schedule, EMA decay and the optimiser of a training run (docs/design.md §2.2).

Learning rate at step k (0-based; `lr_at`): a linear warm-up, factor min(1, (k - k_w + 1) / W)
with W = train.warmup and k_w the step the warm-up starts from (0; a run started with `--init`
from weights without optimiser state warms up again from its first step), times the schedule:
- `constant`: 1 (the paper: Adam at 2e-4 after 5000 warm-up steps);
- `rsqrt`: 1 / sqrt(max(k / k_ref, 1)), k_ref = train.lr_ref_steps (the inverse square-root decay
  of EDM2, Karras et al., CVPR 2024): constant up to k_ref, then decaying without a horizon, so a
  run can be extended day after day without a jump in the learning rate;
- `cosine`: r + (1 - r)(1 + cos(π p)) / 2, p = (k - W) / (K - W) clipped to [0, 1], K =
  train.lr_decay_steps (or train.max_steps), r = train.lr_min_ratio: needs the run's length.

EMA decay per step (`ema_beta`; EDM, Karras et al. 2022, training_loop.py): with a half-life of
h = min(1000 ema_halflife_kimg, ema_rampup · n) images, n the images seen so far by all ranks,
β = 0.5^(B / h) for a global batch of B images, and p_ema <- β p_ema + (1 - β) p. A half-life in
images does not change with the batch size or the number of ranks; the ramp-up keeps the
average over the last ≈ 5 % of training, which suits both a 1000-step and a 100000-step run.
train.ema_halflife_kimg = 0 falls back to the fixed per-step rate train.ema_rate (the paper's
0.999).
"""
from __future__ import annotations

import math

import torch

from .errors import ScoreinvError


def lr_at(step: int, base: float, warmup: int, schedule: str = "constant", ref_steps: int = 10000,
          decay_steps: int = 0, min_ratio: float = 0.0, max_steps: int | None = None, warmup_from: int = 0) -> float:
    """The learning rate of (0-based) `step` (module docstring)."""
    warm = min(1.0, (step - warmup_from + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        decay = 1.0
    elif schedule == "rsqrt":
        decay = 1.0 / math.sqrt(max(step / ref_steps, 1.0))
    elif schedule == "cosine":
        horizon = decay_steps or max_steps
        if not horizon or horizon <= warmup:
            raise ScoreinvError(f"train.lr_schedule = cosine needs train.lr_decay_steps (or train.max_steps) "
                                f"> train.warmup = {warmup}, got {horizon}")
        p = min(max((step - warmup) / (horizon - warmup), 0.0), 1.0)
        decay = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    else:
        raise ScoreinvError(f"train.lr_schedule = {schedule!r}; expected constant, rsqrt or cosine")
    return base * max(warm, 0.0) * decay


def lr_of(t, step: int, warmup_from: int = 0) -> float:
    """lr_at with the settings of a train config section `t`."""
    return lr_at(step, t.lr, t.warmup, t.lr_schedule, t.lr_ref_steps, t.lr_decay_steps, t.lr_min_ratio,
                 t.max_steps, warmup_from)


def ema_beta(images_seen: int, batch: int, halflife_kimg: float, rampup: float, rate: float) -> float:
    """EMA decay β of one update after `images_seen` images with a global batch of `batch` images."""
    if halflife_kimg <= 0:
        return float(rate)
    h = halflife_kimg * 1000.0
    if rampup > 0:
        h = min(h, rampup * images_seen)
    return 0.5 ** (batch / max(h, 1e-8))


def ema_of(t, images_seen: int, batch: int) -> float:
    """ema_beta with the settings of a train config section `t`."""
    return ema_beta(images_seen, batch, t.ema_halflife_kimg, t.ema_rampup, t.ema_rate)


def adam_impl(device: torch.device) -> dict:
    """Adam's implementation keyword: the fused kernel where torch has one (CPU and CUDA)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


def build_optimizer(params, t, device: torch.device, impl: dict | None = None) -> torch.optim.Adam:
    """Adam(lr, (beta1, 0.999), eps, weight_decay) of train config section `t`; `impl` picks the
    implementation ({'fused': True}, {'foreach': True} or {'foreach': False}; default adam_impl)."""
    return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, 0.999), eps=t.eps, weight_decay=t.weight_decay,
                            **(adam_impl(device) if impl is None else impl))


def reset_hyperparameters(opt: torch.optim.Optimizer, t) -> None:
    """After loading an optimiser state from another run: this run's Adam settings, not the file's."""
    for g in opt.param_groups:
        g.update(lr=t.lr, betas=(t.beta1, 0.999), eps=t.eps, weight_decay=t.weight_decay)
