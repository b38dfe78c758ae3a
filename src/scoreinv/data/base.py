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


class MixedDataset(SliceDataset):
    """Several datasets of one image size as one: a training mixture and a concatenated fixed set.

    parts: [(name, dataset)] of the same split and size S; weights: the probability that an image
    of a random batch comes from each part (normalised to sum 1).

    - `sample_batch(B, g)`: each image's part drawn from `weights` (one multinomial draw from g),
      then each part's images by the part's own `sample_batch` with the same g, in part order,
      put back in the drawn positions; reproducible for a seeded g.
    - `len`, `ds[i]`: the concatenation of the parts' fixed images, in part order.
    - `validation_indices(n)`: the parts' picks interleaved (part 0 first, then part 1, ...; each
      part's own `validation_indices` where it has one, else its first images), so every prefix of
      the validation images (the reconstruction images are the first few) covers every part.
    - `shard`: each part sharded (ranks see disjoint shares of every part).
    """

    def __init__(self, name: str, parts, weights, kind: str = "mixture"):
        parts = list(parts)
        if len(parts) < 2:
            raise ScoreinvError(f"{name}: a mixture needs at least two datasets, got {len(parts)}")
        sizes = {ds.image_size for _, ds in parts}
        splits = {ds.split for _, ds in parts}
        if len(sizes) != 1 or len(splits) != 1:
            raise ScoreinvError(f"{name}: the parts must share one image size and split, got sizes {sorted(sizes)} "
                                f"and splits {sorted(splits)}")
        w = [float(v) for v in weights]
        if len(w) != len(parts) or not all(np.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
            raise ScoreinvError(f"{name}: weights {list(weights)!r}; expected {len(parts)} finite values >= 0, "
                                "not all 0")
        self.name, self.kind, self.parts = name, kind, parts
        self.weights = [v / sum(w) for v in w]
        self.split, self.image_size = splits.pop(), sizes.pop()
        self._offsets = np.cumsum([0] + [len(ds) for _, ds in parts]).tolist()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(part, index within the part) of image i of the concatenation."""
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return k, i - self._offsets[k]

    def _item(self, i: int) -> torch.Tensor:
        k, j = self.locate(i)
        return self.parts[k][1][j]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        b, g = check_batch_size(batch_size), check_generator(generator)
        probs = torch.tensor(self.weights, dtype=torch.float64, device=g.device)
        which = torch.multinomial(probs, b, replacement=True, generator=g).cpu()
        out = None
        for k, (_, ds) in enumerate(self.parts):
            pos = (which == k).nonzero().flatten()
            if pos.numel() == 0:
                continue
            x = ds.sample_batch(int(pos.numel()), g)
            if out is None:
                out = torch.empty((b, *x.shape[1:]), dtype=x.dtype, device=x.device)
            out[pos.to(x.device)] = x
        return out

    def validation_indices(self, n: int) -> list[int]:
        n = check_int("n", n)
        picks = []
        for k, (_, ds) in enumerate(self.parts):
            m = min(n, len(ds))
            own = getattr(ds, "validation_indices", None)
            idx = list(own(m)) if own is not None else list(range(m))
            picks.append([self._offsets[k] + j for j in idx])
        out = [p[j] for j in range(max(map(len, picks))) for p in picks if j < len(p)]
        return out[:n]

    def shard(self, rank: int, world_size: int) -> "MixedDataset":
        rank, world_size = check_shard(rank, world_size)
        return MixedDataset(self.name, [(nm, ds.shard(rank, world_size)) for nm, ds in self.parts], self.weights,
                            self.kind)

    def describe(self) -> dict:
        parts = []
        for (nm, ds), w in zip(self.parts, self.weights):
            d = ds.describe()
            size = d["sizes"]["train"] if d.get("infinite_stream") else f"{len(ds)} image(s)"
            px = d.get("pixel_mm")
            px = f", pixel {min(px):.4g} mm" if isinstance(px, (list, tuple)) else (
                f", pixel {px:.4g} mm" if isinstance(px, (int, float)) else "")
            parts.append(f"{nm} ({d['kind']}{px}): {size}, weight {w:.3g}")
        return {"name": self.name, "kind": self.kind, "split": self.split, "image_size": self.image_size,
                "images": len(self), "parts": "; ".join(parts),
                "sampling": "each image of a random batch from a part drawn by weight; fixed images: the "
                            "parts concatenated in this order"}
