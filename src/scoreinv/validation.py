"""Validation during training (docs/design.md §2.2): numbers comparable across steps and runs.

The EMA weights (what sampling uses) are scored on held-out images of the run's dataset
(split `val`, the same seed as the training data, so folder splits stay disjoint):

- denoising error at fixed noise levels: for each σ in `val.sigmas`, the mean squared error per
  pixel of the Tweedie estimate D(x_0 + σ z, σ) (ScoreModel.denoise, images in [0, 1]) against
  x_0, over `val.images` images, with the noise z drawn once from a fixed seed (`NOISE_SEED`) and
  shared by all σ; `denoise_mse_mean` is the mean over σ;
- one fast reconstruction: the PSNR (dB, data range 1) of the `dds` solver (λ = 1, η 0.85,
  `val.recon_steps` steps) on `val.recon_images` images; CT with min(23, S) views simulated
  without the inverse crime (tasks.build_problem), or MRI 8x with a random column mask
  (the model cards' setting) for brain data
  (`val.recon_task: auto`); measurements and solver noise from fixed seeds.

Cost at the 64² presets: 16 x 5 denoiser evaluations and 4 x 20 for dds, measured 8.6 s (CT) and
4.8 s (MRI) on one CPU thread, against 500 training steps of about a second each between
validations (≈ 1-2 %);
`ValidationLog` records each validation's seconds (`val_s`) so the share can be checked.

Records go to TensorBoard (`val/...`) and, one JSON object per line, to WORKDIR/validation.jsonl:
step, kimg (thousands of training images seen, all ranks), wall_s (wall time of the run since its first
step, summed over resumes), val_s, denoise_mse_<σ>, denoise_mse_mean, recon_psnr, recon_task.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from .atomic import write_text
from .errors import ScoreinvError, check_int
from .metrics import psnr
from .sampling.solvers import solve, solver_config
from .score import build_sde_from
from .tasks import build_problem, task_options

NOISE_SEED = 20240611      # the fixed noise of the denoising error
PROBLEM_SEED = 7           # measurement simulation (MRI mask, noise-free CT)
SOLVER_SEED = 11           # dds noise


def recon_task(setting: str, dataset: str) -> str:
    """`val.recon_task` resolved: auto -> mri for brain data (data.registry.MRI_DATASETS), else ct."""
    if setting == "auto":
        from .data.registry import MRI_DATASETS
        return "mri" if dataset in MRI_DATASETS else "ct"
    return setting


def time_of_sigma(sde, sigma: float) -> float:
    """The time t in [eps, 1] whose noise level σ(t) = β(t)/α(t) equals `sigma` (bisection; σ(t)
    increases with t for the VE, VP and sub-VP SDEs)."""
    lo, hi = torch.tensor([sde.eps], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    s_lo, s_hi = float(sde.sigma_eff(lo)), float(sde.sigma_eff(hi))
    if not s_lo <= sigma <= s_hi:
        raise ScoreinvError(f"val.sigmas: σ = {sigma:g} lies outside the model's noise range "
                            f"[{s_lo:.3g}, {s_hi:.3g}]; choose levels inside it")
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(sde.sigma_eff(mid)) < sigma:
            lo = mid
        else:
            hi = mid
    return float((lo + hi) / 2)


class Validator:
    """Validation on fixed images (module docstring). `images`: (N, 1, S, S) in [0, 1]."""

    def __init__(self, images: torch.Tensor, sde, sigmas, n_images: int, task: str = "ct",
                 recon_images: int = 4, recon_steps: int = 20, batch: int = 64):
        if images.ndim != 4 or images.shape[0] < 1:
            raise ScoreinvError(f"validation images: expected (N, 1, S, S) with N >= 1, got {tuple(images.shape)}")
        n = min(check_int("val.images", n_images), images.shape[0])
        self.x = images[:n].float()
        self.sigmas = [float(s) for s in sigmas]
        self.times = torch.tensor([time_of_sigma(sde, s) for s in self.sigmas], dtype=torch.float64)
        self.z = torch.randn(self.x.shape, generator=torch.Generator().manual_seed(NOISE_SEED))
        self.batch = check_int("batch", batch)
        self.task, self.problem = task, None
        k = min(check_int("val.recon_images", recon_images, lo=0), images.shape[0])
        if task != "none" and k > 0:
            size = images.shape[-1]
            opts = (task_options("ct", views=min(23, size)) if task == "ct"
                    else task_options("mri", acceleration=8.0, mask="random"))
            self.problem = build_problem(images[:k].float(), opts, torch.Generator().manual_seed(PROBLEM_SEED))
            self.solver = solver_config("dds", task, steps=check_int("val.recon_steps", recon_steps))
            self.task = f"{task} {opts.setting()}"

    @torch.no_grad()
    def denoise_mse(self, model) -> dict[str, float]:
        """Per-pixel MSE of D(x_0 + σ z) against x_0 for every σ; model in eval mode on any device."""
        dev = next(model.parameters()).device
        out = {}
        for s, t in zip(self.sigmas, self.times):
            alpha, beta = model.sde.marginal_coeffs(t.reshape(1))
            err = 0.0
            for i in range(0, self.x.shape[0], self.batch):
                x0, z = self.x[i:i + self.batch].to(dev), self.z[i:i + self.batch].to(dev)
                xt = float(alpha) * x0 + float(beta) * z
                d = model.denoise(xt, t.expand(x0.shape[0]).to(dev))
                err += float(((d.float() - x0) ** 2).sum())
            out[f"denoise_mse_{s:g}"] = err / self.x.numel()
        vals = list(out.values())
        out["denoise_mse_mean"] = sum(vals) / len(vals)
        return out

    @torch.no_grad()
    def recon_psnr(self, model) -> float | None:
        """Mean PSNR (dB) of one dds reconstruction per validation image (on the CPU)."""
        if self.problem is None:
            return None
        cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
        x, _ = solve(cpu, self.problem.op, self.problem.y, self.solver, torch.Generator().manual_seed(SOLVER_SEED))
        return float(psnr(x.float(), self.problem.x).mean())

    def __call__(self, model) -> dict:
        t0 = time.perf_counter()
        rec = self.denoise_mse(model)
        p = self.recon_psnr(model)
        if p is not None:
            rec["recon_psnr"] = p
            rec["recon_task"] = self.task
        rec["val_s"] = time.perf_counter() - t0
        return rec


def build_validator(cfg, dataset, device_batch: int = 64) -> Validator:
    """A Validator from the config's `val` section and a `val` split dataset."""
    v = cfg.val
    n = min(len(dataset), max(v.images, v.recon_images))
    if n < 1:
        raise ScoreinvError(f"dataset {cfg.data.dataset!r} has no validation images; set --set val.every=0 to "
                            f"train without validation")
    # datasets of a few volumes spread the picks over their volumes (`validation_indices`); the
    # procedural ones take their first images (the model cards' curves were measured so)
    pick = getattr(dataset, "validation_indices", None)
    idx = list(pick(n)) if pick is not None else list(range(n))
    images = torch.stack([dataset[i] for i in idx])
    return Validator(images, build_sde_from(cfg), v.sigmas, v.images, recon_task(v.recon_task, cfg.data.dataset),
                     v.recon_images, v.recon_steps, device_batch)


class ValidationLog:
    """WORKDIR/validation.jsonl: one record per validation, written atomically. On resume the
    records after the resumed step (validated before a kill, never checkpointed) are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    if r["step"] <= resume_step:
                        self.records.append(r)

    def steps(self) -> set[int]:
        return {r["step"] for r in self.records}

    def add(self, record: dict, writer=None) -> None:
        self.records.append(record)
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, float) and k not in ("wall_s", "kimg"):
                    writer.add_scalar(f"val/{k}", v, record["step"])
            writer.flush()
