"""k-space sampling masks for MRI (docs/design.md §3.2), all (H, W) bool with DC at (H//2, W//2).

- `equispaced_mask`: the reference implementation's column mask: a centre band of
  round(W · n_keep / 1000) columns plus equispaced columns at an adjusted step, about n_keep
  columns in all (240 columns: n_keep 10 -> 10, 30 -> 31, 60 -> 60).
- `random_mask`: fastMRI-style random columns: a fully sampled centre band of
  round(W · center_fraction) columns (fastMRI's pairs by default: 0.08 at 4x, 0.04 at 8x, i.e.
  center_fraction = 0.32 / R, `fastmri_center_fraction`) plus columns drawn uniformly without
  replacement from the others, so that exactly round(W / R) columns are sampled.
- `variable_density_mask`: 2-D random points drawn without replacement from a Gaussian
  density centred on DC plus a fully sampled calibration square; exactly round(H·W/R) points.
- `radial_mask`: equally spaced radial spokes (lines through DC) rasterised on the grid,
  as many spokes as needed to reach the requested acceleration.

Every mask must sample the k-space centre, DC at (H//2, W//2) (`check_centre`): without it the
image's mean and its coarsest shape are not measured and a reconstruction must invent them. The
random and variable-density rules always keep a centre (they refuse a centre fraction that
rounds to nothing); the reference's equispaced rule keeps no centre band when W · n_keep < 500
(e.g. 64 columns above 8x, 16 columns at 4x), and `make_mask(..., require_centre=True)`, what the
commands ask for, refuses it then.

Written here rather than taken from a library: fastMRI / sigpy are heavy dependencies for a
few lines each, and the reference's equispaced rule is specific to that paper.
"""
from __future__ import annotations

import math

import torch

from ..errors import ScoreinvError, check_choice, check_range

MASK_KINDS = ("equispaced", "random", "variable_density", "radial")


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ScoreinvError(f"mask shape: expected (H, W), got {shape!r}") from None
    if h < 2 or w < 2:
        raise ScoreinvError(f"mask shape: expected H, W >= 2, got {(h, w)}")
    return h, w


