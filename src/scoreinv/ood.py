"""The out-of-distribution guard (docs/design.md §4.4): a cheap check, run after a reconstruction, of
whether the input looks like what the prior learned and whether the result still explains the data.

Two statistics per slice:

- typicality τ: the prior's own denoising error on an image x (B, 1, H, W) in [0, 1],
      e(x, σ) = mean over D noise draws z_d and pixels of (D_θ(x + σ z_d, σ) − x)²,
  for σ ∈ SIGMAS on the [0, 1] image scale (`ScoreModel.denoise`, Tweedie; a patch prior tiles the
  whole image at offsets from OOD_SEED, so τ repeats), over the error g(x, σ) of the best Gaussian
  smoother of the same noisy images (`smoothing_error`: the image's own complexity), r = e / g;
  divided by the geometric mean of r over the model's clean validation images (the reference,
  `reference_values`) and averaged over σ in log space: τ = exp(mean_σ log(r(x, σ) / r̄_ref(σ))).
  τ ≈ 1 for an image like the validation images; an image the prior does not know (another organ,
  another modality) is denoised towards what it knows, so the prior's advantage over a generic
  smoother shrinks and τ grows. Why the ratio: a smooth image is easy to denoise for any denoiser,
  so e alone measures image complexity as much as typicality; a patch prior, which judges 64x64
  windows, denoised pydicom's abdomen MR and CT slices better than brains by e alone (τ 0.3-0.9
  with mri256), and the complexity correction separates them (the idea of Serrà et al. 2020,
  input complexity against likelihood; docs/design.md §4.4). It is evaluated on the final reconstruction (calibration in
  benchmarks/ood_calibration.py: why not on the zero-filled image is in docs/design.md §4.4).
- data consistency ρ = ‖A x̂ − y‖ / ‖y‖ (`relative_residual`) against the noise floor
  ν = σ_y √M / ‖y‖ the measurement's noise record gives (σ_y: `sampling.inputs.measurement_sigma`,
  per measured entry; M: measured entries). An estimate of the truth leaves about ν; a result
  that left the data (a solver without a data-consistency step pulled by a prior that disagrees)
  leaves more.

`check` returns an `OODRecord` per slice (statistics, thresholds, verdict, one warning line). The
thresholds (TYPICALITY_THRESHOLD, RESIDUAL_FLOOR, RESIDUAL_FACTOR) were calibrated on mri64 at 64x64
and the patch prior mri256 at 256x256; a model whose own validation images spread wider gets a
higher typicality threshold (`typicality_threshold`, calibrated on ct256; docs/design.md §4.4).
The reference values travel with the model: `export` stores them as the checkpoint's
`ood_reference`; for a model without them (shipped before this guard) `model_reference` computes
them once from the validation split of the model's dataset and caches them beside the user's other
scoreinv caches (`reference_cache_dir`), keyed by the checkpoint's content.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic import write_text
from .errors import ScoreinvError, check_int
from .validation import time_of_sigma

SIGMAS = (0.5, 2.0)                   # noise levels of the typicality statistic, [0, 1] image scale (§4.4: the
                                      # coarse levels judge the anatomy; 0.05 and 0.1 judged the output's noise)
SMOOTHING_WIDTHS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0)   # Gaussian standard deviations (pixels) of `smoothing_error`
DRAWS = 2                             # fixed-seed noise draws per level
OOD_SEED = 20261130                   # the draws and a patch prior's tiling offsets
REFERENCE_IMAGES = 32                 # validation images of the reference values
REFERENCE_VERSION = 2                 # bumped when the statistic changes: older references are recomputed

TYPICALITY_THRESHOLD = 1.5            # τ above this: out of distribution (calibration: docs/design.md §4.4)
THRESHOLD_MARGIN = 1.3                # ... or above this times the model's own validation images' largest τ
RESIDUAL_FACTOR = 3.0                 # ρ above RESIDUAL_FACTOR ν + RESIDUAL_FLOOR: the data were left
RESIDUAL_FLOOR = 0.02


# --- the typicality statistic -------------------------------------------------------------------
def noise_draws(shape, draws: int = DRAWS, seed: int = OOD_SEED) -> torch.Tensor:
    """The fixed noise z (draws, 1, H, W) float32 shared by every image of size (H, W) and every σ,
    so an image's statistic does not depend on its batch."""
    h, w = (int(s) for s in shape)
    return torch.randn(check_int("draws", draws), 1, h, w, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def denoising_error(model, x: torch.Tensor, sigmas=SIGMAS, draws: int = DRAWS, batch: int = 32) -> torch.Tensor:
    """e(x, σ) of the module docstring: x (B, 1, H, W) real -> (B, len(sigmas)) float64, the per-pixel
    mean squared error of the Tweedie estimate D(x + σ z_d, σ) against x, averaged over the draws.

    Works for whole-image and patch priors alike (only `model.denoise` is called). A patch prior's
    tiling offsets restart from OOD_SEED at each call and are drawn per network call, so its e
    repeats for the same images and `batch` (a whole-image prior's e of an image does not depend on
    its batch at all). `batch`: at most this many noisy images per network call.
    """
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 1 or x.is_complex():
        raise ScoreinvError(f"ood: expected real images (B, 1, H, W), got "
                            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ScoreinvError("ood: the image holds NaN or Inf")
    sigmas = [float(s) for s in sigmas]
    dev = next(model.parameters()).device
    z = noise_draws(x.shape[-2:], draws).to(dev)
    times = [time_of_sigma(model.sde, s) for s in sigmas]
    b, d = x.shape[0], z.shape[0]
    # one row per (image, σ, draw): x + σ z scaled by α(t) (the marginal α (x + σ z), σ = β / α)
    rows = [(i, j, k) for i in range(b) for j in range(len(sigmas)) for k in range(d)]
    err = torch.zeros(b, len(sigmas), dtype=torch.float64)
    model.reseed(OOD_SEED)
    xs = x.to(dev, torch.float32)
    for r0 in range(0, len(rows), check_int("batch", batch)):
        chunk = rows[r0:r0 + batch]
        ii = torch.tensor([i for i, _, _ in chunk], device=dev)
        jj = torch.tensor([j for _, j, _ in chunk], device=dev)
        kk = torch.tensor([k for _, _, k in chunk], device=dev)
        t = torch.tensor([times[j] for _, j, _ in chunk], dtype=torch.float64, device=dev)
        alpha, _ = model.sde.marginal_coeffs(t)
        sig = torch.tensor(sigmas, device=dev)[jj].reshape(-1, 1, 1, 1)
        x0 = xs[ii]
        xt = alpha.float().reshape(-1, 1, 1, 1) * (x0 + sig * z[kk])
        e = ((model.denoise(xt, t).float() - x0) ** 2).flatten(1).mean(1).double().cpu()
        for (i, j, _), v in zip(chunk, e.tolist()):
            err[i, j] += v / d
    return err



def _gaussian_smooth(x: torch.Tensor, width: float) -> torch.Tensor:
    """Separable Gaussian filter of standard deviation `width` pixels, reflected borders."""
    k = 2 * int(math.ceil(3 * width)) + 1
    g = torch.exp(-(torch.arange(k, dtype=x.dtype, device=x.device) - k // 2) ** 2 / (2 * width * width))
    g = g / g.sum()
    pad = min(k // 2, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < k // 2:                                   # tiny images: cut the kernel to what reflection allows
        g = g[k // 2 - pad:k // 2 + pad + 1] / g[k // 2 - pad:k // 2 + pad + 1].sum()
    y = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = torch.nn.functional.conv2d(y, g.reshape(1, 1, 1, -1))
    return torch.nn.functional.conv2d(y, g.reshape(1, 1, -1, 1))


@torch.no_grad()
def smoothing_error(x: torch.Tensor, sigmas=SIGMAS, draws: int = DRAWS) -> torch.Tensor:
    """g(x, σ) (B, len(sigmas)) float64: the smallest, over the Gaussian widths SMOOTHING_WIDTHS, of the
    per-pixel mean squared error of the smoothed x + σ z_d against x, averaged over the draws (the same
    z_d as `denoising_error`). A generic denoiser's error: how hard x is to denoise without a prior."""
    z = noise_draws(x.shape[-2:], draws)
    out = torch.empty(x.shape[0], len(sigmas), dtype=torch.float64)
    for i in range(x.shape[0]):
        xi = x[i:i + 1].detach().float().cpu()
        for j, s in enumerate(float(v) for v in sigmas):
            noisy = xi + s * z
            errs = [((_gaussian_smooth(noisy, w) - xi) ** 2).flatten(1).mean(1).double().mean()
                    for w in SMOOTHING_WIDTHS]
            out[i, j] = torch.stack(errs).min()
    return out


def statistic(model, x: torch.Tensor, sigmas=SIGMAS, draws: int = DRAWS, batch: int = 32) -> torch.Tensor:
    """r(x, σ) = e(x, σ) / g(x, σ) (B, len(sigmas)) float64: the prior's denoising error over the best
    Gaussian smoother's (module docstring)."""
    return denoising_error(model, x, sigmas, draws, batch) / smoothing_error(x, sigmas, draws).clamp_min(1e-30)


def typicality(stat: torch.Tensor, reference: dict) -> torch.Tensor:
    """τ (B,) of statistics r (B, S) (`statistic`) against a reference record (`reference_values`):
    the geometric mean over σ of r / r̄_ref."""
    ref = torch.tensor(reference["ratio"], dtype=torch.float64)
    if stat.shape[-1] != ref.numel():
        raise ScoreinvError(f"ood: {stat.shape[-1]} noise levels against a reference of {ref.numel()}")
    return torch.exp(torch.log(stat.double().clamp_min(1e-30) / ref).mean(-1))


# --- reference values ---------------------------------------------------------------------------
def typicality_threshold(reference: dict | None) -> float:
    """The τ above which a model's slices are flagged: TYPICALITY_THRESHOLD, or THRESHOLD_MARGIN times
    the largest τ of the model's own validation images (`validation_tau` of its reference record)
    when that is higher. A prior trained on unlike groups of images has validation images at unlike
    τ: ct256's reference mixes head and chest CT slabs, whose τ are 0.81-0.83 and 1.26-1.34, and an
    unseen chest CT patient (lung2) then sits at 1.27-1.55 clean and up to 1.62 reconstructed
    (docs/design.md §4.4)."""
    vt = (reference or {}).get("validation_tau", {}).get("max")
    if vt is None or not math.isfinite(float(vt)):
        return TYPICALITY_THRESHOLD
    return max(TYPICALITY_THRESHOLD, THRESHOLD_MARGIN * float(vt))


def reference_values(model, images: torch.Tensor, describe: dict | None = None, batch: int = 32) -> dict:
    """The reference record of a model: r̄_ref(σ) (`ratio`: the geometric mean of `statistic` over
    `images`, (N, 1, H, W) in [0, 1], the model's clean validation images), the prior's mean error
    ē(σ) (`mse`, for the record) and the τ of those images themselves (their spread says how tight
    the threshold is). `describe`: where the images came from."""
    if images.ndim != 4 or images.shape[0] < 1:
        raise ScoreinvError(f"ood reference: expected validation images (N, 1, H, W), got {tuple(images.shape)}")
    err = denoising_error(model, images, SIGMAS, DRAWS, batch)
    stat = err / smoothing_error(images, SIGMAS, DRAWS).clamp_min(1e-30)
    rec = {"version": REFERENCE_VERSION, "sigmas": list(SIGMAS), "draws": DRAWS, "seed": OOD_SEED,
           "ratio": torch.exp(torch.log(stat).mean(0)).tolist(), "mse": err.mean(0).tolist(),
           "images": int(images.shape[0]), "image_size": list(images.shape[-2:]), **(describe or {})}
    tau = typicality(stat, rec)
    rec["validation_tau"] = {"median": float(tau.median()), "max": float(tau.max())}
    return rec


def validation_images(cfg, n: int = REFERENCE_IMAGES, dataset: str | None = None,
                      split: str = "val") -> tuple[torch.Tensor, dict]:
    """n images of a model's validation split (its config's dataset, built as training validation
    builds it and picked as it picks them: `validation.build_validator`), or of `dataset` / `split`
    at the model's image size -> (images (n, 1, S, S), a description for the record)."""
    from .data.registry import build_dataset
    from .config import data_options
    d = cfg.data
    if dataset is None:
        ds = build_dataset(d.dataset, split, int(d.image_size), seed=cfg.train.seed, **data_options(d))
    else:
        ds = build_dataset(dataset, split, int(d.image_size))
    n = min(check_int("n", n), len(ds))
    pick = getattr(ds, "validation_indices", None)
    idx = list(pick(n)) if pick is not None else list(range(n))
    return torch.stack([ds[i] for i in idx]), {"dataset": str(dataset or d.dataset), "split": split}


def compute_reference(checkpoint: str, dataset: str | None = None, split: str = "val", n: int = REFERENCE_IMAGES,
                      device="cpu") -> dict:
    """The reference record of a checkpoint (path, work directory or shipped name) from n images of
    `dataset` / `split` (default: the validation split of the model's own dataset, as `export`
    stores it; `validation_images`)."""
    from .score import load_score_model
    model, cfg = load_score_model(checkpoint, device=device)
    images, describe = validation_images(cfg, n, dataset, split)
    return reference_values(model, images.to(next(model.parameters()).device), describe)


def check_reference(rec, where: str) -> dict:
    """Raise unless `rec` is a reference record of this version of the statistic."""
    if not isinstance(rec, dict) or rec.get("version") != REFERENCE_VERSION or \
            [float(s) for s in rec.get("sigmas", ())] != list(SIGMAS) or len(rec.get("ratio", ())) != len(SIGMAS):
        raise ScoreinvError(f"{where}: not an OOD reference record of version {REFERENCE_VERSION} "
                            f"(σ = {list(SIGMAS)}); recompute it (scoreinv.ood.compute_reference)")
    if not all(math.isfinite(v) and v > 0 for v in rec["ratio"]):
        raise ScoreinvError(f"{where}: OOD reference ratios {rec['ratio']} must be finite and positive")
    return rec


def reference_cache_dir() -> Path:
    """Where references computed for models without one are kept: the folder `ood-references` of
    the one scoreinv cache (`data.fetch.cache_dir()`, $SCOREINV_DATA or ~/.cache/scoreinv/data)."""
    from .data.fetch import cache_dir
    return cache_dir() / "ood-references"


def _cached(path: Path) -> dict | None:
    """A cached reference record, or None when there is none or it is stale or damaged (then it is
    computed again and replaced)."""
    if not path.exists():
        return None
    try:
        return check_reference(json.loads(path.read_text()), str(path))
    except (ScoreinvError, json.JSONDecodeError, OSError):
        return None


def model_reference(checkpoint: str, model=None, cfg=None, compute: bool = True,
                    n: int = REFERENCE_IMAGES, log=None) -> dict | None:
    """The reference record of a checkpoint: its `ood_reference` entry (written by `export`) when it is
    of this version of the statistic (`check_reference`), else
    one computed once (from n images of the validation split of the model's dataset,
    `validation_images`) and cached in `reference_cache_dir()` under the checkpoint file's SHA-256;
    None when it has none and `compute` is False or its dataset cannot be built (e.g. a real dataset
    not fetched). model, cfg: the loaded checkpoint, if the caller has it (else it is loaded); log: gets
    one line before a reference is computed (it takes a while: 2 noise levels x 2 draws of n images)."""
    from .score import load_score_model, read_checkpoint, resolve_checkpoint
    path = resolve_checkpoint(checkpoint)
    ck = read_checkpoint(path)
    stored = ck.get("ood_reference")
    if stored is not None:
        with contextlib.suppress(ScoreinvError):   # stored by an older version of the statistic: recomputed below
            return check_reference(stored, str(path))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    cache = reference_cache_dir() / f"{Path(path).stem}-{digest}-v{REFERENCE_VERSION}.json"
    rec = _cached(cache)
    if rec is not None or not compute:
        return rec
    if model is None or cfg is None:
        model, cfg = load_score_model(str(path))
    try:
        images, describe = validation_images(cfg, n)
    except ScoreinvError:           # no validation data here: the guard judges the data residual only
        return None
    if log is not None:
        log(f"out-of-distribution check: {Path(path).name} carries no reference values of version "
            f"{REFERENCE_VERSION}; computing them once from {images.shape[0]} validation images of "
            f"{describe['dataset']} (cached in {cache.parent})")
    rec = reference_values(model, images.to(next(model.parameters()).device), describe)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_text(cache, json.dumps(rec, indent=1))
    return rec


# --- data consistency ---------------------------------------------------------------------------
def relative_residual(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ρ = ‖A x − y‖ / ‖y‖ per slice (B,) float64 on the CPU (x (B, 1, H, W), y (B, *meas_shape))."""
    r = (op.forward(x) - y).abs().flatten(1).double().norm(dim=1)
    return (r / y.abs().flatten(1).double().norm(dim=1).clamp_min(1e-30)).cpu()


def measured_entries(op, y: torch.Tensor) -> torch.Tensor:
    """M (B,): the entries of y that are measured (the MRI mask, the MAR `keep`; else all of y)."""
    b = y.shape[0]
    for name in ("mask", "keep"):
        m = getattr(op, name, None)
        if torch.is_tensor(m):
            return torch.broadcast_to(m.to(y.device).bool(), y.shape).flatten(1).sum(1).double().cpu()
    return torch.full((b,), float(y[0].numel()), dtype=torch.float64)


def noise_floor(op, y: torch.Tensor, sigma_y: torch.Tensor) -> torch.Tensor:
    """ν = σ_y √M / ‖y‖ (B,): the relative residual the measurement noise alone leaves."""
    sig = torch.as_tensor(sigma_y, dtype=torch.float64).cpu().expand(y.shape[0])
    norm = y.abs().flatten(1).double().norm(dim=1).cpu().clamp_min(1e-30)
    return sig * measured_entries(op, y).sqrt() / norm


# --- the record ---------------------------------------------------------------------------------
@dataclass
class OODRecord:
    """The guard's verdict on one slice (JSON-able through `as_dict`)."""
    typicality: float | None                 # τ of the reconstruction (None: no reference)
    typicality_per_sigma: dict               # "σ" -> e(x, σ) / ē_ref(σ)
    residual: float                          # ρ
    noise_floor: float                       # ν
    thresholds: dict = field(default_factory=dict)
    verdict: str = "ok"                      # "ok" | "out-of-distribution" | "data-inconsistent" | both, "+"
    warning: str | None = None               # one line naming what is off and by how much

    def as_dict(self) -> dict:
        return asdict(self)


def verdict(tau: float | None, per_sigma: dict, rho: float, nu: float, where: str = "",
            threshold: float = TYPICALITY_THRESHOLD) -> OODRecord:
    """The record of one slice from its statistics (thresholds of the module docstring; `threshold`:
    the model's typicality threshold, `typicality_threshold`)."""
    limit = RESIDUAL_FACTOR * nu + RESIDUAL_FLOOR
    th = {"typicality": threshold, "residual": limit, "residual_factor": RESIDUAL_FACTOR,
          "residual_floor": RESIDUAL_FLOOR}
    off, parts = [], []
    if tau is not None and tau > threshold:
        off.append("out-of-distribution")
        worst = max(per_sigma, key=per_sigma.get) if per_sigma else None
        at = f"; {per_sigma[worst]:.1f}x at σ = {worst}" if worst is not None else ""
        parts.append(f"the prior denoises it {tau:.1f}x worse than its validation images, relative to a plain "
                     f"smoother (threshold "
                     f"{threshold:.3g}x{at}): it looks unlike the training data, and a score solver may "
                     "have painted the training anatomy or noise into it")
    if rho > limit:
        off.append("data-inconsistent")
        parts.append(f"the result leaves {rho:.3g} of the data (|Ax - y| / |y|), more than the {limit:.3g} the "
                     f"noise allows (noise floor {nu:.3g})")
    warn = f"warning: {where}{'; '.join(parts)}; compare with the zero-filled / classical reconstruction" \
        if parts else None
    return OODRecord(tau, per_sigma, rho, nu, th, "+".join(off) or "ok", warn)


def summary_line(records: list[OODRecord], unit: str = "slice") -> str:
    """One line for a run's output: 'out-of-distribution check: ok (...)' with the largest τ and ρ,
    or 'warning: K of N slices ...' followed by the warning of the worst one (largest τ, then ρ)."""
    if not records:
        return "out-of-distribution check: nothing to check"
    taus = [r.typicality for r in records if r.typicality is not None]
    warned = [r for r in records if r.warning]
    if not warned:
        limit = min(r.thresholds.get("typicality", TYPICALITY_THRESHOLD) for r in records)
        t = (f"typicality τ max {max(taus):.2f} <= {limit:.3g}" if taus
             else "typicality not judged (no reference values for this model)")
        return (f"out-of-distribution check: ok ({t}; data residual max {max(r.residual for r in records):.3g}, "
                f"within the noise allowance)")
    worst = max(warned, key=lambda r: (r.typicality or 0.0, r.residual))
    return (f"warning: {len(warned)} of {len(records)} {unit}(s) look out of distribution or leave the data; worst "
            + worst.warning[len("warning: "):])


def check(model, op, y: torch.Tensor, x: torch.Tensor, reference: dict | None, sigma_y=0.0,
          labels=None, batch: int = 32) -> list[OODRecord]:
    """The guard on reconstructions x (B, 1, H, W) of data y (B, *meas_shape) through `op` (the file's
    operator): one OODRecord per slice. reference: the model's reference record (`model_reference`;
    None: the typicality is not judged, only the data); sigma_y: the noise std per measured entry
    (float or (B,), `sampling.inputs.measurement_sigma`); labels: B names for the warning lines
    (e.g. "slice 3: ")."""
    xr = (x.abs() if x.is_complex() else x).float()
    rho = relative_residual(op, x, y)
    nu = noise_floor(op, y, sigma_y)
    tau, ratios, limit = None, None, typicality_threshold(reference)
    if reference is not None:
        check_reference(reference, "ood reference")
        stat = statistic(model, xr, SIGMAS, DRAWS, batch)
        tau = typicality(stat, reference)
        ratios = stat / torch.tensor(reference["ratio"], dtype=torch.float64)
    out = []
    for i in range(x.shape[0]):
        per = {f"{s:g}": float(ratios[i, j]) for j, s in enumerate(SIGMAS)} if ratios is not None else {}
        where = labels[i] if labels is not None else ""
        out.append(verdict(None if tau is None else float(tau[i]), per, float(rho[i]), float(nu[i]), where, limit))
    return out
