"""Training run: continuous denoising score matching (docs/design.md §2.2).

Loss: loss.dsm_loss (Eq. D4). Adam with a linear warm-up and a learning-rate schedule, gradient
clipping, and an EMA of the weights with a half-life in images (optim.py). Optionally starts from
given weights (`init`: train_init.py), validates every `val.every` steps (validation.py), and
takes the speed settings measured for this machine (train_speed.py).

Work directory layout:
    config.yaml                      resolved config (also stored in every checkpoint)
    checkpoints/checkpoint_<step>.pt numbered checkpoints (kept)
    checkpoints-meta/checkpoint.pt   latest meta-checkpoint: `train` resumes from it
    samples/step_<step>.png          sample grids at snapshots
    tb/                              TensorBoard scalars (loss, lr, ema_beta, images/s, val/...)
    validation.jsonl                 one validation record per line (validation.py)
Checkpoints hold the online and EMA weights, Adam's state, the step, the images seen by all ranks
(`nimg`, what the EMA ramp-up counts), the wall time of the run (`wall_s`, summed over resumes),
the `init` record and each rank's noise generator; the data of step k come from a generator
seeded by (seed, rank, k) (train_speed.batch_stream), so a resumed run repeats the uninterrupted
one. All writes are atomic. Runs under `torchrun` with
DistributedDataParallel (gloo on CPU, nccl on GPU); each rank draws from its own data shard;
rank 0 writes and validates.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from . import config as C
from .atomic import torch_save, write_text
from .data import build_dataset
from .errors import ScoreinvError
from .imaging import save_grid
from .loss import dsm_loss
from .optim import build_optimizer, ema_of, lr_at, lr_of
from .sampling.unconditional import sample_images
from .score import EMA, build_model, count_parameters, ema_copy, read_checkpoint
from .train_init import check_resume, load_init
from .train_speed import Speed, batch_stream, resolve_speed
from .validation import ValidationLog, build_validator

__all__ = ["train", "dsm_loss", "resolve_device", "lr_at", "snapshot", "RESUMABLE_KEYS"]

# config keys that may change when resuming a run (everything else must match); the whole `val`
# section may change too
RESUMABLE_KEYS = {"max_steps", "max_minutes", "log_every", "snapshot_every", "checkpoint_every", "meta_every",
                  "snapshot_samples", "snapshot_steps", "device", "num_threads", "precision", "bf16",
                  "channels_last", "compile", "data_workers", "lr_schedule", "lr_ref_steps", "lr_decay_steps",
                  "lr_min_ratio", "warmup", "ema_halflife_kimg", "ema_rampup", "ema_rate"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScoreinvError("train.device = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def _check_workdir(workdir: Path, cfg) -> None:
    """Refuse a work directory that holds another configuration's checkpoints."""
    saved = workdir / "config.yaml"
    if not saved.exists():
        if any((workdir / "checkpoints").glob("*.pt")) or (workdir / "checkpoints-meta" / "checkpoint.pt").exists():
            raise ScoreinvError(f"work directory {str(workdir)!r} holds checkpoints but no config.yaml; "
                                f"refusing to mix runs (use another --workdir)")
        return
    old = C.to_dict(C.load_config(str(saved)))
    new = C.to_dict(cfg)
    diffs = []
    for sec in new:
        if isinstance(new[sec], dict):
            if sec == "val":
                continue
            for k in new[sec]:
                if old.get(sec, {}).get(k) != new[sec][k] and not (sec == "train" and k in RESUMABLE_KEYS):
                    diffs.append(f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {new[sec][k]!r}")
        elif old.get(sec) != new[sec] and sec != "preset":
            diffs.append(f"{sec}: {old.get(sec)!r} -> {new[sec]!r}")
    if diffs:
        raise ScoreinvError(f"work directory {str(workdir)!r} holds a run of another configuration "
                            f"({'; '.join(diffs[:5])}); use another --workdir or the same config")


def dist_info():
    """(rank, world size, local rank, distributed): distributed under torchrun, even with one
    process (so `torchrun --nproc-per-node 1` runs the DistributedDataParallel path, e.g. nccl
    on a single GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local, world > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def _setup(t_cfg, distributed: bool, local: int) -> torch.device:
    device = resolve_device(t_cfg.device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if t_cfg.num_threads > 0:
        torch.set_num_threads(t_cfg.num_threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def _match_layout(opt: torch.optim.Optimizer) -> None:
    """Give Adam's moment buffers their parameter's memory layout (after a layout change)."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in list(st.items()):
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p).copy_(v)


