"""Export a training checkpoint as a shipped model: config + EMA weights (float16 by default).

    python -m scoreinv.export CHECKPOINT NAME [--dtype float16|float32] [--dest DIR]

writes DEST/NAME.pt (default DEST: the package's resources/models, so `--checkpoint NAME`
works everywhere). `load_score_model` casts the weights back to float32.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .atomic import torch_save
from .errors import ScoreinvError
from .score import models_dir, read_checkpoint, resolve_checkpoint


def export(checkpoint: str, name: str, dtype: str = "float16", dest: str | None = None) -> Path:
    if not name.isidentifier():
        raise ScoreinvError(f"model name {name!r} must be a plain identifier (letters, digits, _)")
    dt = {"float16": torch.float16, "float32": torch.float32}.get(dtype)
    if dt is None:
        raise ScoreinvError(f"--dtype {dtype!r}: expected float16 or float32")
    ck = read_checkpoint(resolve_checkpoint(checkpoint))
    if "ema" not in ck:
        raise ScoreinvError(f"{checkpoint}: no EMA weights to export")
    # the Fourier-feature frequencies (|W| ~ 16 and more) multiply log σ inside sin/cos: fp16's
    # rounding of them would shift phases by a tenth of a radian, so they stay float32
    ema = {k: v.to(dt) if v.is_floating_point() and not k.endswith("embed.W") else v for k, v in ck["ema"].items()}
    out = Path(dest) if dest else models_dir()
    path = out / f"{name}.pt"
    torch_save({"config": ck["config"], "arch": ck.get("arch"), "step": ck["step"], "ema": ema,
                "n_params": ck.get("n_params"), "weights_dtype": dtype}, path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("name")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--dest", default=None)
    a = p.parse_args(argv)
    path = export(a.checkpoint, a.name, a.dtype, a.dest)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
