"""The out-of-distribution guard (scoreinv.ood): the denoising error against closed forms, its
independence of batching and tiling, the data-consistency statistic against the noise it was
given, the verdict and its warning, and the reference values that travel with a model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from scoreinv import config as C
from scoreinv import ood
from scoreinv.errors import ScoreinvError
from scoreinv.export import export
from scoreinv.physics.masks import make_mask
from scoreinv.physics.mri import CartesianMRI
from scoreinv.score import ScoreModel, build_model, load_score_model, read_checkpoint
from scoreinv.sde import build_sde
from scoreinv.tasks import simulate_mri


class Constant(nn.Module):
    """F(x, log σ) of the 'paper' scaling (score = F / β): `zero` gives D(x_t) = x_t / α (no prior at
    all: D(x + σ z) = x + σ z), `cancel` gives D = 0 for the VE SDE (F = −x_t / σ)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.w = kind, nn.Parameter(torch.zeros(()))

    def forward(self, x, log_sigma):
        return torch.zeros_like(x) if self.kind == "zero" else -x / log_sigma.exp().reshape(-1, 1, 1, 1)


def _images(b=3, h=16, w=12, seed=0):
    return torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sde", ["ve", "vp"])
def test_error_of_a_denoiser_that_removes_nothing_is_the_noise_energy(sde):
    """D(x + σ z) = x + σ z: e(x, σ) = σ² · mean z², the same for every image (the draws are shared)."""
    model = ScoreModel(Constant("zero"), build_sde(sde, 0.01, 30.0), "paper")
    e = ood.denoising_error(model, _images())
    z2 = float((ood.noise_draws((16, 12)) ** 2).mean())
    want = torch.tensor([s ** 2 * z2 for s in ood.SIGMAS], dtype=torch.float64)
    assert e.shape == (3, len(ood.SIGMAS))
    torch.testing.assert_close(e, want.expand(3, -1), rtol=1e-4, atol=0)


def test_error_of_a_denoiser_that_returns_zero_is_the_image_energy():
    model = ScoreModel(Constant("cancel"), build_sde("ve", 0.01, 30.0), "paper")
    x = _images()
    e = ood.denoising_error(model, x)
    want = (x ** 2).flatten(1).mean(1).double()
    torch.testing.assert_close(e, want[:, None].expand(-1, len(ood.SIGMAS)), rtol=1e-5, atol=1e-7)


def _small_cfg(*extra):
    return C.load_config("ct64", ["data.image_size=16", "model.nf=8", "model.ch_mult=[1,2]",
                                  "model.attn_resolutions=[]", *extra])


def test_an_image_scores_the_same_alone_and_in_any_batch():
    torch.manual_seed(0)
    model = build_model(_small_cfg()).eval()
    x = _images(4, 16, 16, seed=1)
    together = ood.denoising_error(model, x, batch=5)
    alone = torch.cat([ood.denoising_error(model, x[i:i + 1], batch=3) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-9)
    ref = ood.reference_values(model, x[:1])
    stat = ood.statistic(model, x, batch=5)
    torch.testing.assert_close(stat, together / ood.smoothing_error(x), rtol=1e-12, atol=0)
    assert float(ood.typicality(stat[:1], ref)[0]) == pytest.approx(1.0, abs=1e-9)   # τ of the reference itself
    assert ref["validation_tau"]["max"] == pytest.approx(1.0, abs=1e-9)


def test_a_patch_prior_is_scored_deterministically_at_any_size():
    torch.manual_seed(0)
    model = build_model(_small_cfg("model.patch_size=8")).eval()
    x = _images(2, 20, 13, seed=2)
    a = ood.denoising_error(model, x)
    model.score(x, torch.tensor([0.5, 0.5]))               # the tiling offsets move on ...
    b = ood.denoising_error(model, x)                      # ... and the statistic restarts them
    assert a.shape == (2, len(ood.SIGMAS)) and bool(torch.isfinite(a).all())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_images_are_refused():
    model = ScoreModel(Constant("zero"), build_sde("ve", 0.01, 30.0), "paper")
    with pytest.raises(ScoreinvError, match=r"expected real images \(B, 1, H, W\)"):
        ood.denoising_error(model, torch.rand(2, 16, 16))
    x = _images()
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ScoreinvError, match="NaN"):
        ood.denoising_error(model, x)
    with pytest.raises(ScoreinvError, match="not an OOD reference"):
        ood.check_reference({"version": 1, "sigmas": [0.1], "mse": [1.0]}, "m.pt")
    with pytest.raises(ScoreinvError, match="must be finite and positive"):
        ood.check_reference({"version": ood.REFERENCE_VERSION, "sigmas": list(ood.SIGMAS),
                             "ratio": [1.0, -1.0]}, "m.pt")


