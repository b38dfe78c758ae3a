"""Image output helpers: sample grids and figures (matplotlib, Agg backend), written atomically."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .atomic import write_bytes


def grid_array(x: torch.Tensor, pad: int = 2) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> one (rows*H, cols*W) array."""
    x = x.detach().float().clamp(0, 1).cpu().numpy()[:, 0]
    n, h, w = x.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    g = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        g[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    return g


def save_png(arr: np.ndarray, path, vmin=0.0, vmax=1.0, cmap="gray") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, np.asarray(arr, dtype=np.float32), cmap=cmap, vmin=vmin, vmax=vmax, format="png")
    write_bytes(path, buf.getvalue())


def save_grid(x: torch.Tensor, path) -> None:
    save_png(grid_array(x), Path(path))


def save_figure(fig, path, dpi=120) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
