"""Sampler cost: seconds per image and the time outside the network in a solver (one run).

For a model (default: an untrained network of the `ct64` architecture) at its image size, a
batch of `batch` images, for CT (23 views: the Fourier-slice operator, or the Radon operator
with `ct_operator="radon"`) and MRI (Cartesian, 8x equispaced mask): runs `solver` (default
`projection`; with a checkpoint, the shipped model's preset for it where one exists, at
`steps` noise levels) with the real network and with a free stand-in score (zeros), same loop
and hooks. Prints per task: seconds_per_image = real / batch, and per network evaluation
network_ms_per_step = (real − stand-in) / NFE, overhead_ms_per_step = stand-in / NFE,
overhead_fraction = overhead / (network + overhead) (the network's share is 1 − that).
A patch prior (`model.patch_size`) runs whole images by tiling, as in `reconstruct`.
"""
from __future__ import annotations

import time
from dataclasses import replace

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


CT_OPERATORS = ("fourier", "radon")
TASKS = ("ct", "mri")


def _operator(task: str, n: int, ct_operator: str):
    import numpy as np

    from ..physics.masks import make_mask
    from ..physics.mri import CartesianMRI

    if task == "mri":
        return CartesianMRI(make_mask("equispaced", (n, n), 8.0))
    if ct_operator == "fourier":
        from ..physics.fourier_slice import FourierSliceCT
        from ..physics.geometry import sparse_view_angles
        return FourierSliceCT(n, angles=np.asarray(sparse_view_angles(n, 23)))
    from ..tasks import ct_geometry, ct_operator as build_ct
    return build_ct(ct_geometry(n, views=23))


def run(batch: int = 8, steps: int = 20, checkpoint: str | None = None, solver: str = "projection",
        ct_operator: str = "fourier", tasks=TASKS) -> dict:
    from .. import config as C
    from ..errors import check_choice, check_int
    from ..sampling.settings import SOLVERS, resolve
    from ..sampling.solvers import solve, solver_config
    from ..score import build_model, load_score_model

    check_choice("--solver", solver, SOLVERS)
    check_int("--batch-size", batch)
    check_int("--steps", steps)
    check_choice("--ct-operator", ct_operator, CT_OPERATORS)
    tasks = tuple(tasks)
    for t in tasks:
        check_choice("--tasks", t, TASKS)
    if checkpoint:
        model, cfg = load_score_model(checkpoint)
    else:
        cfg = C.load_config("ct64")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        model.net.to(memory_format=torch.channels_last)
    n = cfg.data.image_size
    out = {"batch_size": batch, "image_size": n, "solver": solver, "ct_operator": ct_operator,
           "threads": torch.get_num_threads()}
    for task in tasks:
        if solver == "ddrm" and task == "ct" and ct_operator != "fourier":
            out[f"{task}_skipped"] = "ddrm needs --ct-operator fourier"
            continue
        op = _operator(task, n, ct_operator)
        x = torch.rand(batch, 1, n, n)
        y = op.forward(x)
        # the shipped preset of `solver` for this model where there is one, at `steps` levels, with its
        # warm start: the start image (FBP, zero-filled, NMAR or TV) is made inside the timed solve, so
        # its seconds count as time outside the network
        cfg_s = resolve(task, solver, model=checkpoint, steps=steps).cfg if checkpoint else \
            solver_config(solver, task, steps=steps)
        warmup = replace(cfg_s, steps=2)
        timings = {}
        for name, m in (("free", _Free(model.sde)), ("real", model)):
            solve(m, op, y, warmup, torch.Generator().manual_seed(0))  # warm-up
            t = time.perf_counter()
            _, nfe = solve(m, op, y, cfg_s, torch.Generator().manual_seed(0))
            timings[name] = (time.perf_counter() - t) * 1000
        over = timings["free"] / nfe
        net = max(timings["real"] - timings["free"], 0.0) / nfe
        out[f"{task}_seconds_per_image"] = timings["real"] / 1000 / batch
        out[f"{task}_network_ms_per_step"] = net
        out[f"{task}_overhead_ms_per_step"] = over
        out[f"{task}_overhead_fraction"] = over / (net + over)
        out[f"{task}_nfe"] = nfe
    return out