def test_smoothing_error_is_the_best_gaussian_smoother_and_scales_with_the_image():
    flat = torch.full((1, 1, 24, 24), 0.5)
    g = ood.smoothing_error(flat)
    z = ood.noise_draws((24, 24))
    for j, s in enumerate(ood.SIGMAS):                     # a flat image: the widest kernel is best
        widest = ((ood._gaussian_smooth(flat + s * z, max(ood.SMOOTHING_WIDTHS)) - flat) ** 2).mean()
        assert float(g[0, j]) == pytest.approx(float(widest), rel=1e-6) and float(g[0, j]) < s * s / 20
    x = _images(2, 24, 20, seed=3)
    torch.testing.assert_close(ood.smoothing_error(3 * x, [3 * s for s in ood.SIGMAS]), 9 * ood.smoothing_error(x),
                               rtol=1e-5, atol=0)                                     # linear smoother: g(ax, aσ) = a² g
    edges = torch.zeros(1, 1, 24, 24)
    edges[..., ::2, :] = 1.0                                # finest detail: smoothing removes the image with the noise
    assert float(ood.smoothing_error(edges)[0, 0]) > float(ood.smoothing_error(flat)[0, 0]) * 5


def test_data_consistency_against_the_noise_it_was_given():
    """The truth leaves about the noise floor ν = σ √M / ‖y‖; an image that ignores the data leaves 1."""
    x = _images(2, 32, 32, seed=3)
    sim = simulate_mri(x, torch.Generator().manual_seed(4), "random", 2.0, noise=0.05)
    sig = torch.tensor(sim.noise["sigma"], dtype=torch.float64)
    rho = ood.relative_residual(sim.op, x, sim.y)
    nu = ood.noise_floor(sim.op, sim.y, sig)
    assert ood.measured_entries(sim.op, sim.y).tolist() == [float(sim.op.mask.sum())] * 2
    torch.testing.assert_close(rho, nu, rtol=0.1, atol=0)
    ok = ood.verdict(None, {}, float(rho[0]), float(nu[0]))
    assert ok.verdict == "ok" and ok.warning is None
    off = ood.verdict(None, {}, float(ood.relative_residual(sim.op, torch.zeros_like(x), sim.y)[0]), float(nu[0]),
                      "slice 0: ")
    assert off.verdict == "data-inconsistent"
    assert off.warning.startswith("warning: slice 0: the result leaves 1 of the data")
    clean = CartesianMRI(make_mask("random", (32, 32), 2.0, seed=0))
    y = clean.forward(x)
    assert float(ood.noise_floor(clean, y, 0.0).max()) == 0.0
    assert float(ood.relative_residual(clean, x, y).max()) < 1e-6


def test_verdict_names_what_is_off_and_by_how_much():
    per = {"0.05": 1.5, "0.1": 2.5, "0.2": 4.0, "0.5": 3.0}
    r = ood.verdict(2.6, per, 0.5, 0.01)
    assert r.verdict == "out-of-distribution+data-inconsistent"
    assert "2.6x worse" in r.warning and f"threshold {ood.TYPICALITY_THRESHOLD:g}x" in r.warning
    assert "4.0x at σ = 0.2" in r.warning and "leaves 0.5 of the data" in r.warning
    assert r.warning.count("\n") == 0
    quiet = ood.verdict(ood.TYPICALITY_THRESHOLD * 0.9, per, 0.0, 0.0)
    assert quiet.verdict == "ok" and quiet.warning is None
    assert json.loads(json.dumps(r.as_dict()))["thresholds"]["typicality"] == ood.TYPICALITY_THRESHOLD
    line = ood.summary_line([quiet, ood.verdict(3.0, per, 0.0, 0.0, "slice 4: "), r])
    assert line.startswith("warning: 2 of 3 slice(s) look out of distribution") and "\n" not in line
    assert "worst slice 4: the prior denoises it 3.0x worse" in line
    assert ood.summary_line([quiet]).startswith(
        f"out-of-distribution check: ok (typicality τ max {ood.TYPICALITY_THRESHOLD * 0.9:.2f} <= ")


