"""Time and memory of a whole volume (`scoreinv bench volume`; issue 14, item 5).

One CT volume of S slices (default 61) of N x N pixels (default: the model's size, 256 for ct256) is
reconstructed with a checkpoint (default ct256) and a solver (default diffpir) at its preset's NFE (or
`steps` noise levels), once per coupling (default none and ztv), by `reconstruct.plan` and
`reconstruct.run`, the machinery of `scoreinv reconstruct` (the noise record, the warm start, the network
--batch-size images at a time, the z-TV coupled data-consistency step of docs/design.md §9.1-9.2).

Data (`data`): `lung2`, the test volume of ct-real (61 axial slices 5 mm apart, resized to N x N; a
centred slab of S slices when S < 61), or `phantom3d` (`data.phantom3d.phantom_volume`, seed 0,
isotropic voxels); `auto` (default) takes lung2 when ct-real is fetched and S <= 61, else phantom3d, and
the `data:` line of the output says which and why. The volume is simulated at `views` views (default 23)
without the inverse crime (`tasks.simulate_ct` on the 4x finer grid, as eval), noise-free (the setting
of the ct256 preset), into a temporary measurement file without slice positions (coupled in file order).

Measured per coupling:
- seconds: `reconstruct.Result.seconds`, the solve (every network evaluation and data-consistency step,
  the warm start's classical image), not loading the model or writing; in total and per slice;
- peak resident memory: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of a fresh Python process
  (multiprocessing "spawn") that does only that one reconstruction (imports, model, measurement file,
  solve), i.e. the memory `scoreinv reconstruct` of that volume needs; `setup_rss_mib` is the same
  process's peak before the solve (imports, model, data), so peak − setup is the solve's own; on CUDA
  also `torch.cuda.max_memory_allocated` of the solve. `in_process=True` runs everything in this process
  instead (faster, for tests): ru_maxrss is then this process's peak so far, earlier work included and
  never lowered, so the output says `memory: this process` and only the first coupling's peak is its own.
Also reported: NFE per slice, the λ_z of the coupling, PSNR of the mean (the volume's axial slices) and
the z-gradient RMSE (D30) against the ground truth, as a check that the run reconstructed something.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import sys
import tempfile
from pathlib import Path

import torch

from ..data.base import check_image_size
from ..data.fetch import check_dataset
from ..data.phantom3d import phantom_volume
from ..data.realdata import RealDataset
from ..errors import ScoreinvError, check_choice, check_int
from ..physics.measurements import save_measurements
from ..reconstruct import plan, run as run_plan
from ..sampling.settings import COUPLINGS, SOLVERS
from ..score import check_model_size, load_score_model
from ..tasks import ct_geometry, simulate_ct, task_options

DATA = ("auto", "lung2", "phantom3d")
LUNG2 = ("ct-real", "test", 61)            # dataset, split, slices: the test split of ct-real is lung2, 0-60


def peak_rss_mib() -> float:
    """ru_maxrss of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 2 ** 10


