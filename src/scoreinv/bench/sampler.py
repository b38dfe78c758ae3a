"""Sampler overhead: time outside the network in the `projection` solver (one run).

For a 64x64 model (the `ct64` architecture) at batch 8, for CT (Fourier-slice operator, 23
views) and MRI (Cartesian, 8x equispaced mask): runs the solver with the real network and
with a free stand-in score (zeros), same loop and hooks. Prints per network evaluation:
network_ms_per_step = (real − stand-in) / NFE, overhead_ms_per_step = stand-in / NFE,
overhead_fraction = overhead / (network + overhead).
"""
from __future__ import annotations

import time

import torch


class _Free(torch.nn.Module):
    """A score that costs nothing: isolates everything outside the network."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def score(self, x, t):
        return torch.zeros_like(x)

    def denoise(self, x, t):
        return x


def _operators(n: int):
    import numpy as np

    from ..physics.fourier_slice import FourierSliceCT
    from ..physics.geometry import sparse_view_angles
    from ..physics.masks import make_mask
    from ..physics.mri import CartesianMRI

    ct = FourierSliceCT(n, angles=np.asarray(sparse_view_angles(n, 23)))
    mri = CartesianMRI(make_mask("equispaced", (n, n), 8.0))
    return {"ct": ct, "mri": mri}


def run(batch: int = 8, steps: int = 20, checkpoint: str | None = None) -> dict:
    from .. import config as C
    from ..sampling.solvers import solve, solver_config
    from ..score import build_model, load_score_model

    if checkpoint:
        model, cfg = load_score_model(checkpoint)
    else:
        cfg = C.load_config("ct64")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        model.net.to(memory_format=torch.channels_last)
    n = cfg.data.image_size
    out = {"batch_size": batch, "image_size": n}
    for task, op in _operators(n).items():
        x = torch.rand(batch, 1, n, n)
        y = op.forward(x)
        cfg_s = solver_config("projection", task, steps=steps)
        timings = {}
        for name, m in (("free", _Free(model.sde)), ("real", model)):
            solve(m, op, y, solver_config("projection", task, steps=2), torch.Generator().manual_seed(0))  # warm-up
            t = time.perf_counter()
            _, nfe = solve(m, op, y, cfg_s, torch.Generator().manual_seed(0))
            timings[name] = (time.perf_counter() - t) * 1000
        over = timings["free"] / nfe
        net = max(timings["real"] - timings["free"], 0.0) / nfe
        out[f"{task}_network_ms_per_step"] = net
        out[f"{task}_overhead_ms_per_step"] = over
        out[f"{task}_overhead_fraction"] = over / (net + over)
        out[f"{task}_nfe"] = nfe
    return out
