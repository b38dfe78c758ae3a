"""build_dataset: the one entry point from a dataset spec to a dataset object.

    build_dataset("phantoms" | "ellipses" | "brain" | "ct-real" | "mri-real" | "mri-mix" | "phantom3d" | PATH,
                  split, image_size, seed=0, **options)

Options are checked against the chosen dataset's own list (OPTIONS); an unknown option, an
unknown name that is not an existing path, or an empty split raises ScoreinvError. The generic
data options (axis, normalize, hu_min, hu_max) may be passed to every dataset at their default
values (NEUTRAL), so a caller can forward a whole data configuration; a non-default value
where it means nothing (e.g. axis=1 for phantoms) raises.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ScoreinvError
from ..physics.mar_spectra import HU_MAX, HU_MIN
from .base import SliceDataset

BUILTIN_DATASETS = ("phantoms", "ellipses", "brain", "ct-real", "mri-real", "mri-mix", "phantom3d")
REAL_DATASETS = ("ct-real", "mri-real")      # fetched once with `scoreinv data fetch NAME` (realdata, fetch)
MRI_DATASETS = ("brain", "mri-real", "mri-mix")   # brain MRI: validation reconstructs MRI for these
_PROC = ("n_train", "n_val", "n_test")
MRI_MIX_REAL_FRACTION = 0.5     # share of mri-mix training images from brain1 (docs/data.md, "mri-mix")
OPTIONS = {
    "phantoms": ("hu_min", "hu_max", "antialias", *_PROC),
    "ellipses": ("hu_min", "hu_max", "antialias", *_PROC),
    "brain": ("contrasts", "deform", "noise", "bias", *_PROC),
    "ct-real": (),
    "mri-real": (),
    "mri-mix": ("real_fraction", "contrasts", "deform", "noise", "bias", *_PROC),
    "phantom3d": ("volumes", "depth", "z_spacing", "textured"),
    "folder": ("axis", "normalize", "hu_min", "hu_max", "fractions", "fit", "split_by", "cache_mb",
               "h5_key", "npz_key"),
}
DESCRIPTIONS = {
    "phantoms": "textured random CT phantoms in HU (head, chest, abdomen): smooth tissue fields, grain, vessels",
    "ellipses": "plain random-ellipse CT phantoms in HU (piecewise constant; exact ellipse lists)",
    "brain": "MRI-like axial brain slices from the MNI152 template with random contrast and deformation",
    "ct-real": "real CT: a head (train/val) and two chests (lung1 train/val, lung2 test), HU window "
               "[-1024, 3200]; fetched with `scoreinv data fetch ct-real`",
    "mri-real": "real T1-weighted brain MRI after contrast: brain1 (train/val), brain2 (test); fetched with "
                "`scoreinv data fetch mri-real`",
    "mri-mix": "brain MRI mixture: mri-real (brain1 train/val, brain2 test) and brain (MNI152 template slices, "
               f"native 1 mm grid at 256); training batches {MRI_MIX_REAL_FRACTION:.0%} real",
    "phantom3d": "procedural 3-D CT phantoms in HU (ellipsoids with 3-D texture, docs/design.md §9.4): whole volumes "
                 "in slice order, 2 volumes of 16 slices per split by default",
}


# folder/CT options a caller may pass to every dataset: at these values they change nothing
NEUTRAL = {"axis": 0, "normalize": "auto", "hu_min": HU_MIN, "hu_max": HU_MAX}


def check_options(spec, options: dict) -> dict:
    """The keyword options that the dataset `spec` (a built-in name, else a folder or file path,
    which need not exist yet) is built with: `options` without None values and without NEUTRAL
    options at their neutral values. Raises ScoreinvError for an option the dataset does not take
    (OPTIONS) or a NEUTRAL one at another value."""
    kind = spec if isinstance(spec, str) and spec in BUILTIN_DATASETS else "folder"
    options = {k: v for k, v in options.items() if v is not None}
    for k in [k for k in options if k not in OPTIONS[kind] and k in NEUTRAL]:
        if options[k] != NEUTRAL[k]:
            raise ScoreinvError(f"option {k}={options[k]!r} does not apply to the {kind} dataset "
                                f"(only its default {NEUTRAL[k]!r} is accepted); options of {kind}: "
                                f"{', '.join(OPTIONS[kind])}")
        del options[k]
    bad = sorted(set(options) - set(OPTIONS[kind]))
    if bad:
        raise ScoreinvError(f"unknown option(s) {', '.join(bad)} for the {kind} dataset; expected some of: "
                            f"{', '.join(OPTIONS[kind])}")
    return options


def build_dataset(spec, split: str, image_size: int, seed: int = 0, **options) -> SliceDataset:
    """A dataset of (1, S, S) float32 slices in [0, 1] (see base.SliceDataset).

    spec: "phantoms" (textured CT phantoms), "ellipses" (plain CT phantoms), "brain" (MNI152
    slices), "ct-real" / "mri-real" (real scans fetched by `scoreinv data fetch`; see realdata),
    "mri-mix" (`mri_mix`), "phantom3d" (`phantom3d.Phantom3D`: the slices of `volumes` procedural
    volumes of `depth` slices, in order, with their (volume, slice) index), or a folder/file path.
    split: "train" | "val" | "test" | "all" ("all" for paths only).
    """
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        options = check_options(spec, options)
        if spec in REAL_DATASETS:
            from .realdata import RealDataset
            return RealDataset(spec, split, image_size, seed)
        if spec == "mri-mix":
            return mri_mix(split, image_size, seed, **options)
        if spec == "brain":
            from .brain import BrainDataset
            return BrainDataset(split, image_size, seed, **options)
        if spec == "phantom3d":
            from .phantom3d import Phantom3D
            return Phantom3D(split, image_size, seed, **options)
        from .procedural import PhantomDataset
        return PhantomDataset(split, image_size, seed, textured=spec == "phantoms", **options)
    if not isinstance(spec, (str, os.PathLike)):
        raise ScoreinvError(f"dataset must be a name or a path, got {type(spec).__name__}")
    if not Path(spec).exists():
        raise ScoreinvError(f"unknown dataset {str(spec)!r}: not a built-in ({', '.join(BUILTIN_DATASETS)}) "
                            "and no such file or folder")
    options = check_options(spec, options)
    from .folder import FolderDataset
    return FolderDataset(spec, split, image_size, seed, **options)


def mri_mix(split: str, image_size: int, seed: int = 0, real_fraction: float = MRI_MIX_REAL_FRACTION,
            **brain_options) -> SliceDataset:
    """The `mri-mix` dataset (docs/data.md): real brain MRI (`mri-real`: brain1 for train and val,
    brain2 for test) and MNI152 template slices (`brain`, same split: its training slabs, its
    validation slab, its held-out test slab) as one `base.MixedDataset`, real part first.

    Training batches draw each image from the real part with probability `real_fraction` (default
    0.5) and from the template stream otherwise; the val and test splits are the two parts' fixed
    images concatenated (real first). `brain_options` (contrasts, deform, noise, bias, n_train,
    n_val, n_test) go to the template part.
    """
    from .base import MixedDataset
    from .brain import BrainDataset
    from .realdata import RealDataset
    if isinstance(real_fraction, bool) or not isinstance(real_fraction, (int, float)) \
            or not 0.0 <= real_fraction <= 1.0:
        raise ScoreinvError(f"mri-mix: real_fraction must be a number in [0, 1], got {real_fraction!r}")
    real = RealDataset("mri-real", split, image_size, seed)
    template = BrainDataset(split, image_size, seed, **brain_options)
    return MixedDataset("mri-mix", [("mri-real brain1" if split != "test" else "mri-real brain2", real),
                                    ("brain template", template)],
                        [float(real_fraction), 1.0 - float(real_fraction)],
                        kind="real brain MRI + MNI152 template slices")
