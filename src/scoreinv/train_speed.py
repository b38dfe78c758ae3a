"""Training speed: the pure-speed choices of a run, measured once per machine, and the data stream.

Choices (none changes what is learnt beyond rounding): precision (float32, or bfloat16 autocast
of the network), the channels-last memory format, `torch.compile` of the network, and data
generation in worker processes. `train.precision`, `train.channels_last` and `train.compile` set
to `auto` take the measured choice; any other value is used as given.

Probe (`probe`): a few seconds of training steps each for float32 and bfloat16, with and without
channels-last, on this run's network and batch (fresh weights, a fixed batch), then, when
compile is `auto`, one compile of the fastest: its compile seconds and steady speed. The record
is cached in $XDG_CACHE_HOME/scoreinv/train_probe.json (default ~/.cache/scoreinv/) under the key
'device | torch version | threads | architecture hash | batch'. `scoreinv bench train` writes
it too. A run with `auto` and no record probes when it has at least PROBE_MIN_STEPS steps left
(the probe costs ≈ 15 s plus a compile); a shorter run takes `DEFAULTS` (what training did
before: float32, channels-last on; no compile).

Compile pays only over a long enough run: it is chosen when the steady gain per step times the
steps this run will take (max_steps - step, or fewer within train.max_minutes) exceeds twice the
compile seconds (each process compiles again).

Data (`batch_stream`): the batch of step k is drawn with its own generator, seeded from (seed,
rank, k), so the stream is the same inline, with any number of worker processes and after a
resume. train.data_workers = -1 (auto): on CUDA min(12, CPUs - 2) workers; on the CPU one worker
when there are more CPUs than torch threads (a spare core), otherwise inline (a worker would
take cores from the training threads; data generation runs single-threaded, data/base.py); a run
of fewer than PROBE_MIN_STEPS steps, or of under a minute, generates inline.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import config as C
from .atomic import write_text
from .data.base import derive_seed, make_generator
from .loss import dsm_loss
from .optim import build_optimizer
from .score import build_model

PROBE_MIN_STEPS = 2000
CACHE_NAME = "train_probe.json"
LAYOUTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


@dataclass(frozen=True)
class Speed:
    """The resolved speed settings of a run; `source` says where the `auto` ones came from."""
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    data_workers: int = 0
    source: str = "defaults"

    def describe(self) -> str:
        return (f"{self.precision}{' channels-last' if self.channels_last else ''}"
                f"{' compiled' if self.compile else ''}, {self.data_workers} data worker(s) ({self.source})")


DEFAULTS = Speed()


def variant_name(precision: str, channels_last: bool) -> str:
    return precision + ("_cl" if channels_last else "")


# --- cache ---------------------------------------------------------------------------------
def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "scoreinv" / CACHE_NAME


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")     # Linux names the CPU model here; elsewhere platform's name
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def probe_key(cfg, device: torch.device, batch: int, threads: int | None = None) -> str:
    arch = json.dumps(C.architecture_signature(cfg), sort_keys=True)
    h = hashlib.sha1(arch.encode()).hexdigest()[:12]
    threads = torch.get_num_threads() if threads is None else threads
    return f"{device_name(device)} | torch {torch.__version__} | threads {threads} | arch {h} | batch {batch}"


def read_cache() -> dict:
    p = cache_path()
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}  # an unreadable cache is only a lost measurement: it is measured again
    return data if isinstance(data, dict) else {}


def save_record(key: str, record: dict) -> Path:
    data = read_cache()
    data[key] = record
    p = cache_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text(p, json.dumps(data, indent=1, sort_keys=True))
    return p


# --- measuring -----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg, device: torch.device, precision: str = "fp32", channels_last: bool = True, compile: bool = False,
            batch: int | None = None, seconds: float = 3.0, adam: dict | None = None, stream=None) -> dict:
    """Training steps/s of one variant on fresh weights: {'images_per_s', 'step_s', 'compile_s'}.

    Steps run until `seconds` have passed (at least 3 timed); the first (compile) and second
    (warm-up) steps are not timed; step_s is the median. `stream` (an iterator of batches)
    replaces the fixed random batch (to measure data generation inline or in workers).
    """
    b = batch or cfg.train.batch_size
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if channels_last:
        model.net.to(memory_format=torch.channels_last)
    opt = build_optimizer(model.parameters(), cfg.train, device, adam)
    fwd = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    s = cfg.data.image_size
    fixed = torch.rand(b, cfg.model.num_channels, s, s, generator=torch.Generator().manual_seed(1)).to(device)

    def step():
        x0 = next(stream).to(device, non_blocking=True) if stream is not None else fixed
        loss = dsm_loss(model, x0, gen, cfg.train.loss_weighting, precision == "bf16", fwd, channels_last)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    step()
    times, end = [], time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {"images_per_s": b / sec, "step_s": sec, "compile_s": max(first - sec, 0.0) if compile else 0.0}


def bf16_supported(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else True


def probe(cfg, device: torch.device, batch: int | None = None, seconds: float = 3.0, with_compile: bool = True,
          log=print) -> dict:
    """Measure the LAYOUTS (and a compile of the fastest) -> a cache record (module docstring)."""
    b = batch or cfg.train.batch_size
    variants = {}
    for prec, cl in LAYOUTS:
        if prec == "bf16" and not bf16_supported(device):
            continue
        variants[variant_name(prec, cl)] = measure(cfg, device, prec, cl, False, b, seconds)["images_per_s"]
        log(f"probe: {variant_name(prec, cl)} {variants[variant_name(prec, cl)]:.1f} images/s")
    best = max(variants, key=variants.get)
    prec, cl = best.split("_")[0], best.endswith("_cl")
    rec = {"batch": b, "variants": variants, "best": best, "precision": prec, "channels_last": cl,
           "eager_images_per_s": variants[best], "compile_s": None, "compiled_images_per_s": None,
           "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds_per_variant": seconds}
    if with_compile:
        m = measure(cfg, device, prec, cl, True, b, seconds)
        rec["compile_s"], rec["compiled_images_per_s"] = m["compile_s"], m["images_per_s"]
        log(f"probe: {best} compiled {m['images_per_s']:.1f} images/s after {m['compile_s']:.0f} s of compiling")
    return rec


def compile_pays(rec: dict, steps: float) -> bool:
    """Whether compiling gains more than twice its compile time over `steps` steps."""
    if rec.get("compile_s") is None or not rec.get("compiled_images_per_s"):
        return False
    b = rec["batch"]
    gain = b / rec["eager_images_per_s"] - b / rec["compiled_images_per_s"]
    return gain * steps > 2 * rec["compile_s"]


def planned_steps(t, step: int, images_per_s: float | None = None) -> float:
    """Steps this call will take: max_steps - step, or fewer within train.max_minutes."""
    n = float(t.max_steps - step)
    if t.max_minutes > 0 and images_per_s:
        n = min(n, t.max_minutes * 60 * images_per_s / t.batch_size)
    return max(n, 0.0)


def data_workers(setting: int, device: torch.device, threads: int | None = None, steps: float | None = None) -> int:
    """train.data_workers resolved (module docstring); `steps` (planned steps of the run): fewer
    than PROBE_MIN_STEPS generate inline (a worker's start costs about a second)."""
    if setting >= 0:
        return int(setting)
    if steps is not None and steps < PROBE_MIN_STEPS:
        return 0
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(0, min(12, cpus - 2))
    threads = torch.get_num_threads() if threads is None else threads
    return 1 if cpus > threads else 0


def resolve_speed(cfg, device: torch.device, step: int = 0, allow_probe: bool = True, log=print) -> Speed:
    """The Speed of a run from the config, the probe cache, a new probe, or DEFAULTS."""
    t = cfg.train
    want = {"precision": C.precision_of(cfg), "channels_last": t.channels_last, "compile": t.compile}
    auto = [k for k, v in want.items() if v == "auto"]
    rec, source = None, "config"
    if auto:
        key = probe_key(cfg, device, t.batch_size)
        rec = read_cache().get(key)
        source = "cached probe"
        long_run = planned_steps(t, step) >= PROBE_MIN_STEPS and (t.max_minutes == 0 or t.max_minutes >= 10)
        if rec is None and allow_probe and long_run:
            log(f"probing training speed once for {key} (cached in {cache_path()})")
            rec = probe(cfg, device, with_compile=want["compile"] == "auto", log=log)
            save_record(key, rec)
            source = "probe"
        if rec is None:
            source = "defaults"
    got = {}
    for k, v in want.items():
        if v != "auto":
            got[k] = {"on": True, "off": False}.get(v, v)
        elif rec is None:
            got[k] = getattr(DEFAULTS, k)
        elif k == "compile":
            got[k] = compile_pays(rec, planned_steps(t, step, rec.get("eager_images_per_s")))
        else:
            got[k] = rec[k]
    if got["precision"] == "bf16" and not bf16_supported(device):
        got["precision"] = "fp32"
    steps = planned_steps(t, step, rec.get("eager_images_per_s") if rec else None)
    workers = data_workers(t.data_workers, device, steps=0 if 0 < t.max_minutes < 1 else steps)
    return Speed(got["precision"], bool(got["channels_last"]), bool(got["compile"]), workers, source)


def speed_dict(s: Speed) -> dict:
    return asdict(s)


# --- the data stream -----------------------------------------------------------------------
class StepBatches(torch.utils.data.IterableDataset):
    """Batches of steps start, start+1, ... (module docstring); each worker takes every n-th step,
    and DataLoader reads the workers in turn, so the order is the step order."""

    def __init__(self, dataset, batch: int, seed: int, rank: int, start: int):
        super().__init__()
        self.dataset, self.batch, self.seed, self.rank, self.start = dataset, batch, seed, rank, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start + w
        while True:
            yield self.dataset.sample_batch(self.batch, step_generator(self.seed, self.rank, k))
            k += n


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return make_generator(derive_seed(seed, "train-batch", rank, step))


def batch_stream(dataset, batch: int, seed: int, rank: int, start: int, workers: int = 0, pin: bool = False):
    """An iterator over the training batches (B, C, S, S) of steps start, start+1, ...;
    `workers` > 0 generates them ahead in that many processes (torch DataLoader)."""
    src = StepBatches(dataset, batch, seed, rank, start)
    if workers <= 0:
        return iter(src)
    return iter(torch.utils.data.DataLoader(src, batch_size=None, num_workers=workers, prefetch_factor=2,
                                            pin_memory=pin))
