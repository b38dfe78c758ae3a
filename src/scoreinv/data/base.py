"""The dataset interface the training loop uses, and the seed plumbing shared by all datasets.

Every dataset yields 2-D slices as float32 tensors in [0, 1] (docs/design.md §7.1):

    ds.sample_batch(batch_size, generator) -> (B, 1, S, S)   random draw
    len(ds), ds[i] -> (1, S, S)                             fixed images of this split
    ds.shard(rank, world_size) -> dataset                   a rank's disjoint share
    ds.describe() -> dict                                   what `scoreinv data inspect` prints

Seeds: a procedural stream never uses the caller's generator for rendering directly; it draws
one integer from it and mixes that with the dataset seed and the shard rank through numpy's
SeedSequence, so that ranks given identically seeded generators still see disjoint streams.
"""
from __future__ import annotations

import abc

import contextlib
import zlib

import numpy as np
import torch

from ..errors import ScoreinvError, check_int

SPLITS = ("train", "val", "test", "all")


@contextlib.contextmanager
def single_thread(device):
    """Run CPU data generation with one intra-op thread, restoring the setting afterwards.

    Generation is a few hundred mostly small tensor operations; with two threads on a machine
    whose cores are shared, every parallel operation can wait a scheduler time slice for the
    other thread (measured here: 30 ms instead of 1 ms per 64 x 64 phantom).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def derive_seed(*keys) -> int:
    """A 63-bit seed from a sequence of ints and strings (stable across runs and machines)."""
    ints = []
    for k in keys:
        if isinstance(k, str):
            ints.append(zlib.crc32(k.encode("utf-8")))
        else:
            k = int(k)
            if k < 0:
                raise ScoreinvError(f"seed keys must be non-negative integers, got {k}")
            ints.append(k)
    state = np.random.SeedSequence(ints).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def make_generator(seed: int, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ScoreinvError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return generator


def draw_seed(generator: torch.Generator) -> int:
    """One non-negative 62-bit integer from `generator` (advances it)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())


def check_batch_size(batch_size) -> int:
    return check_int("batch_size", batch_size)


IMAGE_SIZE_MIN, IMAGE_SIZE_MAX = 8, 4096   # model image sizes S (S x S slices) the package accepts


def check_image_size(image_size, name: str = "image_size") -> int:
    """S in [IMAGE_SIZE_MIN, IMAGE_SIZE_MAX]; `name` is the flag or key the user gave."""
    return check_int(name, image_size, IMAGE_SIZE_MIN, IMAGE_SIZE_MAX)


def check_shard(rank, world_size) -> tuple[int, int]:
    world_size = check_int("world_size", world_size)
    rank = check_int("rank", rank, 0, world_size - 1)
    return int(rank), int(world_size)


class SliceDataset(abc.ABC):
    """Base class: a split of 2-D slices of size S x S in [0, 1]."""

    name: str = "dataset"
    split: str = "train"
    image_size: int = 64

    @abc.abstractmethod
    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A random batch (B, 1, S, S) float32 in [0, 1], on `generator.device`."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of fixed images in this split."""

    @abc.abstractmethod
    def _item(self, i: int) -> torch.Tensor:
        """Image i (0 <= i < len) as (1, S, S)."""

    def __getitem__(self, i) -> torch.Tensor:
        """Image i as (1, S, S) float32 in [0, 1] (deterministic)."""
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ScoreinvError(f"{self.name}: index must be an integer, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"{self.name} ({self.split}): index {i} out of range for {n} images")
        return self._item(int(i) % n)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @abc.abstractmethod
    def shard(self, rank: int, world_size: int) -> "SliceDataset":
        """This rank's disjoint share of the data."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """What `scoreinv data inspect` prints."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, " \
               f"image_size={self.image_size}, len={len(self)})"


def spread_indices(n: int, total: int) -> list[int]:
    """n indices spread evenly over 0..total-1 (first and last included when n > 1)."""
    n, total = check_int("n", n), check_int("total", total)
    if n > total:
        raise ScoreinvError(f"cannot pick {n} of {total} images")
    return [round(j * (total - 1) / (n - 1)) for j in range(n)] if n > 1 else [0]


class Subset(SliceDataset):
    """The images `indices` of another dataset, in that order (eval's --pick spread, the demo)."""

    def __init__(self, base: SliceDataset, indices):
        self.base = base
        self.indices = [int(i) for i in indices]
        n = len(base)
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad or not self.indices:
            raise ScoreinvError(f"{base.name} ({base.split}): image indices {bad or self.indices} outside 0..{n - 1}")
        self.name, self.split, self.image_size = base.name, base.split, base.image_size
        if hasattr(base, "pixel_mm"):
            self.pixel_mm = tuple(base.pixel_mm[i] for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _item(self, i: int) -> torch.Tensor:
        return self.base[self.indices[i]]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        b, g = check_batch_size(batch_size), check_generator(generator)
        pick = torch.randint(len(self), (b,), generator=g, device=g.device).cpu()
        return torch.stack([self[int(i)] for i in pick]).to(g.device)

    def shard(self, rank: int, world_size: int) -> "Subset":
        rank, world_size = check_shard(rank, world_size)
        return Subset(self.base, self.indices[rank::world_size])

    def describe(self) -> dict:
        return {**self.base.describe(), "picked": list(self.indices)}
