"""Typed configuration: the only module that reads configuration (DESIGN.md §5).

Structured OmegaConf configs built from dataclasses; YAML presets live in `configs/`
(also packaged as `scoreinv/configs`). Dotted command-line overrides (`model.nf=64`) are
merged in; unknown keys and wrongly typed values are rejected with the key named.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ScoreinvError


@dataclass
class DataConfig:
    dataset: str = "phantoms"        # phantoms | ellipses | brain | a folder path
    image_size: int = 64
    axis: int = 0                    # slice axis for folder volumes
    normalize: str = "auto"          # auto | minmax | window
    hu_min: float = -1024.0
    hu_max: float = 3200.0


@dataclass
class ModelConfig:
    name: str = "ncsnpp"
    sde: str = "ve"                  # ve | vp | subvp
    sigma_min: float = 0.01
    sigma_max: float = 30.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-5                # smallest time t
    num_scales: int = 1000           # discretisation levels N
    preconditioning: str = "edm"     # edm | paper (output divided by sigma)
    sigma_data: float = 0.5
    nf: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.0
    resamp_with_conv: bool = True
    fir: bool = True
    fir_kernel: list[int] = field(default_factory=lambda: [1, 3, 3, 1])
    skip_rescale: bool = True
    resblock_type: str = "biggan"    # biggan | ddpm
    progressive: str = "output_skip"  # none | output_skip | residual
    progressive_input: str = "input_skip"  # none | input_skip | residual
    progressive_combine: str = "sum"  # sum | cat
    embedding_type: str = "fourier"  # fourier | positional
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    num_channels: int = 1


@dataclass
class TrainConfig:
    batch_size: int = 32
    max_steps: int = 100000
    lr: float = 2e-4
    beta1: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_rate: float = 0.999
    loss_weighting: str = "score"    # score (paper: ||sigma s + z||^2) | edm
    likelihood_weighting: bool = False
    log_every: int = 50
    snapshot_every: int = 5000       # sample grid PNG
    checkpoint_every: int = 1000     # numbered checkpoint (kept)
    meta_every: int = 100            # latest meta-checkpoint (resume point)
    snapshot_samples: int = 16
    snapshot_steps: int = 200
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    bf16: bool = False               # bfloat16 autocast
    num_threads: int = 0             # torch intra-op threads (0: torch default)


@dataclass
class SampleConfig:
    steps: int = 1000
    snr: float = 0.16
    corrector_steps: int = 1


@dataclass
class Config:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def _preset_dir() -> Path:
    return Path(str(resources.files("scoreinv") / "configs"))


def _wrap(fn, what):
    try:
        return fn()
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ScoreinvError(f"{what}: {type(e).__name__} at key {key!r}: {e.msg if hasattr(e, 'msg') else e}".split("\n")[0]) from None


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None):
    """Build the resolved config: schema <- preset/YAML file <- dotted overrides.

    `preset_or_path` is a preset name (see `preset_names()`) or a YAML file. Overrides are
    strings `key.sub=value`. Unknown keys raise ScoreinvError naming the key.
    """
    cfg = OmegaConf.structured(Config)
    if preset_or_path:
        p = Path(preset_or_path)
        if not p.suffix:
            p = _preset_dir() / f"{preset_or_path}.yaml"
            if not p.exists():
                raise ScoreinvError(f"unknown preset {preset_or_path!r}; expected one of {preset_names()} or a YAML file")
        if not p.exists():
            raise ScoreinvError(f"config file {str(p)!r} does not exist")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:
            raise ScoreinvError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        cfg = _wrap(lambda: OmegaConf.merge(cfg, loaded), f"config file {p.name}")
    for ov in overrides or []:
        if "=" not in ov:
            raise ScoreinvError(f"override {ov!r} must look like key.sub=value")
        cfg = _wrap(lambda: OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov])), f"override {ov!r}")
    validate(cfg)
    return cfg


def from_dict(d: dict):
    """Rebuild a config saved in a checkpoint (unknown keys rejected)."""
    return _wrap(lambda: OmegaConf.merge(OmegaConf.structured(Config), d), "saved config")


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)


def validate(cfg) -> None:
    m, t = cfg.model, cfg.train
    for name, value, choices in [
        ("model.sde", m.sde, ("ve", "vp", "subvp")),
        ("model.preconditioning", m.preconditioning, ("edm", "paper")),
        ("model.resblock_type", m.resblock_type, ("biggan", "ddpm")),
        ("model.progressive", m.progressive, ("none", "output_skip", "residual")),
        ("model.progressive_input", m.progressive_input, ("none", "input_skip", "residual")),
        ("model.progressive_combine", m.progressive_combine, ("sum", "cat")),
        ("model.embedding_type", m.embedding_type, ("fourier", "positional")),
        ("train.loss_weighting", t.loss_weighting, ("score", "edm")),
        ("train.device", t.device, ("auto", "cpu", "cuda")),
        ("data.normalize", cfg.data.normalize, ("auto", "minmax", "window")),
    ]:
        if value not in choices:
            raise ScoreinvError(f"{name} = {value!r}; expected one of {list(choices)}")
    size = cfg.data.image_size
    if size % (2 ** (len(m.ch_mult) - 1)):
        raise ScoreinvError(f"data.image_size = {size} is not divisible by 2^(len(model.ch_mult)-1) = {2 ** (len(m.ch_mult) - 1)}")
    for name, v in [("train.batch_size", t.batch_size), ("train.max_steps", t.max_steps), ("model.nf", m.nf),
                    ("data.image_size", size), ("model.num_scales", m.num_scales)]:
        if v <= 0:
            raise ScoreinvError(f"{name} = {v} must be positive")
    if not (0 < m.sigma_min < m.sigma_max):
        raise ScoreinvError(f"need 0 < model.sigma_min < model.sigma_max, got {m.sigma_min}, {m.sigma_max}")
    if not (0.0 <= t.ema_rate < 1.0):
        raise ScoreinvError(f"train.ema_rate = {t.ema_rate} must be in [0, 1)")


def architecture_signature(cfg) -> dict:
    """The config entries that fix the network's shape: a checkpoint fits only a matching one."""
    m = to_dict(cfg.model)
    keys = [f.name for f in dataclasses.fields(ModelConfig)
            if f.name not in ("sigma_min", "sigma_max", "beta_min", "beta_max", "eps", "num_scales", "sigma_data", "dropout")]
    sig = {k: m[k] for k in keys}
    sig["image_size"] = cfg.data.image_size
    return sig
