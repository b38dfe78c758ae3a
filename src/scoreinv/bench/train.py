"""Training throughput, variant by variant, against the measured matmul peaks (one run).

Each variant trains the preset's network on fresh weights for `seconds` (train_speed.measure;
median step time after a compile/warm-up step) and prints `<variant>_images_per_s`, and the
achieved GFLOP/s (FLOPs of one training step counted by torch's FlopCounterMode, times steps/s)
as fractions of the float32 and bfloat16 matrix-multiply peaks measured in the same run on the
same device and threads (`<variant>_peak_fraction`, `<variant>_bf16_peak_fraction`):

- layouts: `fp32`, `fp32_cl`, `bf16`, `bf16_cl` (bfloat16 autocast; `_cl`: channels-last);
- compile: `compiled`, the fastest layout under torch.compile; `compile_s` (its compile
  seconds) apart from its steady speed;
- adam: the fastest layout with `adam_foreach` and `adam_loop` (training uses the fused kernel);
- data: the fastest layout fed by the real dataset, generated inline (`data_inline`) or by
  worker processes (`data_workers`, train.data_workers of this machine, at least 1);
- batch: the fastest layout at other batch sizes (`batch_<B>`: half and twice the preset's on
  the CPU, 4x and 16x on a GPU).

On CUDA, float32 convolutions run in TF32 (cuDNN's default) while the float32 matmul peak is
measured in true float32 (torch's default), so an fp32 variant's fraction can exceed 1 there.

`chosen` is what a run with `auto` settings takes (train_speed.resolve_speed): the fastest
layout, compiled if the gain over a 10000-step run exceeds twice the compile time. With `save`
(and the layouts measured) the record goes to the probe cache, so `scoreinv train` uses it. Also: `bf16_loss_rel_diff`,
the relative change of the loss under bf16 on identical weights, batch and noise.
"""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import config as C
from ..data import build_dataset
from ..errors import ScoreinvError, check_choice, check_int, check_range
from ..loss import dsm_loss
from ..score import build_model, count_parameters, read_checkpoint, shipped_models
from ..train import resolve_device
from ..train_speed import (LAYOUTS, batch_stream, bf16_supported, cache_path, compile_pays, data_workers,
                           device_name, measure, probe_key, save_record, sync, variant_name)

GROUPS = ("layouts", "compile", "adam", "data", "batch")
REALISTIC_STEPS = 10000