def load_volume(data: str, slices: int, size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(x (S, 1, N, N) float32 in [0, 1], a line saying what it is) for `data` (module docstring)."""
    check_choice("--data", data, DATA)
    name, split, total = LUNG2
    why = ""
    if data == "auto":
        try:
            check_dataset(name)
            data = "lung2" if slices <= total else "phantom3d"
            why = "" if data == "lung2" else f" (lung2 has {total} slices, {slices} asked)"
        except ScoreinvError:
            data, why = "phantom3d", f" ({name} is not fetched: `scoreinv data fetch {name}` for lung2)"
    if data == "phantom3d":
        return (phantom_volume(slices, size, seed),
                f"phantom3d seed {seed}, {slices} slices of {size}x{size}, isotropic voxels{why}")
    if slices > total:
        raise ScoreinvError(f"--slices {slices}: lung2 has {total} slices; ask for fewer, or --data phantom3d")
    ds = RealDataset(name, split, size)
    if len(ds) != total:
        raise ScoreinvError(f"{name} {split}: expected the {total} slices of lung2, found {len(ds)}")
    a = (total - slices) // 2
    scan = ds.scans[ds.index[0][0]]
    what = (f"lung2 (ct-real test volume), slices {a}-{a + slices - 1} of {total}, {scan.slice_mm:g} mm apart, "
            f"{size}x{size} ({ds.pixel_mm[0]:.4g} mm pixels)")
    return ds.images[a:a + slices].clone(), what


def measure(meas: str, out: str, checkpoint: str, solver: str, steps: int | None, coupling: str, batch_size: int,
            device: str, threads: int) -> dict:
    """Reconstruct the measurement file `meas` into `out` with one coupling; the numbers of the module
    docstring. Runs in the process that measures (a fresh one unless in_process)."""
    torch.set_num_threads(threads)
    p = plan(checkpoint, meas, out, solver=solver, steps=steps, batch_size=batch_size, device=device,
             coupling=coupling)
    setup = peak_rss_mib()
    cuda = p.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(p.device)
    r = run_plan(p, progress=sys.stderr.isatty())
    res = {"device": str(p.device), "seconds": r.seconds, "seconds_per_slice": r.seconds / len(p.meas), "nfe_per_slice": r.nfe,
           "peak_rss_mib": peak_rss_mib(), "setup_rss_mib": setup}
    if cuda:
        res["cuda_peak_mib"] = torch.cuda.max_memory_allocated(p.device) / 2 ** 20
    if coupling != "none":
        res["lambda_z"] = p.cfg.ztv_lambda
    if "psnr" in r.metrics:
        res["psnr"] = float(r.metrics["psnr"].mean())
    if r.volume:
        res["zgrad_rmse"] = r.volume["zgrad_rmse"]
    return res


def _in_fresh_process(*args) -> dict:
    """`measure(*args)` in a new Python process (spawn), so that its ru_maxrss is that run's alone."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(measure, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            raise ScoreinvError("bench volume: the reconstruction process died (out of memory?); try fewer "
                                "--slices, a smaller --batch-size or --image-size") from None


def run(checkpoint: str = "ct256", solver: str = "diffpir", steps: int | None = None, slices: int = 61,
        image_size: int | None = None, views: int = 23, batch_size: int = 8, couplings=COUPLINGS,
        data: str = "auto", device: str = "auto", in_process: bool = False, seed: int = 0) -> dict:
    """The benchmark of the module docstring -> {key: value} for `bench.emit`."""
    check_choice("--solver", solver, SOLVERS)
    if steps is not None:
        check_int("--steps", steps)
    slices = check_int("--slices", slices, 2 if "ztv" in couplings else 1)
    views = check_int("--views", views)
    batch_size = check_int("--batch-size", batch_size)
    couplings = tuple(couplings)
    if not couplings or len(set(couplings)) != len(couplings):
        raise ScoreinvError(f"--couplings {','.join(couplings)}: expected distinct values among {', '.join(COUPLINGS)}")
    for c in couplings:
        check_choice("--couplings", c, COUPLINGS)
    check_choice("--data", data, DATA)
    check_choice("--device", device, ("auto", "cpu", "cuda"))
    _, cfg = load_score_model(checkpoint)           # a bad checkpoint fails here, before any simulation
    size = int(cfg.data.image_size) if image_size is None else check_image_size(image_size, "--image-size")
    check_model_size(cfg, size, what=f"--image-size {size} for checkpoint {checkpoint!r}")
    opts = task_options("ct", views=views)
    if views > size:
        raise ScoreinvError(f"--views {views}: at most the {size} dense angles of {size}x{size} images")
    x, what = load_volume(data, slices, size, seed)
    threads = torch.get_num_threads()
    out = {"data": what, "checkpoint": checkpoint, "solver": solver, "slices": slices, "image_size": size,
           "views": views, "batch_size": batch_size, "device": device, "threads": threads,
           "memory": "this process (earlier work included)" if in_process else
           "ru_maxrss of a fresh process per coupling"}
    with tempfile.TemporaryDirectory(prefix="scoreinv-bench-volume-") as tmp:
        meas = str(Path(tmp) / "volume.npz")
        sim = simulate_ct(x, torch.Generator().manual_seed(seed), ct_geometry(size, opts.views), opts.upsample)
        save_measurements(meas, "ct", sim.op, sim.y, sim.noise, ground_truth=x)
        del sim
        for c in couplings:
            args = (meas, str(Path(tmp) / f"{c}.npy"), checkpoint, solver, steps, c, batch_size, device, threads)
            res = measure(*args) if in_process else _in_fresh_process(*args)
            out["device"], out["nfe_per_slice"] = res.pop("device"), res.pop("nfe_per_slice")
            out.update({f"{c}_{k}": v for k, v in res.items()})
    return out