def _speed_all_ranks(cfg, device, step: int, rank: int, distributed: bool, log) -> Speed:
    """Rank 0 resolves (and may probe); every rank takes its answer."""
    box = [resolve_speed(cfg, device, step, log=log) if rank == 0 else None]
    if distributed:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def train(cfg, workdir: str | Path, dataset=None, progress: bool = True, stop_after: int | None = None,
          init: str | None = None, val_dataset=None, speed: Speed | None = None) -> dict:
    """Train, resume, or start from `init` weights in `workdir` (module docstring).

    `dataset` / `val_dataset` (optional) override cfg.data (objects with sample_batch/shard/len and
    len/getitem). `stop_after` stops after this many steps of this call (tests), independent of
    max_steps. `speed` overrides the resolved speed settings. Returns {'step', 'loss', 'losses',
    'n_params', 'model', 'ema' (state dict), 'speed', 'validation' (records of this call)}.
    """
    workdir = Path(workdir)
    rank, world, local, distributed = dist_info()
    t_cfg = cfg.train
    device = _setup(t_cfg, distributed, local)
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    if rank == 0:
        _check_workdir(workdir, cfg)
        for stale in workdir.glob("**/.*.tmp*"):  # left by a run killed during a write
            stale.unlink()
    if distributed:
        dist.barrier()

    if dataset is None:
        dataset = build_dataset(cfg.data.dataset, "train", cfg.data.image_size, seed=t_cfg.seed,
                                **C.data_options(cfg.data))
    if len(dataset) == 0:
        raise ScoreinvError(f"dataset {cfg.data.dataset!r} has no training images; refusing to train on zero images")
    if world > 1:
        dataset = dataset.shard(rank, world)

    torch.manual_seed(t_cfg.seed)
    model = build_model(cfg).to(device)
    n_params = count_parameters(model)
    opt = build_optimizer(model.parameters(), t_cfg, device)
    ema = EMA(model.net, t_cfg.ema_rate)
    gen_noise = torch.Generator().manual_seed(t_cfg.seed * 1000 + 29 + rank)
    step, nimg, wall_s, warmup_from, init_rec, notes = 0, 0, 0.0, 0, None, []
    global_batch = t_cfg.batch_size * world
    meta = workdir / "checkpoints-meta" / "checkpoint.pt"
    resumed = meta.exists()
    if resumed:
        ck = read_checkpoint(meta)
        check_resume(ck.get("init"), init, workdir)
        model.net.load_state_dict(ck["model"])
        ema.load_state_dict({k: v.to(device) for k, v in ck["ema"].items()})
        opt.load_state_dict(ck["optimizer"])
        step, wall_s = int(ck["step"]), float(ck.get("wall_s", 0.0))
        nimg = int(ck.get("nimg", step * global_batch))
        warmup_from, init_rec = int(ck.get("warmup_from", 0)), ck.get("init")
        rng = ck["rng"][rank] if world > 1 and len(ck["rng"]) == world else ck["rng"][0]
        gen_noise.set_state(rng["noise"])
    elif init is not None:
        got = load_init(init, cfg, model, ema, opt)
        step, warmup_from, init_rec, notes = got["step"], got["warmup_from"], got["record"], got["notes"]
        nimg = got["nimg"]
    speed = speed or _speed_all_ranks(cfg, device, step, rank, distributed, log)
    if speed.channels_last:
        model.net.to(memory_format=torch.channels_last)
        _match_layout(opt)
    if rank == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        write_text(workdir / "config.yaml", C.to_yaml(cfg))
        how = (f"resuming at step {step}" if resumed else
               f"starting from {init_rec['spec']} at its step {step}" if init_rec else f"starting at step {step}")
        log(f"scoreinv train: {cfg.preset} | NCSN++ {n_params / 1e6:.2f} M parameters | "
            f"{cfg.data.image_size}x{cfg.data.image_size} | device {device} | world {world} | {how}")
        log(f"speed: {speed.describe()}")
        for n in notes:
            log(f"note: {n}")

    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(net) if speed.compile else net
    stream = batch_stream(dataset, t_cfg.batch_size, t_cfg.seed, rank, step, speed.data_workers,
                          pin=device.type == "cuda")  # workers start before the writer's threads

    writer = SummaryWriter(str(workdir / "tb")) if rank == 0 else None
    val_every = cfg.val.every
    validated_run = val_every > 0 and (t_cfg.max_minutes > 0 or t_cfg.max_steps - step >= val_every)
    vlog = ValidationLog(workdir / "validation.jsonl", step) if rank == 0 and val_every > 0 else None
    validator, records = None, []
    t_call = time.time()

    def validate():
        nonlocal validator
        if vlog is None or step in vlog.steps():
            return
        if validator is None:
            vds = val_dataset if val_dataset is not None else build_dataset(
                cfg.data.dataset, "val", cfg.data.image_size, seed=t_cfg.seed, **C.data_options(cfg.data))
            validator = build_validator(cfg, vds, device_batch=max(t_cfg.batch_size, 16))
        rec = {"step": step, "kimg": nimg / 1000, "wall_s": wall_s + time.time() - t_call,
               **validator(ema_copy(model, ema))}
        vlog.add(rec, writer)
        records.append(rec)
        log(f"validation at step {step}: denoise_mse_mean {rec['denoise_mse_mean']:.4g}"
            + (f", recon_psnr {rec['recon_psnr']:.2f} dB" if "recon_psnr" in rec else "") + f" ({rec['val_s']:.1f} s)")

    def save(kind: str):
        rng = {"noise": gen_noise.get_state()}
        rngs = [None] * world
        if distributed:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if rank != 0:
            return
        state = {"config": C.to_dict(cfg), "arch": C.architecture_signature(cfg), "step": step,
                 "model": model.net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                 "nimg": nimg, "rng": rngs, "n_params": n_params, "wall_s": wall_s + time.time() - t_call,
                 "warmup_from": warmup_from, "init": init_rec, "speed": asdict(speed),
                 "backend": dist.get_backend() if distributed else None}
        if kind == "numbered":
            torch_save(state, workdir / "checkpoints" / f"checkpoint_{step}.pt")
        torch_save(state, meta)

    if validated_run and not resumed:
        validate()
    bar = tqdm(total=t_cfg.max_steps, initial=step, disable=not (progress and rank == 0), desc="train")
    last_loss, losses, steps_this_call, time_up = float("nan"), [], 0, False
    t0, n0 = time.time(), 0
    while step < t_cfg.max_steps and (stop_after is None or steps_this_call < stop_after) and not time_up:
        x0 = next(stream).to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_of(t_cfg, step, warmup_from)
        loss = dsm_loss(model, x0, gen_noise, t_cfg.loss_weighting, speed.precision == "bf16", fwd,
                        speed.channels_last)
        if not torch.isfinite(loss):
            raise ScoreinvError(f"training loss became {loss.item()} at step {step}; lower train.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
        opt.step()
        ema.rate = ema_of(t_cfg, nimg, global_batch)
        ema.update(model.net)
        step += 1
        nimg += global_batch
        steps_this_call += 1
        n0 += global_batch
        last_loss = float(loss.detach())
        losses.append(last_loss)
        if rank == 0:
            bar.update(1)
            if step % t_cfg.log_every == 0 or step == 1:
                ips = n0 / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.2f}", img_s=f"{ips:.1f}")
                for k, v in (("loss", last_loss), ("images_per_s", ips), ("lr", opt.param_groups[0]["lr"]),
                             ("ema_beta", ema.rate)):
                    writer.add_scalar(k, v, step)
                t0, n0 = time.time(), 0
        time_up = _time_up(t_cfg.max_minutes, t_call, device, distributed)
        if step % t_cfg.checkpoint_every == 0 or step == t_cfg.max_steps:
            save("numbered")
        elif step % t_cfg.meta_every == 0 or time_up:
            save("meta")
        if rank == 0 and t_cfg.snapshot_every > 0 and step % t_cfg.snapshot_every == 0:
            snapshot(model, ema, cfg, workdir / "samples" / f"step_{step}.png", device)
        if val_every > 0 and step % val_every == 0:
            validate()
    if steps_this_call and step % t_cfg.meta_every and step % t_cfg.checkpoint_every and not time_up:
        save("meta")
    if validated_run and (step >= t_cfg.max_steps or time_up):
        validate()
    bar.close()
    del stream  # ends the data workers
    if writer is not None:
        writer.close()
    return {"step": step, "loss": last_loss, "losses": losses, "n_params": n_params, "model": model,
            "ema": ema.state_dict(), "speed": speed, "validation": records}


def _time_up(max_minutes: float, t_call: float, device, distributed: bool) -> bool:
    """Whether train.max_minutes have passed since this call started (rank 0's clock under DDP)."""
    if max_minutes <= 0:
        return False
    up = time.time() - t_call >= 60 * max_minutes
    if not distributed:
        return up
    flag = torch.tensor([float(up)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def snapshot(model, ema, cfg, path: Path, device) -> None:
    """Write a PNG grid of unconditional EMA samples."""
    m = ema_copy(model, ema)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = sample_images(m, cfg.train.snapshot_samples, cfg.data.image_size, steps=cfg.train.snapshot_steps,
                      snr=cfg.sample.snr, generator=g, device=device)
    save_grid(x, path)