def test_a_model_whose_validation_images_spread_wider_gets_a_higher_threshold():
    """τ is judged against the model's own validation spread: the global threshold for a tight
    reference, THRESHOLD_MARGIN times the largest validation τ for a wide one (ct256's head and chest
    slabs), and the record, the warning and the summary line all carry the threshold used."""
    tight = {"validation_tau": {"median": 1.0, "max": 1.1}}
    wide = {"validation_tau": {"median": 0.82, "max": 1.3}}
    assert ood.typicality_threshold(None) == ood.typicality_threshold(tight) == ood.TYPICALITY_THRESHOLD
    limit = ood.typicality_threshold(wide)
    assert limit == pytest.approx(ood.THRESHOLD_MARGIN * 1.3) and limit > ood.TYPICALITY_THRESHOLD
    tau = (ood.TYPICALITY_THRESHOLD + limit) / 2          # flagged by the global threshold, not by the model's
    assert ood.verdict(tau, {}, 0.0, 0.0).verdict == "out-of-distribution"
    quiet = ood.verdict(tau, {}, 0.0, 0.0, threshold=limit)
    assert quiet.verdict == "ok" and quiet.thresholds["typicality"] == limit
    assert f"<= {limit:.3g}" in ood.summary_line([quiet])
    loud = ood.verdict(limit * 1.1, {}, 0.0, 0.0, threshold=limit)
    assert loud.verdict == "out-of-distribution" and f"threshold {limit:.3g}x" in loud.warning


def test_export_stores_the_reference_of_the_shipped_weights(tiny_checkpoint, tmp_path):
    path = export(tiny_checkpoint, "tiny", dest=str(tmp_path), ood_images=4)
    rec = read_checkpoint(path)["ood_reference"]
    ood.check_reference(rec, str(path))
    model, cfg = load_score_model(str(path))
    images, _ = ood.validation_images(cfg, 4)
    again = ood.reference_values(model, images)
    assert rec["images"] == 4 and rec["dataset"] == cfg.data.dataset and rec["split"] == "val"
    torch.testing.assert_close(torch.tensor(rec["mse"]), torch.tensor(again["mse"]), rtol=1e-6, atol=0)
    assert ood.model_reference(str(path)) == rec                          # read from the model, not recomputed
    assert ood.compute_reference(str(path), n=4)["mse"] == again["mse"]
    plain = export(tiny_checkpoint, "plain", dest=str(tmp_path), ood_images=0)
    assert read_checkpoint(plain)["ood_reference"] is None
    with pytest.raises(ScoreinvError, match="--ood-images"):
        export(tiny_checkpoint, "neg", dest=str(tmp_path), ood_images=-1)


