"""A tiny 16x16 score model for tests that need a checkpoint (trained 1 step on random images)."""
import torch

from scoreinv import config as C
from scoreinv.train import train

TINY = ["data.image_size=16", "model.nf=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[8]",
        "train.batch_size=4", "train.snapshot_every=0", "train.log_every=1", "train.num_threads=1"]


class RandomImages:
    """Stand-in training data: uniform noise images, 16x16."""

    def __len__(self):
        return 64

    def sample_batch(self, b, g):
        return torch.rand(b, 1, 16, 16, generator=g)

    def shard(self, rank, world):
        return self


def train_tiny(workdir, steps: int = 1, extra=()) -> str:
    train(C.load_config("ct64", TINY + [f"train.max_steps={steps}", *extra]), workdir, dataset=RandomImages(),
          progress=False)
    return str(workdir)
