"""The one network wrapper: `ScoreModel.score(x, t)`. Time and scaling conventions live here only.

For the marginal x_t = alpha x_0 + beta z (sde.py), with y = x_t / alpha and sigma = beta / alpha:
- `paper` scaling (Song et al. 2021): score = F(x_t, log sigma) / beta.
- `edm` preconditioning (Karras et al. 2022): D(y, sigma) = c_skip y + c_out F(c_in y, log sigma),
  c_skip = sd² / (sigma² + sd²), c_out = sigma sd / sqrt(sigma² + sd²), c_in = 1 / sqrt(sigma² + sd²),
  and score = (D − y) / (alpha sigma²)  (Tweedie; docs/design.md §2.3).
Also: EMA of weights, checkpoint loading with architecture checks, and the shipped-model registry.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from . import config as C
from .errors import ScoreinvError
from .nets.ncsnpp import build_network
from .sde import SDE, build_sde


class ScoreModel(nn.Module):
    """score(x, t) for images x (B, C, H, W) and times t (B,) in [eps, 1]."""

    def __init__(self, net: nn.Module, sde: SDE, preconditioning: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        if preconditioning not in ("edm", "paper"):
            raise ScoreinvError(f"unknown preconditioning {preconditioning!r}; expected 'edm' or 'paper'")
        self.net, self.sde, self.preconditioning, self.sigma_data = net, sde, preconditioning, float(sigma_data)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Tweedie estimate E[x_0 | x_t] (B, C, H, W)."""
        alpha, beta = self.sde.marginal_coeffs(t)
        a = alpha.reshape(-1, 1, 1, 1).to(x.dtype)
        s = self.score(x, t)
        return (x + (beta.reshape(-1, 1, 1, 1).to(x.dtype) ** 2) * s) / a

    @property
    def patch_size(self) -> int:
        """P of a patch prior (nets/patch.py: any image size, tiled at a random offset), else 0."""
        return int(getattr(self.net, "patch_size", 0))

    def reseed(self, seed: int) -> None:
        """Restart the random tiling offsets of a patch prior (no-op for whole-image networks)."""
        if self.patch_size:
            self.net.reseed(seed)

    def score(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """The score at (x, t). `pos` (training a patch prior only): the position channels of the
        patches x (nets/patch.py); without it a patch prior tiles whole images."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        alpha, beta = self.sde.marginal_coeffs(t.to(torch.float64))
        sigma = (beta / alpha)
        log_sigma = torch.log(sigma).float()
        xf = x.float()
        if self.preconditioning == "paper":
            out = (self.net(xf, log_sigma) if pos is None else self.net(xf, log_sigma, pos)).float()
            return out / beta.float().reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        s2 = sigma ** 2
        c_in = (1 / torch.sqrt(s2 + sd2)).float().reshape(-1, 1, 1, 1)
        c_skip = (sd2 / (s2 + sd2)).float().reshape(-1, 1, 1, 1)
        c_out = (sigma * self.sigma_data / torch.sqrt(s2 + sd2)).float().reshape(-1, 1, 1, 1)
        a = alpha.float().reshape(-1, 1, 1, 1)
        y = xf / a
        F = (self.net(c_in * y, log_sigma) if pos is None else self.net(c_in * y, log_sigma, pos)).float()
        D = c_skip * y + c_out * F
        return (D - y) / (a * sigma.float().reshape(-1, 1, 1, 1) ** 2)

    forward = score


def build_sde_from(cfg) -> SDE:
    m = cfg.model
    return build_sde(m.sde, m.sigma_min, m.sigma_max, m.beta_min, m.beta_max, m.num_scales, m.eps)


def build_model(cfg) -> ScoreModel:
    net = build_network(cfg.model, cfg.data.image_size)
    return ScoreModel(net, build_sde_from(cfg), cfg.model.preconditioning, cfg.model.sigma_data)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class EMA:
    """Exponential moving average of parameters: p_ema <- r p_ema + (1 - r) p."""

    def __init__(self, model: nn.Module, rate: float):
        self.rate = float(rate)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.rate).add_(v.detach(), alpha=1 - self.rate)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, sd):
        self.shadow = {k: v.clone() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------
# Loading checkpoints and shipped models
# ---------------------------------------------------------------------------------------------

def models_dir() -> Path:
    """Where the package's shipped models live (resources/models/)."""
    return Path(str(resources.files("scoreinv") / "resources" / "models"))


def shipped_models() -> dict[str, Path]:
    """Name -> path of the models shipped inside the package (resources/models/<name>.pt)."""
    d = models_dir()
    return {p.stem: p for p in sorted(d.glob("*.pt"))} if d.exists() else {}


def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint path, a work directory (its latest checkpoint), or a shipped model name."""
    p = Path(spec)
    if p.is_dir():
        meta = p / "checkpoints-meta" / "checkpoint.pt"
        if meta.exists():
            return meta
        ckpts = sorted((p / "checkpoints").glob("checkpoint_*.pt"), key=lambda q: int(q.stem.split("_")[-1]))
        if ckpts:
            return ckpts[-1]
        raise ScoreinvError(f"work directory {spec!r} holds no checkpoint (looked for checkpoints-meta/checkpoint.pt "
                            f"and checkpoints/checkpoint_*.pt)")
    if p.exists():
        return p
    shipped = shipped_models()
    if spec in shipped:
        return shipped[spec]
    raise ScoreinvError(f"checkpoint {spec!r} not found: expected a .pt file, a training work directory, or a shipped "
                        f"model name ({', '.join(shipped) or 'none shipped'})")


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with a clear error for unreadable/truncated files."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ScoreinvError(f"cannot read checkpoint {str(path)!r} ({type(e).__name__}: {e}); "
                            f"expected a file written by `scoreinv train`") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ScoreinvError(f"{str(path)!r} is not a scoreinv checkpoint (no 'config' entry)")
    return ckpt


PATCH_SCALE_RANGE = 2.0   # a patch prior serves images from 1/2 to 2x its training size (docs/design.md §2.12)


def check_model_size(cfg, h: int, w: int | None = None, what: str = "the images") -> None:
    """Raise unless a model of config `cfg` can reconstruct h x w images: a whole-image network
    only its own S x S; a patch prior any size within a factor PATCH_SCALE_RANGE of its training
    size (its windows see a fixed number of pixels and its positions are relative to the image,
    so the anatomy must appear at about the training pixel scale)."""
    s, w = int(cfg.data.image_size), int(h if w is None else w)
    h = int(h)
    if not cfg.model.patch_size:
        if (h, w) != (s, s):
            raise ScoreinvError(f"{what} are {h}x{w}, but the model ({cfg.preset}) is a whole-image network for "
                                f"{s}x{s} images")
        return
    lo, hi = s / PATCH_SCALE_RANGE, s * PATCH_SCALE_RANGE
    if not (lo <= h <= hi and lo <= w <= hi):
        raise ScoreinvError(f"{what} are {h}x{w}; the patch prior ({cfg.preset}, {cfg.model.patch_size}x"
                            f"{cfg.model.patch_size} windows) was trained on {s}x{s} slices and serves sizes "
                            f"{lo:g} to {hi:g}: resample the images to about {s}x{s}")


def load_score_model(spec: str, device="cpu", use_ema: bool = True, image_size: int | None = None):
    """Load (model in eval mode with EMA weights, config) from a path, work dir or shipped name.

    Raises if the checkpoint lacks EMA weights (when `use_ema`) or if `image_size` is given and
    the model cannot serve it (check_model_size).
    """
    path = resolve_checkpoint(spec)
    ckpt = read_checkpoint(path)
    cfg = C.from_dict(ckpt["config"])
    if image_size is not None:
        check_model_size(cfg, image_size, what=f"the images for checkpoint {str(path)!r}")
    model = build_model(cfg)
    key = "ema" if use_ema else "model"
    if key not in ckpt:
        raise ScoreinvError(f"checkpoint {str(path)!r} has no {'EMA ' if use_ema else ''}weights ('{key}' entry); "
                            f"sampling needs the EMA weights written by `scoreinv train`")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt[key].items()}
    try:
        model.net.load_state_dict(sd)
    except RuntimeError as e:
        raise ScoreinvError(f"checkpoint {str(path)!r} does not fit the architecture of its config: {str(e)[:300]}") from None
    model.to(device).eval()
    if torch.device(device).type == "cpu":
        model.net.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg


def ema_copy(model: ScoreModel, ema: EMA) -> ScoreModel:
    """A copy of `model` holding the EMA weights (for snapshots)."""
    m = copy.deepcopy(model)
    m.net.load_state_dict(ema.state_dict())
    return m.eval()
