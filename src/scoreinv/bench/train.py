"""Training throughput against the machine's measured matrix-multiply peak (one run).

Prints, as `key: value`: train_images_per_s, batch_size, image_size, n_params,
matmul_peak_gflops (float32 GEMM measured here, same threads), train_gflops (achieved: FLOPs
of one training step counted by torch's FlopCounterMode, times steps/s), peak_fraction,
and the same with bfloat16 autocast (bf16_*): its speed, and bf16_loss_rel_diff, the relative
difference of the loss on identical weights, batch and noise (its effect on the objective).
"""
from __future__ import annotations

import statistics
import time

import torch


def matmul_peak_gflops(n: int = 1024, repeats: int = 5, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(ts) / 1e9


def _step_flops(model, x, gen, weighting):
    from torch.utils.flop_counter import FlopCounterMode

    from ..train import dsm_loss
    with FlopCounterMode(display=False) as fc:
        loss = dsm_loss(model, x, gen, weighting)
        loss.backward()
    return fc.get_total_flops()


def run(preset: str = "ct64", batch_size: int | None = None, steps: int = 4, overrides=()) -> dict:
    from .. import config as C
    from ..score import build_model, count_parameters, read_checkpoint, shipped_models
    from ..train import dsm_loss

    cfg = C.load_config(preset, list(overrides))
    bs = batch_size or cfg.train.batch_size
    s = cfg.data.image_size
    torch.manual_seed(0)
    model = build_model(cfg)
    shipped = shipped_models().get(preset)
    if shipped is not None:  # trained weights, so bf16's effect on the loss is a real one
        ema = read_checkpoint(shipped)["ema"]
        model.net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ema.items()})
    else:  # zero-initialised output layers would make both losses identical
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    out_weights = "shipped" if shipped is not None else "random"
    model.net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(bs, 1, s, s)
    gen = torch.Generator().manual_seed(0)
    flops = _step_flops(model, x, gen, cfg.train.loss_weighting)
    out = {"batch_size": bs, "image_size": s, "n_params": count_parameters(model), "weights": out_weights}
    peak = matmul_peak_gflops()
    out["matmul_peak_gflops"] = peak
    with torch.no_grad():
        l32 = float(dsm_loss(model, x, torch.Generator().manual_seed(123), cfg.train.loss_weighting))
        l16 = float(dsm_loss(model, x, torch.Generator().manual_seed(123), cfg.train.loss_weighting, bf16=True))
    out["bf16_loss_rel_diff"] = abs(l16 - l32) / abs(l32)
    for tag, bf16 in (("", False), ("bf16_", True)):
        times = []
        for i in range(steps + 1):
            t = time.perf_counter()
            loss = dsm_loss(model, x, torch.Generator().manual_seed(i), cfg.train.loss_weighting, bf16=bf16)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # first step is warm-up
                times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        out[f"{tag}train_images_per_s"] = bs / sec
        out[f"{tag}train_gflops"] = flops / sec / 1e9
        out[f"{tag}peak_fraction"] = flops / sec / 1e9 / peak
    out["bf16_speedup"] = out["bf16_train_images_per_s"] / out["train_images_per_s"]
    return out
