"""Tests that need a CUDA device (marker `cuda`; skipped without one): operators, the sampler loop,
training steps, and DistributedDataParallel with nccl on one GPU. `make device-check` runs them
(scripts/device_check.sh)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoreinv import config as C
from scoreinv.physics.ct import ParallelBeamCT
from scoreinv.physics.geometry import ParallelGeometry, dense_angles
from scoreinv.physics.masks import make_mask
from scoreinv.physics.mri import CartesianMRI
from scoreinv.sampling.solvers import solve, solver_config
from scoreinv.score import load_score_model, read_checkpoint
from scoreinv.train import train
from tinymodel import TINY, RandomImages

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _inner(a, b):
    return float((a.conj() * b).real.sum()) if a.is_complex() else float((a * b).sum())


@pytest.mark.parametrize("kind", ["ct", "mri"])
def test_operators_on_the_gpu_are_adjoint_and_match_the_cpu(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "ct":
        op = ParallelBeamCT(ParallelGeometry(24, dense_angles(17) + 0.1))
    else:
        op = CartesianMRI(make_mask("random", (24, 24), 4.0, generator=g))
    x = torch.rand(2, 1, 24, 24, generator=g, dtype=torch.float64)
    y_cpu = op.forward(x)
    op.to("cuda")
    xc = x.cuda()
    yc = op.forward(xc)
    assert yc.is_cuda and torch.allclose(yc.cpu(), y_cpu, rtol=1e-6, atol=1e-8)
    v = torch.randn(yc.shape, dtype=yc.dtype, device="cuda")
    assert _inner(yc, v) == pytest.approx(_inner(xc, op.adjoint(v)), rel=1e-8)


def test_sampler_loop_on_the_gpu_keeps_the_data(tiny_checkpoint):
    model, cfg = load_score_model(tiny_checkpoint, device="cuda")
    g = torch.Generator().manual_seed(1)
    op = CartesianMRI(make_mask("random", (16, 16), 4.0, generator=g)).to("cuda")
    x = torch.rand(2, 1, 16, 16, generator=g).cuda()
    y = op.forward(x)
    for name in ("dds", "projection"):
        out, nfe = solve(model, op, y, solver_config(name, "mri", steps=4))
        assert out.is_cuda and torch.isfinite(out).all() and nfe > 0
        # the final hard projection (λ = 1) puts the sampled k-space back, up to the imaginary part
        # that a real image drops (a few %; 100 % for the zero image)
        assert float((op.forward(out) - y).norm() / y.norm()) < 0.2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_on_the_gpu_resume(tmp_path, precision):
    cfg = C.load_config("ct64", TINY + ["train.device=cuda", "train.max_steps=3", "train.meta_every=1",
                                        f"train.precision={precision}", "train.compile=off"])
    first = train(cfg, tmp_path, dataset=RandomImages(), progress=False, stop_after=2)
    assert first["step"] == 2 and all(torch.isfinite(torch.tensor(first["losses"])))
    assert next(first["model"].parameters()).is_cuda
    second = train(cfg, tmp_path, dataset=RandomImages(), progress=False)
    assert second["step"] == 3 and read_checkpoint(tmp_path / "checkpoints-meta" / "checkpoint.pt")["step"] == 3


def test_ddp_with_nccl_on_one_gpu(tmp_path):
    wd = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", "29531",
           str(ROOT / "tests" / "ddp_worker.py"), str(wd), *TINY, "train.max_steps=3", "train.device=cuda",
           "train.precision=bf16", "train.compile=off"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "nccl" in read_checkpoint(wd / "checkpoints-meta" / "checkpoint.pt")["backend"]
    assert (wd / "weights_rank0.pt").exists()