def check_centre(mask: torch.Tensor, what: str = "mask", hint: str = "") -> torch.Tensor:
    """Raise unless the (H, W) mask samples the k-space centre, DC at (H//2, W//2); return it.
    `hint`: what to change, appended to the message."""
    h, w = mask.shape[-2:]
    if not bool(mask[..., h // 2, w // 2].all()):
        cols = int(mask.reshape(-1, w).any(0).sum())
        raise ScoreinvError(f"{what}: samples no k-space centre line (DC, column {w // 2} of {w}, is not measured; "
                            f"{cols} column(s) sampled in all), so the image's mean and coarse shape are unknown; "
                            f"expected a mask through the centre{hint}")
    return mask


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def equispaced_mask(shape, n_keep: int) -> torch.Tensor:
    """The reference's Cartesian column mask: (H, W) bool, about `n_keep` columns sampled.

    Centre band of c = round(W · n_keep/1000) columns starting at (W − c + 1)//2; other columns at
    positions round(offset + k·a) with a = R (c − W) / (c R − W), R = W / n_keep, offset =
    round(a)//2, for offset + k·a < W − 1.
    """
    h, w = _check_shape(shape)
    n_keep = int(n_keep)
    if not 1 <= n_keep <= w:
        raise ScoreinvError(f"equispaced mask: n_keep = {n_keep} must be in [1, {w}] (the number of columns)")
    mask = torch.zeros(w, dtype=torch.bool)
    accel = w / n_keep
    n_low = int(round(w * n_keep / 1000))
    pad = (w - n_low + 1) // 2
    mask[pad:pad + n_low] = True
    if n_low * accel == w:  # the centre band alone already gives the requested count
        return mask.reshape(1, w).expand(h, w).clone()
    step = accel * (n_low - w) / (n_low * accel - w)
    if step <= 0:
        mask[:] = True
    else:
        offset = round(step) // 2
        pos = torch.arange(offset, w - 1, step, dtype=torch.float64)
        # numpy-style round half to even, as the reference (np.around)
        mask[torch.round(pos).long().clamp_(0, w - 1)] = True
    return mask.reshape(1, w).expand(h, w).clone()


FASTMRI_CENTER_PRODUCT = 0.32   # fastMRI's (center fraction, acceleration) pairs (0.08, 4) and (0.04, 8)


def fastmri_center_fraction(acceleration: float) -> float:
    """The fastMRI convention's fully sampled centre fraction for acceleration R: 0.08 at 4x, 0.04 at
    8x, and 0.32 / R (the product both pairs share) at any other R."""
    return FASTMRI_CENTER_PRODUCT / check_range("acceleration", acceleration, 1.0, None)


def random_mask(shape, acceleration: float, center_fraction: float | None = None, seed: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """fastMRI-style random column mask, (H, W) bool, exactly round(W / R) columns sampled.

    n_c = round(W · center_fraction) centre columns, starting at (W − n_c + 1)//2 (fastMRI's
    placement; DC, column W//2, is among them), are always kept (center_fraction default
    `fastmri_center_fraction(R)`); the other round(W / R) − n_c columns are drawn uniformly without
    replacement from the remaining W − n_c. Raises if the centre band is empty (nothing to
    calibrate on) or alone exceeds W / R columns.
    """
    h, w = _check_shape(shape)
    r = check_range("acceleration", acceleration, 1.0, None)
    cf = check_range("center_fraction", fastmri_center_fraction(r) if center_fraction is None else center_fraction,
                     0.0, 1.0)
    n_total = max(1, int(round(w / r)))
    n_low = int(round(w * cf))
    if n_low < 1:
        raise ScoreinvError(f"random mask: center_fraction {cf:g} of {w} columns leaves no fully sampled centre "
                            f"column (round({w} x {cf:g}) = 0); raise center_fraction or lower the acceleration "
                            f"(R = {r:g})")
    if n_low > n_total:
        raise ScoreinvError(f"random mask: the centre band ({n_low} columns, center_fraction {cf:g}) alone "
                            f"exceeds W/R = {w / r:.1f} columns; lower center_fraction or acceleration")
    g = _generator(seed, generator)
    cols = torch.zeros(w, dtype=torch.bool)
    pad = (w - n_low + 1) // 2
    cols[pad:pad + n_low] = True
    rest = (~cols).nonzero().flatten()
    pick = torch.randperm(rest.numel(), generator=g, device=g.device).cpu()[:n_total - n_low]
    cols[rest[pick]] = True
    return cols.reshape(1, w).expand(h, w).clone()


def variable_density_mask(shape, acceleration: float, center_fraction: float = 0.04, sigma: float = 0.3,
                          seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """2-D variable-density random mask, (H, W) bool, exactly round(H·W/R) points.

    A centred calibration square of side round(center_fraction · min(H, W)) is fully sampled;
    the rest is drawn without replacement with probability ∝ exp(−(kx² + ky²) / (2 sigma²)),
    kx, ky normalised to [−1/2, 1/2).
    """
    h, w = _check_shape(shape)
    r = check_range("acceleration", acceleration, 1.0, None)
    check_range("center_fraction", center_fraction, 0.0, 1.0)
    sigma = check_range("sigma", sigma, 1e-3, None)
    n_total = max(1, int(round(h * w / r)))
    side = int(round(center_fraction * min(h, w)))
    if side < 1:
        raise ScoreinvError(f"variable-density mask: center_fraction {center_fraction:g} of {min(h, w)} leaves no "
                            f"calibration square (round({min(h, w)} x {center_fraction:g}) = 0); expected a "
                            f"center_fraction of at least {0.5 / min(h, w):.3g}")
    mask = torch.zeros(h, w, dtype=torch.bool)
    y0, x0 = h // 2 - side // 2, w // 2 - side // 2
    mask[y0:y0 + side, x0:x0 + side] = True
    n_rest = n_total - int(mask.sum())
    if n_rest < 0:
        raise ScoreinvError(f"variable-density mask: the calibration square ({side}x{side}) alone exceeds "
                            f"H·W/R = {n_total} points; lower center_fraction or acceleration")
    if n_rest > 0:
        ky = (torch.arange(h, dtype=torch.float64) - h // 2) / h
        kx = (torch.arange(w, dtype=torch.float64) - w // 2) / w
        dens = torch.exp(-(ky[:, None] ** 2 + kx[None, :] ** 2) / (2 * sigma ** 2))
        dens[mask] = 0
        g = _generator(seed, generator)
        idx = torch.multinomial(dens.flatten().to(g.device), n_rest, replacement=False, generator=g).cpu()
        mask.view(-1)[idx] = True
    return mask


def _radial(h: int, w: int, n_spokes: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    rmax = math.hypot(h, w) / 2
    t = torch.arange(-rmax, rmax + 0.25, 0.25, dtype=torch.float64)
    for k in range(n_spokes):
        th = math.pi * k / n_spokes
        yy = torch.round(h // 2 + t * math.sin(th)).long()
        xx = torch.round(w // 2 + t * math.cos(th)).long()
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        mask[yy[ok], xx[ok]] = True
    return mask


def radial_mask(shape, acceleration: float | None = None, n_spokes: int | None = None) -> torch.Tensor:
    """Radial spokes through DC at angles πk/n (k < n), nearest-grid rasterised; (H, W) bool.

    Give either `n_spokes` or `acceleration` (then the fewest spokes whose sampled fraction
    reaches 1/R are used).
    """
    h, w = _check_shape(shape)
    if n_spokes is not None:
        if int(n_spokes) < 1:
            raise ScoreinvError(f"radial mask: n_spokes = {n_spokes} must be >= 1")
        return _radial(h, w, int(n_spokes))
    if acceleration is None:
        raise ScoreinvError("radial mask: give acceleration or n_spokes")
    r = check_range("acceleration", acceleration, 1.0, None)
    target = h * w / r
    lo, hi = 1, 4 * max(h, w)
    while lo < hi:  # smallest spoke count reaching the target (coverage grows with spokes)
        mid = (lo + hi) // 2
        if int(_radial(h, w, mid).sum()) >= target:
            hi = mid
        else:
            lo = mid + 1
    return _radial(h, w, lo)


def make_mask(kind: str, shape, acceleration: float, center_fraction: float | None = None,
              seed: int | None = None, generator: torch.Generator | None = None,
              require_centre: bool = False) -> torch.Tensor:
    """Build a (H, W) bool k-space mask of `kind` in MASK_KINDS at acceleration R.

    require_centre: refuse a mask that does not sample DC (`check_centre`; module docstring), for
    the commands; off by default so that the reference's rule can be reproduced at any size.

    equispaced: the reference's mask with n_keep = round(W / R) (R = 24, 8, 4 at W = 240 give
    10, 31, 60 columns; R = 8, 4 at W = 256 give 32, 64 with centre bands of 8, 16); random:
    fastMRI columns, exactly round(W / R) (center_fraction default 0.32 / R: 0.08 at 4x, 0.04 at 8x);
    variable_density: 2-D Gaussian density (center_fraction default 0.04); radial: spokes.
    """
    check_choice("mask kind", kind, MASK_KINDS)
    h, w = _check_shape(shape)
    r = check_range("acceleration", acceleration, 1.0, None)
    most = w if kind in ("equispaced", "random") else h * w
    if r > most:
        raise ScoreinvError(f"acceleration = {acceleration:g} is more than the {most} "
                            f"{'columns' if most == w else 'points'} of a {h}x{w} k-space; expected 1 to {most}")
    if kind == "equispaced":
        m = equispaced_mask((h, w), max(1, int(round(w / r))))
    elif kind == "random":
        m = random_mask((h, w), r, center_fraction, seed, generator)
    elif kind == "variable_density":
        m = variable_density_mask((h, w), r, 0.04 if center_fraction is None else center_fraction,
                                  seed=seed, generator=generator)
    else:
        m = radial_mask((h, w), acceleration=r)
    if require_centre:
        n_keep = max(1, int(round(w / r)))
        check_centre(m, f"{kind} mask at acceleration {acceleration:g} on {w} columns",
                     f" (the reference's equispaced rule keeps round({w} x {n_keep} / 1000) = "
                     f"{int(round(w * n_keep / 1000))} centre columns here): a random mask, a lower acceleration or "
                     "more columns" if kind == "equispaced" else "")
    return m
