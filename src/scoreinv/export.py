"""Export a training checkpoint as a shipped model: config + EMA weights (float16 by default),
and the tuned presets it brings.

    python -m scoreinv.export CHECKPOINT NAME [--dtype float16|float32] [--dest DIR]
                              [--presets DIR] [--overwrite]

writes DEST/NAME.pt (default DEST: the package's resources/models, so `--checkpoint NAME`
works everywhere). `load_score_model` casts the weights back to float32. With --presets DIR,
the presets TASK-SOLVER.yaml of DIR (as `scoreinv tune --out` writes them) are checked and
copied to the package's resources/presets/NAME/ (with --dest: DEST/presets/NAME/), where
`sampling.settings` finds them as the model's tuned defaults. Existing files are refused
unless --overwrite.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .atomic import check_new_output, torch_save, write_text
from .errors import ScoreinvError
from .sampling.settings import load_preset, presets_dir
from .score import models_dir, read_checkpoint, resolve_checkpoint


def export(checkpoint: str, name: str, dtype: str = "float16", dest: str | None = None,
           presets: str | None = None, overwrite: bool = False) -> Path:
    """Write DEST/NAME.pt (and the presets of `presets`, module docstring); returns the model path."""
    if not name.isidentifier():
        raise ScoreinvError(f"model name {name!r} must be a plain identifier (letters, digits, _)")
    dt = {"float16": torch.float16, "float32": torch.float32}.get(dtype)
    if dt is None:
        raise ScoreinvError(f"--dtype {dtype!r}: expected float16 or float32")
    out = Path(dest) if dest else models_dir()
    src = resolve_checkpoint(checkpoint)            # a shipped name or work directory: the file it reads
    path = check_new_output(out / f"{name}.pt", overwrite=overwrite, flag="NAME", inputs=[src])
    files = _presets(presets, (Path(dest) / "presets" if dest else presets_dir()) / name, overwrite)
    ck = read_checkpoint(src)
    if "ema" not in ck:
        raise ScoreinvError(f"{checkpoint}: no EMA weights to export")
    # the Fourier-feature frequencies (|W| ~ 16 and more) multiply log σ inside sin/cos: fp16's
    # rounding of them would shift phases by a tenth of a radian, so they stay float32
    ema = {k: v.to(dt) if v.is_floating_point() and not k.endswith("embed.W") else v for k, v in ck["ema"].items()}
    torch_save({"config": ck["config"], "arch": ck.get("arch"), "step": ck["step"], "nimg": ck.get("nimg"), "ema": ema,
                "n_params": ck.get("n_params"), "weights_dtype": dtype}, path)
    for src, dst in files:
        write_text(dst, src.read_text())
    return path


def _presets(folder: str | None, target: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """(source, destination) of every preset in `folder`, each checked before anything is written."""
    if folder is None:
        return []
    src = sorted(Path(folder).glob("*.yaml"))
    if not src:
        raise ScoreinvError(f"--presets {folder}: no TASK-SOLVER.yaml files there")
    pairs = []
    for f in src:
        task, _, solver = f.stem.partition("-")
        load_preset(f, solver=solver, task=task)      # its content must match its name
        pairs.append((f, check_new_output(target / f.name, overwrite=overwrite, flag="--presets")))
    return pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("name")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--dest", default=None)
    p.add_argument("--presets", default=None, help="folder of tuned presets TASK-SOLVER.yaml to ship with the model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model or preset of that name")
    a = p.parse_args(argv)
    try:
        path = export(a.checkpoint, a.name, a.dtype, a.dest, a.presets, a.overwrite)
    except ScoreinvError as e:
        p.exit(2, f"scoreinv.export: error: {e}\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
