"""Training and test data: procedural CT phantoms, MNI152 brain slices, and files on disk.

    from scoreinv.data import build_dataset, BUILTIN_DATASETS
    ds = build_dataset("phantoms", "train", 64, seed=0)
    x = ds.sample_batch(16, torch.Generator().manual_seed(0))   # (16, 1, 64, 64) in [0, 1]
"""
from .registry import BUILTIN_DATASETS, DESCRIPTIONS, OPTIONS, build_dataset

__all__ = ["BUILTIN_DATASETS", "DESCRIPTIONS", "OPTIONS", "build_dataset"]
