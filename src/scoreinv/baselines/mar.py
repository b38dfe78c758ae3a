"""Metal-artifact reduction baselines: linear interpolation (LI) and normalised MAR (NMAR).

- LI (Kalender et al. 1987): replace the sinogram entries on the metal trace, view by view, by
  linear interpolation between the nearest entries off the trace
  (`physics.mar_metal.linear_interpolation`), then filtered back-projection.
- NMAR (Meyer et al. 2010): segment the LI image into air / soft tissue / bone by two
  thresholds, giving a prior image (air -> 0, soft tissue and metal pixels -> the mean soft-tissue
  value, bone kept); divide the sinogram by the prior's projection p, interpolate the
  normalised sinogram across the trace, multiply back by p, and filter-back-project. Rays with
  p <= 1e-3 max p (air only in the prior) are 1 in the normalised sinogram and get plain LI.

`op` is the CT operator whose sinogram y is (B, *meas_shape) with detectors on the last axis
and which has `fbp`, or a MAR operator wrapping one (`physics.mar.MarOperator`: its `ct` and
`keep`); `trace` is a bool mask broadcastable to y (True = ray hits metal; default ~keep for a
MAR operator). y is in the scale of `op.forward` of [0, 1] images (`physics.mar.mar_measurement`).
Thresholds are in the image scale of `op.fbp` (default: the [0, 1] scale of docs/design.md §7.1,
-500 HU and +500 HU).
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError
from ..physics.base import LinearOperator
from ..physics.mar_metal import linear_interpolation
from ..physics.mar_spectra import hu_to_unit
from .common import Recon, check_operator


def _setup(op: LinearOperator, y: torch.Tensor, trace) -> tuple[LinearOperator, torch.Tensor, torch.Tensor]:
    """(CT operator with fbp, sinogram, bool trace of the sinogram's shape) for LI / NMAR.

    A MAR operator (one with `ct` and `keep`, e.g. physics.mar.MarOperator) is unwrapped: the
    trace defaults to ~keep, and only views with a kept entry are used (sparse-view MAR)."""
    check_operator(op)
    ct, keep = getattr(op, "ct", None), getattr(op, "keep", None)
    wrapped = ct is not None and keep is not None
    if not callable(getattr(ct if wrapped else op, "fbp", None)):
        raise ScoreinvError(f"MAR baselines need a CT operator with fbp (or a MAR operator around one); "
                            f"{op.name} has none")
    y = op.check_measurement(y, "sinogram")
    if y.is_complex():
        raise ScoreinvError("sinogram: expected real values, got a complex tensor")
    if wrapped and trace is None:
        trace = ~torch.as_tensor(keep, device=y.device).bool()
    if trace is None:
        raise ScoreinvError("MAR baselines need the metal trace (trace=...), a bool mask of the sinogram's shape")
    t = torch.as_tensor(trace, device=y.device)
    if t.dtype != torch.bool:
        if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            raise ScoreinvError("trace: expected a boolean or 0/1 mask")
        t = t > 0
    try:
        t = t.expand(y.shape)
    except RuntimeError:
        raise ScoreinvError(f"trace: shape {tuple(t.shape)} does not broadcast to the sinogram shape "
                            f"{tuple(y.shape)}") from None
    if wrapped:
        rows = torch.as_tensor(keep, device=y.device).bool().reshape(-1, *y.shape[-2:]).any(-1).any(0)
        if not bool(rows.all()):
            if not callable(getattr(ct, "select_views", None)):
                raise ScoreinvError(f"{op.name}: sparse-view MAR needs a CT operator with select_views")
            ct = ct.select_views(rows.nonzero()[:, 0].cpu().numpy())
            y, t = y[:, rows], t[:, rows]
        op = ct
    return op, y, t


def li(op: LinearOperator, y: torch.Tensor, trace=None, filter: str = "ramp") -> Recon:
    """LI-MAR: FBP of the sinogram with its metal trace linearly interpolated. -> Recon (B,1,H,W)."""
    ct, y, t = _setup(op, y, trace)
    return Recon(ct.fbp(linear_interpolation(y, t), filter=filter), 0, "li")


def nmar_prior(x_li: torch.Tensor, air_tissue: float, tissue_bone: float,
               metal_mask: torch.Tensor | None = None) -> torch.Tensor:
    """NMAR prior image from the LI image (B, 1, H, W): air -> 0, soft tissue (and metal pixels)
    -> the per-image mean soft-tissue value, bone (>= tissue_bone) unchanged."""
    if not air_tissue < tissue_bone:
        raise ScoreinvError(f"nmar thresholds: expected air_tissue < tissue_bone, got {air_tissue}, {tissue_bone}")
    tissue = (x_li >= air_tissue) & (x_li < tissue_bone)
    n = tissue.flatten(1).sum(1).clamp_min(1)
    mean = (x_li * tissue).flatten(1).sum(1) / n
    mean = mean.reshape(-1, 1, 1, 1).expand_as(x_li)
    prior = torch.where(x_li < air_tissue, torch.zeros_like(x_li), torch.where(tissue, mean, x_li))
    if metal_mask is not None:
        m = torch.as_tensor(metal_mask, device=x_li.device).bool()
        try:
            prior = torch.where(m.expand_as(prior), mean, prior)
        except RuntimeError:
            raise ScoreinvError(f"metal_mask: shape {tuple(m.shape)} does not fit images {tuple(x_li.shape)}") from None
    return prior


def nmar(op: LinearOperator, y: torch.Tensor, trace=None, metal_mask=None, filter: str = "ramp",
         air_tissue: float = float(hu_to_unit(-500.0)), tissue_bone: float = float(hu_to_unit(500.0))) -> Recon:
    """NMAR (module docstring). y: (B, *meas) sinogram; metal_mask: optional (B or 1, 1, H, W)
    pixels set to soft tissue in the prior. -> Recon (B, 1, H, W)."""
    ct, y, t = _setup(op, y, trace)
    x_li = ct.fbp(linear_interpolation(y, t), filter=filter)
    prior = nmar_prior(x_li, air_tissue, tissue_bone, metal_mask)
    p = ct.forward(prior)
    small = p <= 1e-3 * p.abs().flatten(1).amax(1).reshape(-1, *([1] * (p.ndim - 1)))
    yn = torch.where(small, torch.ones_like(y), y / torch.where(small, torch.ones_like(p), p))
    y_corr = torch.where(t, linear_interpolation(yn, t) * torch.where(small, torch.zeros_like(p), p), y)
    y_corr = torch.where(t & small, linear_interpolation(y, t), y_corr)
    return Recon(ct.fbp(y_corr, filter=filter), 0, "nmar")
