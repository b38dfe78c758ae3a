"""Procedural datasets: an infinite seeded training stream and fixed seeded val/test sets.

- train: `sample_batch` draws one integer from the caller's generator and mixes it with the
  dataset seed and the shard rank (base.derive_seed) into a fresh generator, so every call
  gives new images, reproducibly, and ranks never share a stream. `ds[i]` is image i of a
  nominal, deterministic set of `n_train` images (seed key ("train-item", i)).
- val / test: fixed sets of `n_val` / `n_test` images made in blocks of 32 from the keys
  (seed, split, block): the first n images do not depend on n, and the three splits use
  different keys. `sample_batch` draws images of the fixed set at random.
"""
from __future__ import annotations

import abc

import torch

from ..errors import ScoreinvError, check_int
from ..physics.mar_spectra import HU_MAX, HU_MIN
from .base import (SliceDataset, check_batch_size, check_generator, check_image_size, check_shard,
                   derive_seed, draw_seed, make_generator, single_thread)

BLOCK = 32


class ProceduralDataset(SliceDataset):
    """Base for generated data; subclasses implement `generate(batch, generator)`."""

    kind = "procedural"

    def __init__(self, split: str, image_size: int, seed: int = 0, n_train: int = 10000,
                 n_val: int = 64, n_test: int = 256, rank: int = 0, world_size: int = 1):
        if split not in ("train", "val", "test"):
            raise ScoreinvError(f"{self.name}: unknown split {split!r}; expected train, val or test "
                                "('all' exists only for folders of files)")
        for nm, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            check_int(f"{self.name}: {nm}", v)
        seed = check_int(f"{self.name}: seed", seed, 0)
        self.split, self.image_size, self.seed = split, check_image_size(image_size), seed
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.rank, self.world_size = check_shard(rank, world_size)
        self._fixed_cache: torch.Tensor | None = None

    # -- to implement ---------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, 1, S, S) float32 in [0, 1] on generator.device."""

    def options(self) -> dict:
        return {}

    # -- interface ------------------------------------------------------------------------
    def _n_total(self) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[self.split]

    def __len__(self) -> int:
        n = self._n_total()
        return len(range(self.rank, n, self.world_size))

    def _global_index(self, i: int) -> int:
        return self.rank + i * self.world_size

    def _fixed(self) -> torch.Tensor:
        if self._fixed_cache is None:
            n = self._n_total()
            blocks = []
            with single_thread("cpu"):
                for b in range((n + BLOCK - 1) // BLOCK):
                    g = make_generator(derive_seed(self.seed, self.name, self.split, b))
                    blocks.append(self.generate(BLOCK, g))
            self._fixed_cache = torch.cat(blocks)[:n]
        return self._fixed_cache

    def _item(self, i: int) -> torch.Tensor:
        j = self._global_index(i)
        if self.split == "train":
            with single_thread("cpu"):
                return self.generate(1, make_generator(derive_seed(self.seed, self.name, "train-item", j)))[0]
        return self._fixed()[j]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        b = check_batch_size(batch_size)
        g = check_generator(generator)
        if self.split == "train":
            sub = make_generator(derive_seed(draw_seed(g), self.seed, self.name, self.rank, self.world_size),
                                 g.device)
            with single_thread(g.device):
                return self.generate(b, sub)
        idx = torch.randint(len(self), (b,), generator=g, device=g.device).cpu()
        glob = self.rank + idx * self.world_size
        return self._fixed()[glob].to(g.device)

    def shard(self, rank: int, world_size: int) -> "ProceduralDataset":
        rank, world_size = check_shard(rank, world_size)
        if self.world_size != 1:
            raise ScoreinvError(f"{self.name}: this dataset is already a shard; shard the full dataset")
        if world_size > self._n_total():
            raise ScoreinvError(f"{self.name} ({self.split}): cannot split {self._n_total()} images "
                                f"over {world_size} ranks")
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.rank, new.world_size = rank, world_size
        return new

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "split": self.split, "image_size": self.image_size,
                "seed": self.seed, "images": len(self),
                "infinite_stream": self.split == "train", "shard": f"{self.rank}/{self.world_size}",
                "sizes": {"train": f"infinite stream (nominal {self.n_train})", "val": self.n_val,
                          "test": self.n_test},
                **self.options()}


class PhantomDataset(ProceduralDataset):
    """Random CT phantoms in HU mapped to [0, 1]: 'phantoms' (textured) or 'ellipses' (plain).

    Options: hu_min, hu_max (window, default [-1024, 3200] HU), antialias (default True:
    pixel-area rendering of edges), n_train, n_val, n_test.
    """

    kind = "procedural CT phantoms"

    def __init__(self, split: str, image_size: int, seed: int = 0, textured: bool = True,
                 hu_min: float = HU_MIN, hu_max: float = HU_MAX, antialias: bool = True, **kw):
        from .phantoms import check_window
        self.name = "phantoms" if textured else "ellipses"
        super().__init__(split, image_size, seed, **kw)
        self.textured = bool(textured)
        self.hu_min, self.hu_max = check_window(hu_min, hu_max)
        self.antialias = bool(antialias)

    def sample_params(self, batch: int, generator: torch.Generator):
        """A PhantomBatch of `batch` random phantoms (see phantoms.PhantomBatch)."""
        from .phantoms import sample_phantoms
        return sample_phantoms(batch, generator, textured=self.textured, native_size=self.image_size,
                               hu_min=self.hu_min, hu_max=self.hu_max)

    def generate(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return self.sample_params(batch, generator).render(self.image_size, self.antialias)

    def params(self, i: int):
        """The PhantomBatch (of one) behind ds[i]: render it finer for simulation, or use its
        ellipse list for exact line integrals (plain phantoms)."""
        n = len(self)
        i = check_int(f"{self.name} ({self.split}): index", i, -n, n - 1)
        j = self._global_index(i % n)
        if self.split == "train":
            return self.sample_params(1, make_generator(derive_seed(self.seed, self.name, "train-item", j)))
        g = make_generator(derive_seed(self.seed, self.name, self.split, j // BLOCK))
        return self.sample_params(BLOCK, g).select(slice(j % BLOCK, j % BLOCK + 1))

    def options(self) -> dict:
        from .phantoms import PLAIN_HU_RANGE
        return {"flavour": "textured" if self.textured else "plain (piecewise constant)",
                "hu_window": [self.hu_min, self.hu_max], "antialias": self.antialias,
                "anatomy": "head 25%, chest 35%, abdomen 40%",
                "exact_ellipse_list": (not self.textured) and self.hu_min <= PLAIN_HU_RANGE[0]
                and self.hu_max >= PLAIN_HU_RANGE[1]}
