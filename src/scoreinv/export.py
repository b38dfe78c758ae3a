"""Export a training checkpoint as a shipped model: config + EMA weights (float16 by default),
and the tuned presets it brings.

    python -m scoreinv.export CHECKPOINT NAME [--dtype float16|float32] [--dest DIR]
                              [--presets DIR] [--ood-images N] [--overwrite]

writes DEST/NAME.pt (default DEST: the package's resources/models, so `--checkpoint NAME`
works everywhere). `load_score_model` casts the weights back to float32. The model carries the
reference values of the out-of-distribution guard (`ood_reference`, scoreinv.ood: the denoising
error of the exported weights on N validation images of the model's own dataset, default
ood.REFERENCE_IMAGES; --ood-images 0 leaves them out, and they are then computed on first use
and cached). To add them to a model already exported (e.g. a shipped one), export that file
again into another folder and move the result over it:
    python -m scoreinv.export PATH/TO/mri64.pt mri64 --dest NEWDIR
With --presets DIR,
the presets TASK-SOLVER.yaml of DIR (as `scoreinv tune --out` writes them) are checked and
copied to the package's resources/presets/NAME/ (with --dest: DEST/presets/NAME/), where
`sampling.settings` finds them as the model's tuned defaults. Existing files are refused
unless --overwrite.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import ood
from .atomic import check_new_output, torch_save, write_text
from .errors import ScoreinvError, check_int
from .sampling.settings import load_preset, presets_dir
from .score import load_score_model, models_dir, read_checkpoint, resolve_checkpoint


def export(checkpoint: str, name: str, dtype: str = "float16", dest: str | None = None,
           presets: str | None = None, overwrite: bool = False, ood_images: int = ood.REFERENCE_IMAGES) -> Path:
    """Write DEST/NAME.pt (and the presets of `presets`, module docstring); returns the model path.
    ood_images: validation images of the OOD reference (0: none stored)."""
    ood_images = check_int("--ood-images", ood_images, lo=0)
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
    ref = ood_reference(src, ema, ood_images) if ood_images else None
    torch_save({"config": ck["config"], "arch": ck.get("arch"), "step": ck["step"], "nimg": ck.get("nimg"), "ema": ema,
                "n_params": ck.get("n_params"), "weights_dtype": dtype, "ood_reference": ref}, path)
    for src, dst in files:
        write_text(dst, src.read_text())
    return path


def ood_reference(src: Path, ema: dict, n: int) -> dict:
    """The OOD reference record (scoreinv.ood.reference_values) of the weights `ema` as they ship
    (rounded to the export dtype), on n validation images of the checkpoint's dataset."""
    model, cfg = load_score_model(str(src))
    model.net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ema.items()})
    try:
        images, describe = ood.validation_images(cfg, n)
    except ScoreinvError as e:
        raise ScoreinvError(f"{src}: the OOD reference needs validation images of the model's dataset "
                            f"{cfg.data.dataset!r} ({e}); make them available, or pass --ood-images 0 (the reference "
                            "is then computed on first use)") from None
    return ood.reference_values(model, images, describe)


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
    p.add_argument("--ood-images", type=int, default=ood.REFERENCE_IMAGES,
                   help="validation images of the out-of-distribution reference stored with the model (0: none; "
                        f"default {ood.REFERENCE_IMAGES})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model or preset of that name")
    a = p.parse_args(argv)
    try:
        path = export(a.checkpoint, a.name, a.dtype, a.dest, a.presets, a.overwrite, a.ood_images)
    except ScoreinvError as e:
        p.exit(2, f"scoreinv.export: error: {e}\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
