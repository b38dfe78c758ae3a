"""Training run: continuous denoising score matching (DESIGN.md §2.1).

Loss per image: w(σ) ‖β(t) s_θ(x_t, t) + z‖² summed over pixels, x_t = α(t) x_0 + β(t) z,
t ~ U[ε, 1]; w = 1 (the paper), or w = 1 + σ²/σ_data² (`edm`: uniform weight on the
preconditioned network output). Adam with linear warm-up, gradient clipping, EMA.

Work directory layout:
    config.yaml                      resolved config (also stored in every checkpoint)
    checkpoints/checkpoint_<step>.pt numbered checkpoints (kept)
    checkpoints-meta/checkpoint.pt   latest meta-checkpoint: `train` resumes from it
    samples/step_<step>.png          sample grids at snapshots
    tb/                              TensorBoard scalars
All writes are atomic. Runs under `torchrun` with DistributedDataParallel (gloo on CPU,
nccl on GPU); each rank draws from its own data shard; rank 0 writes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import config as C
from .atomic import torch_save, write_text
from .errors import ScoreinvError
from .score import EMA, build_model, count_parameters, ema_copy, read_checkpoint

# config sections that may change when resuming a run (everything else must match)
RESUMABLE_KEYS = {"max_steps", "log_every", "snapshot_every", "checkpoint_every", "meta_every",
                  "snapshot_samples", "snapshot_steps", "device", "num_threads"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScoreinvError("train.device = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def dsm_loss(model, x0: torch.Tensor, generator: torch.Generator, weighting: str = "score",
             bf16: bool = False, forward=None) -> torch.Tensor:
    """Mean over the batch of w(σ) ‖β s_θ(x_t, t) + z‖² (sum over pixels).

    `forward` (default: `model`) is what computes the score: the DistributedDataParallel
    wrapper under torchrun, so gradients are averaged across ranks.
    """
    sde = model.sde
    b = x0.shape[0]
    t = torch.rand(b, generator=generator, dtype=torch.float64).to(x0.device) * (1 - sde.eps) + sde.eps
    z = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    alpha, beta = sde.marginal_coeffs(t)
    a = alpha.float().reshape(-1, 1, 1, 1)
    bt = beta.float().reshape(-1, 1, 1, 1)
    xt = a * x0 + bt * z
    if x0.device.type == "cpu":
        xt = xt.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        s = (forward or model)(xt, t)
    per = ((bt * s.float() + z) ** 2).flatten(1).sum(1)
    if weighting == "edm":
        per = per * (1 + (beta / alpha).float() ** 2 / model.sigma_data ** 2)
    return per.mean()


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
            for k in new[sec]:
                if old.get(sec, {}).get(k) != new[sec][k] and not (sec == "train" and k in RESUMABLE_KEYS):
                    diffs.append(f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {new[sec][k]!r}")
        elif old.get(sec) != new[sec] and sec != "preset":
            diffs.append(f"{sec}: {old.get(sec)!r} -> {new[sec]!r}")
    if diffs:
        raise ScoreinvError(f"work directory {str(workdir)!r} holds a run of another configuration "
                            f"({'; '.join(diffs[:5])}); use another --workdir or the same config")


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup) if warmup > 0 else base


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def train(cfg, workdir: str | Path, dataset=None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume) in `workdir`. Returns {'step', 'loss'} of the last step.

    `dataset` (optional) overrides cfg.data (an object with sample_batch/shard/len).
    `stop_after` stops after this many steps of this call (tests), independent of max_steps.
    """


    workdir = Path(workdir)
    rank, world, local = _dist_info()
    t_cfg = cfg.train
    device = resolve_device(t_cfg.device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if t_cfg.num_threads > 0:
        torch.set_num_threads(t_cfg.num_threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    if rank == 0:
        _check_workdir(workdir, cfg)
        for stale in workdir.glob("**/.*.tmp*"):  # left by a run killed during a write
            stale.unlink()
    if world > 1:
        dist.barrier()

    if dataset is None:
        from .data import build_dataset

        dataset = build_dataset(cfg.data.dataset, "train", cfg.data.image_size, seed=t_cfg.seed,
                                **_data_options(cfg.data))
    if len(dataset) == 0:
        raise ScoreinvError(f"dataset {cfg.data.dataset!r} has no training images; refusing to train on zero images")
    if world > 1:
        dataset = dataset.shard(rank, world)

    torch.manual_seed(t_cfg.seed)
    model = build_model(cfg).to(device)
    if device.type == "cpu":
        model.net.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    opt = torch.optim.Adam(model.parameters(), lr=t_cfg.lr, betas=(t_cfg.beta1, 0.999), eps=t_cfg.eps,
                           weight_decay=t_cfg.weight_decay)
    ema = EMA(model.net, t_cfg.ema_rate)
    gen_data = torch.Generator().manual_seed(t_cfg.seed * 1000 + 17 + rank)
    gen_noise = torch.Generator().manual_seed(t_cfg.seed * 1000 + 29 + rank)
    step = 0
    meta = workdir / "checkpoints-meta" / "checkpoint.pt"
    if meta.exists():
        ck = read_checkpoint(meta)
        model.net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        rng = ck["rng"][rank] if world > 1 and len(ck["rng"]) == world else ck["rng"][0]
        gen_data.set_state(rng["data"])
        gen_noise.set_state(rng["noise"])
    if rank == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        write_text(workdir / "config.yaml", C.to_yaml(cfg))
        print(f"scoreinv train: {cfg.preset} | NCSN++ {n_params / 1e6:.2f} M parameters | "
              f"{cfg.data.image_size}x{cfg.data.image_size} | device {device} | world {world} | "
              f"{'resuming at' if step else 'starting at'} step {step}", flush=True)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(workdir / "tb"))

    def save(kind: str):
        rng = {"data": gen_data.get_state(), "noise": gen_noise.get_state()}
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if rank != 0:
            return
        state = {"config": C.to_dict(cfg), "arch": C.architecture_signature(cfg), "step": step,
                 "model": model.net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                 "rng": rngs, "n_params": n_params}
        if kind == "numbered":
            torch_save(state, workdir / "checkpoints" / f"checkpoint_{step}.pt")
        torch_save(state, meta)

    from tqdm.auto import tqdm
    bar = tqdm(total=t_cfg.max_steps, initial=step, disable=not (progress and rank == 0), desc="train")
    last_loss = float("nan")
    losses = []
    steps_this_call = 0
    t0, n0 = time.time(), 0
    while step < t_cfg.max_steps and (stop_after is None or steps_this_call < stop_after):
        x0 = dataset.sample_batch(t_cfg.batch_size, gen_data).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, t_cfg.lr, t_cfg.warmup)
        loss = dsm_loss(model, x0, gen_noise, t_cfg.loss_weighting, t_cfg.bf16, forward=net)
        if not torch.isfinite(loss):
            raise ScoreinvError(f"training loss became {loss.item()} at step {step}; lower train.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
        opt.step()
        ema.update(model.net)
        step += 1
        steps_this_call += 1
        n0 += x0.shape[0] * world
        last_loss = float(loss.detach())
        losses.append(last_loss)
        if rank == 0:
            bar.update(1)
            if step % t_cfg.log_every == 0 or step == 1:
                ips = n0 / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.2f}", img_s=f"{ips:.1f}")
                writer.add_scalar("loss", last_loss, step)
                writer.add_scalar("images_per_s", ips, step)
                writer.add_scalar("lr", opt.param_groups[0]["lr"], step)
                t0, n0 = time.time(), 0
        if step % t_cfg.checkpoint_every == 0 or step == t_cfg.max_steps:
            save("numbered")
        elif step % t_cfg.meta_every == 0:
            save("meta")
        if rank == 0 and t_cfg.snapshot_every > 0 and step % t_cfg.snapshot_every == 0:
            snapshot(model, ema, cfg, workdir / "samples" / f"step_{step}.png", device)
    if steps_this_call and step % t_cfg.meta_every and step % t_cfg.checkpoint_every:
        save("meta")
    bar.close()
    if writer is not None:
        writer.close()
    return {"step": step, "loss": last_loss, "losses": losses, "n_params": n_params, "model": model}


def _data_options(d) -> dict:
    return {"axis": d.axis, "normalize": d.normalize, "hu_min": d.hu_min, "hu_max": d.hu_max}


def snapshot(model, ema, cfg, path: Path, device) -> None:
    """Write a PNG grid of unconditional EMA samples."""
    from .sampling.unconditional import sample_images
    from .imaging import save_grid

    m = ema_copy(model, ema)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = sample_images(m, cfg.train.snapshot_samples, cfg.data.image_size, steps=cfg.train.snapshot_steps,
                      snr=cfg.sample.snr, generator=g, device=device)
    save_grid(x, path)
