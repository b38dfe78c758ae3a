"""Benchmark of the CT physics against ASTRA and scikit-image (one run, one phantom).

256² Shepp-Logan (scikit-image's, resized), 180 parallel-beam views over [0, π), the
default detector (364 bins of 1 pixel). Reports, as `key: value`:

- setup_ms: one-time build of our sparse system matrix (A and Aᵀ); nnz: its non-zeros.
- fp_ms, fbp_ms: our forward projection and ramp FBP (median of `repeats`, after warm-up),
  with torch's default threads; fp_ms_1thread, fbp_ms_1thread: the same on one thread (ASTRA's
  CPU code is single-threaded; on a loaded machine one thread is also the steadier figure).
- astra_fp_ms, astra_fbp_ms: ASTRA CPU 'strip' projector (the same strip-area model) FP and
  FBP (ram-lak) algorithms, array in to array out, median; astra_line_*: the 'line' projector.
  ratio_vs_astra = (fp_ms + fbp_ms) / (astra_fp_ms + astra_fbp_ms) (strip);
  ratio_vs_astra_line likewise; *_1thread: the same with our one-thread timings. ASTRA setup
  (geometry, projector, algorithm objects) is excluded. Timings are interleaved so that
  machine load affects both alike.
- fp_rel_err_vs_astra (strip), fp_rel_err_vs_astra_line: ‖ours - astra‖ / ‖astra‖ on the
  same geometry (ASTRA's angle and detector conventions coincide with ours).
- fp_rel_err_vs_skimage: against `skimage.transform.radon(circle=False)`, whose rotation
  centre is pixel (N//2, N//2) and detector ⌈√2 N⌉ bins: compared with our operator built on
  that centre and detector.
- fbp_psnr, skimage_fbp_psnr, astra_fbp_psnr: PSNR (data range 1, whole image) of each
  library's ramp FBP of its own sinogram.
- fourier_slice_rel_err(_23): ‖F x - convert(A x)‖ / ‖F x‖ for FourierSliceCT on the 180 views
  (and on the 23-view sparse set of the 256-angle dense set).
If the `astra` module cannot be imported, astra_available is 0 and no ASTRA number is given.
"""
from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch


def _phantom(n: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize
    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)


def _psnr(ref: np.ndarray, x: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(x, np.float64) - ref) ** 2))
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


class _Astra:
    """FP and FBP of one projector type, data objects created once (setup not timed)."""

    def __init__(self, astra, kind: str, img: np.ndarray, angles: np.ndarray, n_det: int):
        self.astra = astra
        n = img.shape[0]
        vg = astra.create_vol_geom(n, n)
        pg = astra.create_proj_geom("parallel", 1.0, n_det, angles)
        self.pid = astra.create_projector(kind, pg, vg)
        self.vol = astra.data2d.create("-vol", vg, 0)
        self.sino = astra.data2d.create("-sino", pg, 0)
        self.rec = astra.data2d.create("-vol", vg, 0)
        cfg = astra.astra_dict("FP")
        cfg.update(ProjectorId=self.pid, ProjectionDataId=self.sino, VolumeDataId=self.vol)
        self.fp_alg = astra.algorithm.create(cfg)
        cfg = astra.astra_dict("FBP")
        cfg.update(ProjectorId=self.pid, ProjectionDataId=self.sino, ReconstructionDataId=self.rec)
        cfg["option"] = {"FilterType": "ram-lak"}
        self.fbp_alg = astra.algorithm.create(cfg)

    def fp(self, img: np.ndarray) -> np.ndarray:
        self.astra.data2d.store(self.vol, img)
        self.astra.algorithm.run(self.fp_alg)
        return self.astra.data2d.get(self.sino)

    def fbp(self, sino: np.ndarray) -> np.ndarray:
        self.astra.data2d.store(self.sino, sino)
        self.astra.algorithm.run(self.fbp_alg)
        return self.astra.data2d.get(self.rec)

    def close(self) -> None:
        self.astra.algorithm.delete([self.fp_alg, self.fbp_alg])
        self.astra.data2d.delete([self.vol, self.sino, self.rec])
        self.astra.projector.delete(self.pid)


