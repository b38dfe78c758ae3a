"""The outputs of an evaluation that people read: the end-of-run table and the comparison figure."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .imaging import save_figure

MAIN_VARIANT = "full image (psnr, ssim: whole image clipped to [0, 1], data range 1)"
HU_VARIANT = "HU window: [-1000, 1000] HU, data range 2000 HU (psnr_hu, ssim_hu)"


def comparison_figure(arrays: dict, solvers, path, task: str, n_images: int = 4) -> None:
    """Rows: per image a reconstruction row, an |error| row and, when some solver drew K > 1
    posterior samples (`std_<solver>` in the arrays), a posterior-std row; columns: ground truth,
    each solver. Errors are shown from 0 to 0.2 of the image range; stds, which are usually far
    smaller, from 0 to the 99.5th percentile of all stds shown (written in the row's label)."""
    gt = arrays["ground_truth"]
    n = min(n_images, gt.shape[0])
    cols = 1 + len(solvers)
    with_std = [s for s in solvers if f"std_{s}" in arrays]
    per = 3 if with_std else 2
    std_hi = (max(float(np.quantile(np.stack([arrays[f"std_{s}"][:n] for s in with_std]), 0.995)), 1e-4)
              if with_std else 0.0)
    fig = Figure(figsize=(2.0 * cols, 2.05 * per * n))      # no pyplot: no backend is chosen for the caller
    axes = fig.subplots(per * n, cols, squeeze=False)
    for i in range(n):
        ref = gt[i, 0]
        r0 = per * i
        lo, hi = (np.quantile(ref, [0.01, 0.995]) if task in ("ct", "mar") else (0.0, 1.0))
        hi = max(hi, lo + 1e-3)
        axes[r0, 0].imshow(ref, cmap="gray", vmin=lo, vmax=hi)
        axes[r0, 0].set_title(f"ground truth #{int(arrays['index'][i])}", fontsize=8)
        for j, s in enumerate(solvers, 1):
            x = arrays[f"recon_{s}"][i, 0]
            err = np.abs(np.clip(x, 0, 1) - ref)
            mse = float((err ** 2).mean())
            p = 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")
            axes[r0, j].imshow(x, cmap="gray", vmin=lo, vmax=hi)
            axes[r0, j].set_title(f"{s}\n{p:.2f} dB", fontsize=8)
            axes[r0 + 1, j].imshow(err, cmap="magma", vmin=0, vmax=0.2)
            if s in with_std:
                axes[r0 + 2, j].imshow(arrays[f"std_{s}"][i, 0], cmap="magma", vmin=0, vmax=std_hi)
            elif with_std:
                axes[r0 + 2, j].axis("off")
        axes[r0 + 1, 0].text(0.5, 0.5, "|error|\n(0 to 0.2)", ha="center", va="center", fontsize=8)
        if with_std:
            axes[r0 + 2, 0].text(0.5, 0.5, f"posterior std\n(0 to {std_hi:.3g})", ha="center", va="center", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def format_table(summary: list[dict]) -> str:
    """The end-of-run table: solver, the estimate it scores (sample, mean-of-K, ...), PSNR ± std,
    SSIM ± std, s/image, NFE."""
    hu = next((k for k in ("psnr_hu", "psnr_mar_hu") if summary and summary[0].get(f"{k}_mean") is not None), None)
    lines = [f"{'solver':<20} {'estimate':<22} {'PSNR (dB)':>15} {'SSIM':>15} {'s/image':>9} {'NFE':>6}"
             + (f" {'PSNR, HU window':>16}" if hu else "")]
    for r in summary:
        lines.append(f"{r['solver']:<20} {r.get('estimate', ''):<22} {r['psnr_mean']:>7.2f} ± {r['psnr_std']:<5.2f} "
                     f"{r['ssim_mean']:>7.3f} ± {r['ssim_std']:<5.3f} {r['sec_per_image']:>9.2f} {r['nfe']:>6d}"
                     + (f" {r[hu + '_mean']:>8.2f} ± {r[hu + '_std']:<5.2f}" if hu else ""))
    n = summary[0]["n_images"] if summary else 0
    return "\n".join(lines) + (f"\n({n} images, {summary[0]['setting'] if summary else ''}; {MAIN_VARIANT}"
                               + (f"; {HU_VARIANT}" if hu else "") + ")")