def test_a_model_without_a_reference_gets_one_computed_once(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREINV_DATA", str(tmp_path / "cache"))
    said = []
    first = ood.model_reference(tiny_checkpoint, n=4, log=said.append)
    files = list((tmp_path / "cache" / "ood-references").glob("*.json"))
    assert len(files) == 1 and first["images"] == 4
    assert len(said) == 1 and "computing them once from 4 validation images" in said[0]   # the user is told

    def fail(*a, **k):
        raise AssertionError("recomputed")
    monkeypatch.setattr(ood, "reference_values", fail)
    assert ood.model_reference(tiny_checkpoint, n=4, log=said.append) == first and len(said) == 1
    files[0].write_text("{damaged")
    assert ood.model_reference(tiny_checkpoint, compute=False) is None


def test_check_gives_one_record_per_slice(tiny_checkpoint):
    model, _ = load_score_model(tiny_checkpoint)
    x = _images(2, 16, 16, seed=5)
    op = CartesianMRI(make_mask("random", (16, 16), 2.0, seed=0))
    y = op.forward(x)
    ref = ood.reference_values(model, _images(3, 16, 16, seed=6))
    recs = ood.check(model, op, y, x, ref, 0.0, labels=["slice 0: ", "slice 1: "])
    assert len(recs) == 2 and all(r.residual < 1e-6 for r in recs)
    assert all(set(r.typicality_per_sigma) == {f"{s:g}" for s in ood.SIGMAS} for r in recs)
    json.dumps([r.as_dict() for r in recs])
    blind = ood.check(model, op, y, torch.zeros_like(x), None, 0.0)
    assert blind[0].typicality is None and blind[0].verdict == "data-inconsistent"


# --- the guard in eval and reconstruct output -----------------------------------------------------
def test_eval_records_the_guard_per_image_and_flags_what_the_reference_says(tiny_checkpoint, tmp_path):
    import csv
    from scoreinv import evaluate as E
    from scoreinv.data.registry import build_dataset
    from scoreinv.tasks import task_options
    model, _ = load_score_model(tiny_checkpoint)
    opts = task_options("ct", views=6, upsample=1)
    ds = build_dataset("phantoms", "test", 16)
    methods = E.resolve_methods("fbp,dds", "ct", steps=2)
    ref = ood.reference_values(model, torch.stack([ds[i] for i in range(4)]))
    strict = dict(ref, ratio=[v * 1e-3 for v in ref["ratio"]])  # a prior that denoises its own data 1000x better
    lines = []
    runs = {}
    for name, r in (("strict", strict), ("own", ref), ("none", None)):
        summary = E.evaluate(tmp_path / name, opts, ds, methods, 3, data_id="phantoms", split="test", model=model,
                             batch_size=2, log=lines.append, ood_reference=r)
        rows = list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
        runs[name] = ({s["solver"]: s for s in summary}, rows)
    rec, rows = runs["strict"]
    assert rec["dds"]["ood_check"]["n_flagged"] == 3 and rec["dds"]["ood_check"]["flagged"] == [0, 1, 2]
    assert "ood_check" not in rec["fbp"]
    assert [r["ood_verdict"] for r in rows if r["solver"] == "dds"] == ["out-of-distribution"] * 3
    assert [r["ood_verdict"] for r in rows if r["solver"] == "fbp"] == [""] * 3
    assert any(line.startswith("[dds] warning: 3 of 3 image(s)") for line in lines)
    tau_strict = [float(r["ood_tau"]) for r in rows if r["solver"] == "dds"]
    tau_own = [float(r["ood_tau"]) for r in runs["own"][1] if r["solver"] == "dds"]
    np.testing.assert_allclose(tau_strict, [1e3 * t for t in tau_own], rtol=1e-3)   # τ scales with 1 / reference
    rec, rows = runs["none"]
    assert rec["dds"]["ood_check"]["typicality_max"] is None
    assert [r["ood_tau"] for r in rows if r["solver"] == "dds"] == [""] * 3


def test_reconstruct_prints_the_guard_and_reports_each_slice(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from scoreinv.cli import main
    monkeypatch.setenv("SCOREINV_DATA", str(tmp_path / "cache"))           # the reference is computed here once
    yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    np.save(tmp_path / "img.npy", np.stack([(xx ** 2 + yy ** 2 < 0.5) * 0.6, (xx ** 2 / 0.4 + yy ** 2 < 0.6) * 0.4])
            .astype(np.float32))
    assert main(["simulate", "--task", "ct", "--views", "8", "--upsample", "1", "--size", "16", "--input",
                 str(tmp_path / "img.npy"), "--out", str(tmp_path / "m.npz")]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "--checkpoint", tiny_checkpoint, "--measurements", str(tmp_path / "m.npz"), "--out",
                 str(tmp_path / "r.npy"), "--solver", "projection", "--steps", "2", "--no-progress", "--report",
                 str(tmp_path / "rep.json")]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "rep.json").read_text())
    slices = rep["ood_check"]["slices"]
    assert len(slices) == 2 and all(s["typicality"] is not None for s in slices)
    assert rep["ood_check"]["summary"] in out
    assert "carries no reference values of version" in out                   # computing it was announced
    assert [s["residual"] for s in slices] == pytest.approx(rep["residual"])
    cached = list((tmp_path / "cache" / "ood-references").glob("*.json"))
    assert len(cached) == 1                                                   # the tiny model had none stored
    x = torch.from_numpy(np.load(tmp_path / "r.npy")).float().reshape(2, 1, 16, 16)
    model, _ = load_score_model(tiny_checkpoint)
    tau = ood.typicality(ood.statistic(model, x), json.loads(cached[0].read_text()))
    assert [s["typicality"] for s in slices] == pytest.approx(tau.tolist(), rel=1e-4)


def test_a_reference_of_an_older_statistic_is_recomputed_not_trusted(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREINV_DATA", str(tmp_path / "cache"))
    path = export(tiny_checkpoint, "tiny", dest=str(tmp_path), ood_images=4)
    ck = torch.load(path, weights_only=False)
    stale = dict(ck["ood_reference"], version=1, sigmas=[0.2, 0.5], mse=[1e-3, 1e-2])
    stale.pop("ratio")
    torch.save(dict(ck, ood_reference=stale), path)
    rec = ood.model_reference(str(path), n=4)
    assert rec["version"] == ood.REFERENCE_VERSION and rec["sigmas"] == list(ood.SIGMAS)
    assert len(list((tmp_path / "cache" / "ood-references").glob("*.json"))) == 1