def run(n: int = 256, n_views: int = 180, repeats: int = 11) -> dict[str, float]:
    """Run the benchmark once; return {name: value} (see module docstring)."""
    from skimage.transform import iradon, radon

    from ..physics.ct import ParallelBeamCT
    from ..physics.fourier_slice import FourierSliceCT
    from ..physics.geometry import ParallelGeometry, dense_angles, sparse_view_angles
    from ..physics.projector import clear_cache

    out: dict[str, float] = {"n": float(n), "n_views": float(n_views), "torch_threads": float(torch.get_num_threads())}
    img = _phantom(n)
    ang = dense_angles(n_views)
    x = torch.from_numpy(img)[None, None]

    clear_cache()
    geo = ParallelGeometry(n, ang)
    op = ParallelBeamCT(geo)
    out["setup_ms"], _ = _timed(lambda: op._mats.get(x))
    out["nnz"] = float(op.nnz)
    out["n_det"] = float(geo.n_det)
    y = op(x)
    op.fbp(y)

    try:
        import astra
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        astra = None
    out["astra_available"] = 0.0 if astra is None else 1.0
    ast = {k: _Astra(astra, k, img, ang, geo.n_det) for k in ("strip", "line")} if astra else {}
    sino_np = y[0].numpy()
    times: dict[str, list[float]] = {}
    threads = torch.get_num_threads()
    for _ in range(repeats):
        for key, fn in [("fp_ms", lambda: op(x)), ("fbp_ms", lambda: op.fbp(y))] + [
                (f"astra_{k}_fp_ms", (lambda a=a: a.fp(img))) for k, a in ast.items()] + [
                (f"astra_{k}_fbp_ms", (lambda a=a: a.fbp(sino_np))) for k, a in ast.items()]:
            times.setdefault(key, []).append(_timed(fn)[0])
        torch.set_num_threads(1)  # ASTRA's CPU code is single-threaded: also time ours on one thread
        try:
            times.setdefault("fp_ms_1thread", []).append(_timed(lambda: op(x))[0])
            times.setdefault("fbp_ms_1thread", []).append(_timed(lambda: op.fbp(y))[0])
        finally:
            torch.set_num_threads(threads)
    out.update({k: statistics.median(v) for k, v in times.items()})
    rec = op.fbp(y)[0, 0].numpy()
    out["fbp_psnr"] = _psnr(img, rec)

    if ast:
        out["astra_fp_ms"] = out.pop("astra_strip_fp_ms")
        out["astra_fbp_ms"] = out.pop("astra_strip_fbp_ms")
        out["ratio_vs_astra"] = (out["fp_ms"] + out["fbp_ms"]) / (out["astra_fp_ms"] + out["astra_fbp_ms"])
        out["ratio_vs_astra_line"] = (out["fp_ms"] + out["fbp_ms"]) / (out["astra_line_fp_ms"] + out["astra_line_fbp_ms"])
        ours1 = out["fp_ms_1thread"] + out["fbp_ms_1thread"]
        out["ratio_vs_astra_1thread"] = ours1 / (out["astra_fp_ms"] + out["astra_fbp_ms"])
        out["ratio_vs_astra_line_1thread"] = ours1 / (out["astra_line_fp_ms"] + out["astra_line_fbp_ms"])
        s_strip = ast["strip"].fp(img)
        out["fp_rel_err_vs_astra"] = _rel(sino_np, s_strip)
        out["fp_rel_err_vs_astra_line"] = _rel(sino_np, ast["line"].fp(img))
        out["astra_fbp_psnr"] = _psnr(img, ast["strip"].fbp(s_strip))
        for a in ast.values():
            a.close()

    deg = np.degrees(ang)
    t_sk, sk = _timed(lambda: radon(img, deg, circle=False))
    out["skimage_fp_ms"] = t_sk
    op_sk = ParallelBeamCT(ParallelGeometry(n, ang, n_det=sk.shape[0], center=(n // 2, n // 2)))
    out["fp_rel_err_vs_skimage"] = _rel(op_sk(x)[0].numpy().T, sk)
    out["skimage_fbp_psnr"] = _psnr(img, iradon(sk, deg, circle=False, filter_name="ramp", output_size=n))
    del op_sk
    clear_cache()

    xd = x.double()
    for key, angles in (("fourier_slice_rel_err", ang), ("fourier_slice_rel_err_23", sparse_view_angles(n, 23))):
        g = ParallelGeometry(n, angles)
        fop = FourierSliceCT(g)
        yt = fop(xd)
        yc = fop.from_sinogram(ParallelBeamCT(g)(xd))
        out[key] = float(torch.linalg.norm(yc - yt) / torch.linalg.norm(yt))
    clear_cache()
    return out