def matmul_peak_gflops(n: int = 1024, repeats: int = 5, dtype=torch.float32, device="cpu") -> float:
    """Best-of-`repeats` GFLOP/s of an n x n matrix product (2 n³ FLOPs). Products of size n/4 are
    timed first: when at their rate one n x n product would take over 0.25 s (a dtype without fast
    kernels here), their rate is the answer, so a slow path costs no seconds."""
    dev = torch.device(device)

    def rate(m: int, reps: int) -> tuple[float, float]:
        a, b = torch.randn(m, m, dtype=dtype, device=dev), torch.randn(m, m, dtype=dtype, device=dev)
        ts = []
        for _ in range(reps):
            sync(dev)
            t = time.perf_counter()
            a @ b
            sync(dev)
            ts.append(time.perf_counter() - t)
        return 2 * m ** 3 / min(ts) / 1e9

    small = rate(max(n // 4, 16), 3)
    if 2 * n ** 3 / (small * 1e9) > 0.25:
        return small
    return rate(n, repeats + 1)


def step_flops(cfg, device, batch: int) -> float:
    """FLOPs of one training step (forward and backward) at `batch` images."""
    model = build_model(cfg).to(device)
    x = torch.rand(batch, cfg.model.num_channels, cfg.data.image_size, cfg.data.image_size, device=device)
    with FlopCounterMode(display=False) as fc:
        dsm_loss(model, x, torch.Generator().manual_seed(0), cfg.train.loss_weighting).backward()
    return float(fc.get_total_flops())


def bf16_loss_rel_diff(cfg, preset: str, device) -> float:
    """|L_bf16 - L_fp32| / |L_fp32| on identical weights (shipped if any), batch and noise."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    shipped = shipped_models().get(preset)
    if shipped is not None and C.architecture_signature(C.from_dict(read_checkpoint(shipped)["config"])) \
            == C.architecture_signature(cfg):
        ema = read_checkpoint(shipped)["ema"]
        model.net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ema.items()})
    else:  # zero-initialised output layers would make both losses identical
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    s = cfg.data.image_size
    x = torch.rand(cfg.train.batch_size, cfg.model.num_channels, s, s, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.no_grad():
        l32 = float(dsm_loss(model, x, torch.Generator().manual_seed(123), cfg.train.loss_weighting))
        l16 = float(dsm_loss(model, x, torch.Generator().manual_seed(123), cfg.train.loss_weighting, bf16=True))
    return abs(l16 - l32) / abs(l32)


def run(preset: str = "ct64", batch_size: int | None = None, overrides=(), seconds: float = 3.0,
        device: str = "auto", groups=GROUPS, batch_sizes=None, threads: int | None = None, save: bool = True,
        log=print) -> dict:
    """Measure the variants of `groups` (module docstring) -> a flat dict of results.

    `threads` sets torch's intra-op threads for the run (batch size per thread count: run once
    per count); `save` writes the probe cache; `log` gets one line per measured variant.
    """
    cfg = C.load_config(preset, list(overrides))
    if batch_size is not None:
        check_int("--batch-size", batch_size)
        cfg.train.batch_size = int(batch_size)
    check_range("--seconds", seconds, 0.0)
    for g in groups:
        check_choice("bench train group", g, GROUPS)
    if threads is not None:
        torch.set_num_threads(check_int("--threads", threads))
    dev = resolve_device(device)
    b = cfg.train.batch_size
    n = 8192 if dev.type == "cuda" else 1024
    peak = matmul_peak_gflops(n, device=dev)
    peak16 = matmul_peak_gflops(n, dtype=torch.bfloat16, device=dev) if bf16_supported(dev) else float("nan")
    flops_per_image = step_flops(cfg, dev, b) / b
    out = {"device": device_name(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "batch_size": b, "image_size": cfg.data.image_size, "n_params": count_parameters(build_model(cfg)),
           "gflop_per_image": flops_per_image / 1e9, "matmul_peak_gflops": peak, "bf16_matmul_peak_gflops": peak16}
    if bf16_supported(dev):
        out["bf16_loss_rel_diff"] = bf16_loss_rel_diff(cfg, preset, dev)

    def put(name: str, ips: float, measured: bool = True) -> None:
        out[f"{name}_images_per_s"] = ips
        out[f"{name}_peak_fraction"] = ips * flops_per_image / 1e9 / peak
        out[f"{name}_bf16_peak_fraction"] = ips * flops_per_image / 1e9 / peak16
        if measured:
            log(f"measured {name}: {ips:.1f} images/s")

    layouts = {}
    for prec, cl in LAYOUTS:
        if prec == "bf16" and not bf16_supported(dev):
            continue
        if "layouts" in groups or (prec, cl) == ("fp32", True):
            layouts[variant_name(prec, cl)] = measure(cfg, dev, prec, cl, False, b, seconds)["images_per_s"]
            put(variant_name(prec, cl), layouts[variant_name(prec, cl)])
    best = max(layouts, key=layouts.get)
    prec, cl = best.split("_")[0], best.endswith("_cl")
    rec = {"batch": b, "variants": layouts, "best": best, "precision": prec, "channels_last": cl,
           "eager_images_per_s": layouts[best], "compile_s": None, "compiled_images_per_s": None,
           "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds_per_variant": seconds}
    if "compile" in groups:
        m = measure(cfg, dev, prec, cl, True, b, seconds)
        put("compiled", m["images_per_s"])
        out["compile_s"] = m["compile_s"]
        rec["compile_s"], rec["compiled_images_per_s"] = m["compile_s"], m["images_per_s"]
    if "adam" in groups:
        for name, impl in (("adam_foreach", {"foreach": True}), ("adam_loop", {"foreach": False})):
            put(name, measure(cfg, dev, prec, cl, False, b, seconds, adam=impl)["images_per_s"])
    if "data" in groups:
        ds = build_dataset(cfg.data.dataset, "train", cfg.data.image_size, seed=0, **C.data_options(cfg.data))
        n_workers = max(1, data_workers(-1, dev))
        for name, w in (("data_inline", 0), ("data_workers", n_workers)):
            stream = batch_stream(ds, b, 0, 0, 0, w, pin=dev.type == "cuda")
            put(name, measure(cfg, dev, prec, cl, False, b, seconds, stream=stream)["images_per_s"])
            del stream
        out["data_workers"] = n_workers
    if "batch" in groups:
        for bb in batch_sizes or ([4 * b, 16 * b] if dev.type == "cuda" else [max(1, b // 2), 2 * b]):
            bb = check_int("batch size", bb)
            put(f"batch_{bb}", measure(cfg, dev, prec, cl, False, bb, seconds)["images_per_s"])
    compiled = compile_pays(rec, REALISTIC_STEPS)
    out["chosen"] = best + ("+compile" if compiled else "")
    put("chosen", rec["compiled_images_per_s"] if compiled else layouts[best], measured=False)
    if save and "layouts" in groups:
        out["cache"] = str(save_record(probe_key(cfg, dev, b), rec))
    else:
        out["cache"] = f"not written ({cache_path()}: {'save off' if not save else 'layouts not measured'})"
    return out


def check_groups(text: str) -> tuple[str, ...]:
    """Parse a comma-separated --groups value."""
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    if not groups:
        raise ScoreinvError(f"--groups {text!r}: expected a comma-separated subset of {', '.join(GROUPS)}")
    for g in groups:
        check_choice("--groups entry", g, GROUPS)
    return groups
