"""Starting a training run from weights: `scoreinv train --init NAME|CHECKPOINT` (docs/design.md §2.2).

The source is what `score.resolve_checkpoint` accepts: a shipped model name (`ct64`, `mri64`:
float16 EMA weights only), a checkpoint file (a numbered or meta checkpoint, or an exported
model), or a training work directory (its latest checkpoint).

- Architecture: `config.architecture_signature` of the file's config must equal this run's;
  otherwise the run is refused, naming each differing key with both values. Other model keys
  (σ range, σ_data, number of scales) may differ; they are listed in the notes.
- Weights: online <- the file's `model`, EMA <- its `ema` (both cast to float32). A file with
  EMA weights only (shipped or exported models) initialises both from the EMA.
- Optimiser: Adam's state is loaded when the file has one (`optimizer`), with this run's Adam
  settings (lr, betas, eps, weight decay), not the file's.
- Step: the run continues at the file's step and images seen (`nimg`; for an exported model
  step x its batch size), so the learning-rate schedule and the EMA ramp-up (optim.py) go on
  where they were. With the optimiser state loaded the warm-up is not redone
  (an exact continuation); a fresh Adam (a file without optimiser state) warms up again over
  train.warmup steps from that step, because its first updates are ±lr per weight whatever
  the gradient's size.
- Resume wins: in a work directory that already holds a meta-checkpoint the run resumes from
  it; that directory's record of the source it was started from (`init` in its checkpoints)
  must name the same file, otherwise the run is refused (a run started from scratch cannot be
  re-initialised in place either). Repeating the same command line therefore resumes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import config as C
from .errors import ScoreinvError
from .optim import reset_hyperparameters
from .score import EMA, read_checkpoint, resolve_checkpoint


def init_record(spec: str) -> dict:
    """What a run started with `--init spec` records in its checkpoints: the spec as given and
    the resolved file (absolute), which is what a later resume compares."""
    return {"spec": str(spec), "path": str(Path(resolve_checkpoint(str(spec))).resolve())}


def check_resume(saved: dict | None, init: str | None, workdir: Path) -> None:
    """Refuse `--init` on a work directory whose run was started otherwise (module docstring)."""
    if init is None:
        return
    want = init_record(init)
    if saved is None:
        raise ScoreinvError(f"--init {init}: work directory {str(workdir)!r} already holds a run started from "
                            f"scratch; --init only starts a new run (drop --init to resume it, or use another "
                            f"--workdir)")
    if saved.get("path") != want["path"]:
        raise ScoreinvError(f"--init {init}: work directory {str(workdir)!r} holds a run started from "
                            f"{saved.get('spec')!r} ({saved.get('path')}); drop --init (or give that one) to "
                            f"resume it, or use another --workdir")


def _key(k: str) -> str:
    return "data.image_size" if k == "image_size" else f"model.{k}"


def architecture_diff(theirs: dict, ours: dict) -> list[str]:
    """'key: file value -> this config value' for every differing architecture key."""
    return [f"{_key(k)}: {theirs.get(k)!r} (file) vs {ours.get(k)!r} (this config)"
            for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]


def _float32(sd: dict | None) -> dict | None:
    if sd is None:
        return None
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_init(spec: str, cfg, model, ema: EMA, opt: torch.optim.Optimizer) -> dict:
    """Load the weights (and optimiser state) of `spec` into `model`, `ema`, `opt` (module docstring).

    Returns {'step', 'nimg' (images seen: the file's record, else step x its batch size),
    'warmup_from', 'optimizer' (bool: state loaded), 'record' (init_record), 'notes' (list of str:
    other model keys that differ)}.
    """
    path = resolve_checkpoint(str(spec))
    ck = read_checkpoint(path)
    theirs_cfg = C.from_dict(ck["config"])
    diff = architecture_diff(C.architecture_signature(theirs_cfg), C.architecture_signature(cfg))
    if diff:
        raise ScoreinvError(f"--init {spec}: its network does not fit this config's architecture ("
                            + "; ".join(diff) + f"); train with the config it was made with (its preset: "
                            f"{theirs_cfg.preset!r}) or start from scratch")
    ema_sd, online = _float32(ck.get("ema")), _float32(ck.get("model"))
    if ema_sd is None and online is None:
        raise ScoreinvError(f"--init {spec}: {str(path)!r} holds no weights ('ema' or 'model' entry)")
    online = online if online is not None else ema_sd
    ema_sd = ema_sd if ema_sd is not None else online
    try:
        model.net.load_state_dict(online)
        model.net.load_state_dict(ema_sd)  # same check for the EMA weights, then back to the online ones
        model.net.load_state_dict(online)
    except RuntimeError as e:
        raise ScoreinvError(f"--init {spec}: {str(path)!r} does not fit the architecture of its config: "
                            f"{str(e)[:300]}") from None
    ref = model.net.state_dict()
    ema.load_state_dict({k: v.to(device=ref[k].device, dtype=ref[k].dtype) for k, v in ema_sd.items()})
    has_opt = "optimizer" in ck
    if has_opt:
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ScoreinvError(f"--init {spec}: its optimiser state does not fit ({e})") from None
        reset_hyperparameters(opt, cfg.train)
    step = int(ck.get("step", 0))
    nimg = ck.get("nimg")                # None in a model exported from a file without the record
    nimg = int(nimg) if nimg is not None else step * theirs_cfg.train.batch_size
    mine, other = C.to_dict(cfg.model), C.to_dict(theirs_cfg.model)
    notes = [f"model.{k}: {other[k]!r} (file) -> {mine[k]!r} (this run)" for k in mine if other.get(k) != mine[k]]
    return {"step": step, "nimg": nimg, "warmup_from": step if not has_opt else 0, "optimizer": has_opt,
            "record": init_record(spec), "notes": notes}
