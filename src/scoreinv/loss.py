"""The training objective: continuous denoising score matching (docs/design.md §2.2, Eq. D4).

Loss per image: w(σ) ‖β(t) s_θ(x_t, t) + z‖² summed over pixels, x_t = α(t) x_0 + β(t) z,
t ~ U[ε, 1]; w = 1 (the paper), or w = 1 + σ²/σ_data² (`edm`: uniform weight on the
preconditioned network output).

A patch prior (nets/patch.py, docs/design.md §2.12) trains on one random P x P window of each
full-resolution image, with its position channels; pixels of the window outside the image are
zero in x_t (as on the sampling canvas) and left out of the sum.
"""
from __future__ import annotations

import torch


def dsm_loss(model, x0: torch.Tensor, generator: torch.Generator, weighting: str = "score",
             bf16: bool = False, forward=None, channels_last: bool | None = None) -> torch.Tensor:
    """Mean over the batch of w(σ) ‖β s_θ(x_t, t) + z‖² (sum over pixels); x0 (B, C, H, W) in [0, 1].

    `generator` (CPU) draws t and z, so a seeded run repeats on any device. `forward` (default:
    `model`) is what computes the score: the DistributedDataParallel wrapper under torchrun (so
    gradients are averaged across ranks) or a torch.compile'd model. `bf16`: bfloat16 autocast of
    the network. `channels_last` (default: on the CPU) hands x_t to the network in the
    channels-last memory format.
    """
    sde = model.sde
    b = x0.shape[0]
    pos = inside = None
    if getattr(model, "patch_size", 0):
        x0, pos, inside = model.net.crop(x0, generator)
    t = torch.rand(b, generator=generator, dtype=torch.float64).to(x0.device) * (1 - sde.eps) + sde.eps
    z = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    alpha, beta = sde.marginal_coeffs(t)
    a = alpha.float().reshape(-1, 1, 1, 1)
    bt = beta.float().reshape(-1, 1, 1, 1)
    xt = a * x0 + bt * z
    if inside is not None:
        xt = xt * inside
    if channels_last if channels_last is not None else x0.device.type == "cpu":
        xt = xt.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        s = (model if forward is None else forward)(xt, t, *(() if pos is None else (pos,)))
    err = (bt * s.float() + z) ** 2
    per = (err if inside is None else err * inside).flatten(1).sum(1)
    if weighting == "edm":
        per = per * (1 + (beta / alpha).float() ** 2 / model.sigma_data ** 2)
    return per.mean()
