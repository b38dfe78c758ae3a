"""Named baselines and the validation-set choice of their regularisation parameter.

`get_baseline(name)` returns a `Baseline`: calling it with (op, y, **kwargs) gives a `Recon`
(images, iterations run, method, weight). Each baseline has at most one tunable parameter:
`weight` (tv, tv3d, cs_tv, cs_wavelet: weight relative to ||A||^2, see tv.py / wavelet.py) or
`iters` (sirt, cgls: early stopping is their regulariser).

`tv3d` is for volumes: it treats its whole batch as one volume (slices in order; `volume` labels
(B,) to hold several, `z_weight` = in-plane pixel size / slice spacing, tv.py), so it must get the
consecutive slices of a volume, never a batch of independent images.

`choose_weight` evaluates that parameter on a grid over VALIDATION pairs (y_val, x_val) and
returns the value with the best mean metric (PSNR by default; the first on ties). Never call it
on test images: the chosen value is then used unchanged on the test set. A caller that saves
each candidate's score (`on_score`) can resume a cut-short search (`known`): eval does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import ScoreinvError, check_choice, check_images
from ..metrics import LOWER_IS_BETTER, NEEDS_METAL_MASK, get_metric
from ..physics.base import LinearOperator
from . import mar as _mar
from .common import Recon, check_operator
from .iterative import cgls, fbp, sirt, zero_filled
from .tv import tv3d_recon, tv_recon
from .wavelet import cs_wavelet


def log_grid(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """n log-spaced values from lo to hi inclusive (lo, hi > 0)."""
    if not (lo > 0 and hi >= lo and int(n) >= 1):
        raise ScoreinvError(f"log_grid({lo}, {hi}, {n}): expected 0 < lo <= hi and n >= 1")
    return tuple(float(v) for v in np.logspace(np.log10(lo), np.log10(hi), int(n)))


@dataclass(frozen=True)
class Baseline:
    """A named classical reconstruction method."""
    name: str
    fn: Callable[..., Recon]
    param: str | None                     # "weight", "iters" or None (nothing to tune)
    default_grid: tuple = ()
    description: str = ""
    defaults: dict = field(default_factory=dict)

    def __call__(self, op: LinearOperator, y: torch.Tensor, **kwargs) -> Recon:
        kw = {**self.defaults, **kwargs}
        if self.name in ("tv", "tv3d", "cs_tv") and "box" not in kwargs:
            kw["box"] = None if check_operator(op).complex_image else (0.0, 1.0)
        out = self.fn(op, y, **kw)
        return Recon(out.x, out.iters, self.name, out.weight)


_WEIGHTS = log_grid(1e-5, 1e-1, 9)
BASELINES: dict[str, Baseline] = {b.name: b for b in [
    Baseline("fbp", fbp, None, description="filtered back-projection (CT)"),
    Baseline("sirt", sirt, "iters", (10, 20, 50, 100, 200, 500),
             "SIRT, nonnegativity, iteration count tuned (CT)"),
    Baseline("cgls", cgls, "iters", (5, 10, 20, 50, 100, 200), "CGLS, iteration count tuned"),
    Baseline("tv", tv_recon, "weight", _WEIGHTS, "isotropic TV by PDHG, box [0, 1] for real images"),
    Baseline("tv3d", tv3d_recon, "weight", _WEIGHTS, "isotropic 3-D TV (x, y, z) of a volume (the batch: its "
             "slices in order) by PDHG, box [0, 1] for real images; z_weight = pixel / slice spacing"),
    Baseline("zero_filled", zero_filled, None, description="A^T y: zero-filled MRI"),
    Baseline("cs_wavelet", cs_wavelet, "weight", _WEIGHTS, "db4 wavelet l1 by FISTA with cycle spinning (MRI)"),
    Baseline("cs_tv", tv_recon, "weight", _WEIGHTS, "TV compressed sensing (= tv) for MRI"),
    Baseline("li", _mar.li, None, description="linear interpolation across the metal trace + FBP (MAR)"),
    Baseline("nmar", _mar.nmar, None, description="normalised MAR with a thresholded LI prior (MAR)"),
]}


def get_baseline(name: str) -> Baseline:
    """The baseline called `name`; unknown names raise ScoreinvError listing the valid ones."""
    check_choice("baseline", name, BASELINES)
    return BASELINES[name]


@dataclass(frozen=True)
class WeightChoice:
    """Result of `choose_weight`: the chosen value, the metric, the grid and its mean scores.

    `at_edge` is True when the best value is the first or last of the grid (widen the grid)."""
    weight: float
    param: str
    metric: str
    grid: tuple
    scores: tuple
    at_edge: bool


def choose_weight(method: str | Baseline, op: LinearOperator, y_val: torch.Tensor, x_val: torch.Tensor,
                  grid=None, metric: str = "psnr", metal_mask=None, known: dict | None = None,
                  on_score: Callable[[float, float], None] | None = None, **kwargs) -> WeightChoice:
    """Grid search of a baseline's parameter on validation data (module docstring).

    y_val: (B, *meas) validation measurements; x_val: (B, 1, H, W) their ground truth in [0, 1];
    grid: values to try (default: the baseline's `default_grid`, log-spaced for weights);
    known: {value: mean metric} of candidates scored before (on the same data), not recomputed;
    on_score(value, score): called after each newly computed candidate (to save it);
    kwargs: passed to the baseline unchanged (e.g. iters for tv).
    """
    b = method if isinstance(method, Baseline) else get_baseline(method)
    if b.param is None:
        raise ScoreinvError(f"baseline {b.name!r} has no parameter to choose")
    if b.param in kwargs:
        raise ScoreinvError(f"choose_weight sets {b.param!r} itself; do not pass it")
    fn = get_metric(metric)
    check_images("x_val", x_val)
    if x_val.shape[0] != y_val.shape[0]:
        raise ScoreinvError(f"choose_weight: {y_val.shape[0]} measurements but {x_val.shape[0]} ground-truth images")
    grid = tuple(b.default_grid if grid is None else grid)
    if not grid:
        raise ScoreinvError("choose_weight: empty grid")
    scores = []
    known = known or {}
    for v in grid:
        if v in known:
            scores.append(float(known[v]))
            continue
        rec = b(op, y_val, **{b.param: v}, **kwargs)
        xr = rec.x.abs() if rec.x.is_complex() else rec.x           # magnitude of complex images
        vals = fn(xr, x_val, metal_mask=metal_mask) if metric in NEEDS_METAL_MASK else fn(xr, x_val)
        s = float(vals.mean())
        if s != s:
            raise ScoreinvError(f"choose_weight: {metric} is NaN for {b.param} = {v}")
        scores.append(s)
        if on_score is not None:
            on_score(v, s)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best = int(np.argmax(sign * np.asarray(scores)))
    return WeightChoice(grid[best], b.param, metric, grid, tuple(scores), best in (0, len(grid) - 1))
