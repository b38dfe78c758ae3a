"""Classical reconstruction baselines (docs/design.md §4.2): FBP, SIRT, CGLS, TV (PDHG),
zero-filled and CS (wavelet, TV) MRI, LI and NMAR for metal-artifact reduction.

All are torch, batched over (B, ...) measurements, generic over `LinearOperator`, and return a
`Recon` (images (B, 1, H, W), iterations run, method, weight). Regularisation weights are chosen
on validation data with `choose_weight`.
"""
from ..physics.norm import operator_norm
from .common import Recon
from .iterative import cgls, fbp, sirt, zero_filled
from .mar import li, nmar
from .registry import BASELINES, Baseline, WeightChoice, choose_weight, get_baseline, log_grid
from .tv import div, grad, objective, tv3d_recon, tv_recon, tv_value, z_weights
from .wavelet import OrthoWavelet2d, cs_wavelet, soft_threshold

__all__ = ["Recon", "operator_norm", "cgls", "fbp", "sirt", "zero_filled", "li", "nmar",
           "BASELINES", "Baseline", "WeightChoice", "choose_weight", "get_baseline", "log_grid",
           "div", "grad", "objective", "tv3d_recon", "tv_recon", "tv_value", "z_weights", "OrthoWavelet2d", "cs_wavelet", "soft_threshold"]
