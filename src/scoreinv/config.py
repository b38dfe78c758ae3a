"""Typed configuration: the only module that reads configuration (docs/design.md §8.1).

Structured OmegaConf configs built from dataclasses; YAML presets live in `configs/`
(also packaged as `scoreinv/configs`). Dotted command-line overrides (`model.nf=64`) are
merged in; unknown keys and wrongly typed values are rejected with the key named.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ScoreinvError, check_int, check_range


@dataclass
class DataConfig:
    dataset: str = "phantoms"        # phantoms | ellipses | brain | a folder path
    image_size: int = 64
    axis: int = 0                    # slice axis for folder volumes
    normalize: str = "auto"          # auto | minmax | window
    hu_min: float = -1024.0
    hu_max: float = 3200.0
    options: dict[str, Any] = field(default_factory=dict)   # the dataset's other options (docs/data.md)


# DataConfig fields that go to every dataset as keyword options; data.options holds the rest
DATA_FIELDS = ("axis", "normalize", "hu_min", "hu_max")


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
    patch_size: int = 0              # > 0: a patch prior on P x P patches with position channels (nets/patch.py)
    max_patches: int = 64            # patch prior: patches per network call at sampling time (memory bound)


@dataclass
class TrainConfig:
    batch_size: int = 32
    max_steps: int = 100000
    max_minutes: float = 0.0         # also stop after this many minutes of one call (0: no limit)
    lr: float = 2e-4
    beta1: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000               # linear warm-up steps (optim.lr_at)
    lr_schedule: str = "rsqrt"       # constant | rsqrt | cosine, after the warm-up (optim.lr_at)
    lr_ref_steps: int = 10000        # rsqrt: lr / sqrt(max(step / lr_ref_steps, 1))
    lr_decay_steps: int = 0          # cosine: steps at which lr reaches lr_min_ratio * lr (0: max_steps)
    lr_min_ratio: float = 0.05       # cosine: final lr / lr
    grad_clip: float = 1.0
    ema_rate: float = 0.999          # fixed per-step EMA decay, used when ema_halflife_kimg = 0
    ema_halflife_kimg: float = 500.0  # EMA half-life in thousands of training images (0: use ema_rate)
    ema_rampup: float = 0.05         # half-life at most this fraction of the images seen (0: no ramp-up)
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
    precision: str = "auto"          # auto | fp32 | bf16 (autocast); auto: measured once per machine
    bf16: bool = False               # old spelling of precision: bf16 (kept so old checkpoints load)
    channels_last: str = "auto"      # auto | on | off: channels-last memory format
    compile: str = "auto"            # auto | on | off: torch.compile of the network
    data_workers: int = -1           # processes generating batches ahead (0: inline; -1: auto)
    num_threads: int = 0             # torch intra-op threads (0: torch default)


@dataclass
class ValConfig:
    """Validation during training (validation.py): denoising error at fixed noise levels on
    held-out images, and one fast reconstruction PSNR."""
    every: int = 500                 # validate every N steps (0: never)
    images: int = 16                 # validation images for the denoising error
    sigmas: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.5, 2.0, 10.0])
    recon_task: str = "auto"         # auto (mri for brain data, else ct) | ct | mri | none
    recon_images: int = 4            # images for the reconstruction PSNR
    recon_steps: int = 20            # dds steps of that reconstruction


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
    val: ValConfig = field(default_factory=ValConfig)
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
    _normalise_switches(cfg)
    validate(cfg)
    return cfg


def _normalise_switches(cfg) -> None:
    """YAML reads on/off/true/false as booleans, which a string field stores as 'True'/'False':
    train.channels_last and train.compile take them all as on/off."""
    for k in ("channels_last", "compile"):
        v = str(cfg.train[k])
        cfg.train[k] = {"true": "on", "false": "off"}.get(v.lower(), v)


def from_dict(d: dict):
    """Rebuild a config saved in a checkpoint (unknown keys rejected)."""
    return _wrap(lambda: OmegaConf.merge(OmegaConf.structured(Config), d), "saved config")


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)


def data_options(d) -> dict:
    """The keyword options of `data.registry.build_dataset` that a data config gives: data.options
    (e.g. mri-mix's real_fraction, a folder's fractions) and the named fields (axis, normalize,
    hu_min, hu_max), which every dataset accepts at their defaults."""
    extra = OmegaConf.to_container(d.options) if isinstance(d.options, DictConfig) else dict(d.options)
    return {**extra, **{k: getattr(d, k) for k in DATA_FIELDS}}


def _validate_data(d) -> None:
    """data.options: no named field twice, and only options the dataset takes (registry.check_options)."""
    from .data.registry import check_options
    for k in d.options:
        if k in DATA_FIELDS:
            raise ScoreinvError(f"data.options.{k}: {k} is a field of its own; set data.{k} instead")
    try:
        check_options(d.dataset, data_options(d))
    except ScoreinvError as e:
        raise ScoreinvError(f"data.options: {e}") from None


def validate(cfg) -> None:
    m, t = cfg.model, cfg.train
    _validate_data(cfg.data)
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
        ("train.lr_schedule", t.lr_schedule, LR_SCHEDULES),
        ("train.precision", t.precision, ("auto", "fp32", "bf16")),
        ("train.channels_last", t.channels_last, ("auto", "on", "off")),
        ("train.compile", t.compile, ("auto", "on", "off")),
        ("val.recon_task", cfg.val.recon_task, ("auto", "ct", "mri", "none")),
        ("data.normalize", cfg.data.normalize, ("auto", "minmax", "window")),
    ]:
        if value not in choices:
            raise ScoreinvError(f"{name} = {value!r}; expected one of {list(choices)}")
    size = cfg.data.image_size
    check_int("model.patch_size", m.patch_size, lo=0)
    check_int("model.max_patches", m.max_patches)
    if m.patch_size:
        if m.patch_size % 8 or m.patch_size % (2 ** (len(m.ch_mult) - 1)):
            raise ScoreinvError(f"model.patch_size = {m.patch_size} must be a multiple of 8 and of "
                                f"2^(len(model.ch_mult)-1) = {2 ** (len(m.ch_mult) - 1)}")
    elif size % (2 ** (len(m.ch_mult) - 1)):
        raise ScoreinvError(f"data.image_size = {size} is not divisible by 2^(len(model.ch_mult)-1) = {2 ** (len(m.ch_mult) - 1)}")
    for name, v in [("train.batch_size", t.batch_size), ("train.max_steps", t.max_steps), ("model.nf", m.nf),
                    ("data.image_size", size), ("model.num_scales", m.num_scales)]:
        check_int(name, v)
    if not (0 < m.sigma_min < m.sigma_max):
        raise ScoreinvError(f"need 0 < model.sigma_min < model.sigma_max, got {m.sigma_min}, {m.sigma_max}")
    if not (0.0 <= t.ema_rate < 1.0):
        raise ScoreinvError(f"train.ema_rate = {t.ema_rate} must be in [0, 1)")
    _validate_training(cfg)


LR_SCHEDULES = ("constant", "rsqrt", "cosine")


def _validate_training(cfg) -> None:
    """Schedule, EMA, speed and validation settings (train.py, optim.py, validation.py)."""
    t, v = cfg.train, cfg.val
    check_int("train.warmup", t.warmup, lo=0)
    check_int("train.lr_ref_steps", t.lr_ref_steps)
    check_int("train.lr_decay_steps", t.lr_decay_steps, lo=0)
    check_range("train.lr_min_ratio", t.lr_min_ratio, 0.0, 1.0)
    check_range("train.lr", t.lr, 0.0)
    check_range("train.max_minutes", t.max_minutes, 0.0)
    check_range("train.ema_halflife_kimg", t.ema_halflife_kimg, 0.0)
    check_range("train.ema_rampup", t.ema_rampup, 0.0)
    check_int("train.data_workers", t.data_workers, lo=-1)
    for name in ("log_every", "checkpoint_every", "meta_every"):
        check_int(f"train.{name}", getattr(t, name))
    if t.lr_schedule == "cosine" and (t.lr_decay_steps or t.max_steps) <= t.warmup:
        raise ScoreinvError(f"train.lr_schedule = cosine needs train.lr_decay_steps (or train.max_steps) > "
                            f"train.warmup = {t.warmup}, got {t.lr_decay_steps or t.max_steps}")
    if t.bf16 and t.precision == "fp32":
        raise ScoreinvError("train.bf16 = true contradicts train.precision = fp32; set only train.precision")
    check_int("val.every", v.every, lo=0)
    check_int("val.images", v.images)
    check_int("val.recon_images", v.recon_images, lo=0)
    check_int("val.recon_steps", v.recon_steps)
    if not v.sigmas:
        raise ScoreinvError("val.sigmas is empty; expected a list of positive noise levels")
    for s in v.sigmas:
        check_range("val.sigmas", s, 1e-12)


def precision_of(cfg) -> str:
    """train.precision with the old `train.bf16 = true` spelling folded in: auto | fp32 | bf16."""
    return "bf16" if cfg.train.bf16 else cfg.train.precision


def architecture_signature(cfg) -> dict:
    """The config entries that fix the network's shape: a checkpoint fits only a matching one."""
    m = to_dict(cfg.model)
    keys = [f.name for f in dataclasses.fields(ModelConfig)
            if f.name not in ("sigma_min", "sigma_max", "beta_min", "beta_max", "eps", "num_scales", "sigma_data", "dropout",
                          "max_patches")]
    sig = {k: m[k] for k in keys}
    sig["image_size"] = cfg.data.image_size
    return sig
