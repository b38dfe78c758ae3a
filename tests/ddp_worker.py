"""Run under torchrun by tests/test_train.py: train a tiny model, save this rank's final weights."""
import os
import sys

import torch

from scoreinv import config as C
from scoreinv.train import train

workdir = sys.argv[1]
cfg = C.load_config("ct64", sys.argv[2:])
out = train(cfg, workdir, progress=False)
torch.save(out["model"].net.state_dict(), os.path.join(workdir, f"weights_rank{os.environ['RANK']}.pt"))
