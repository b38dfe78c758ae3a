"""Metal implants, metal segmentation and the linear-interpolation (LI) sinogram inpainting.

- `implant_mask`: one binary implant on the pixel grid (docs/design.md §3.3; the reference's mask
  set is not available, so shapes are generated): a `disc`, a `rod` (rotated rectangle) or a
  `screw` (rotated shaft with a triangular thread and a wider head), sizes in cm.
- `random_implants`: one or several random implants placed inside the body, seeded.
- `segment_metal`: threshold an image (in the [0, 1] scale) above `threshold_hu` (3300 HU as
  the reference) and dilate by a `smear` x `smear` square.
- `linear_interpolation`: in every view, replace the sinogram entries on the metal trace by
  linear interpolation between the nearest entries off the trace (np.interp semantics: constant
  continuation at the ends). Vectorised in torch (no per-view Python loop).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ScoreinvError, check_choice, check_finite
from .mar_spectra import unit_to_hu

IMPLANT_KINDS = ("screw", "rod", "disc")


def _grid(shape, pixel_cm: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = shape
    yy = (torch.arange(h, dtype=torch.float64, device=device) - (h - 1) / 2) * pixel_cm
    xx = (torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2) * pixel_cm
    return torch.meshgrid(yy, xx, indexing="ij")


def implant_mask(kind: str, shape, center_cm: tuple[float, float], pixel_cm: float, angle: float = 0.0,
                 length_cm: float = 3.0, width_cm: float = 0.4) -> torch.Tensor:
    """One implant as an (H, W) bool mask; `center_cm` = (y, x) from the image centre in cm.

    disc: radius width_cm / 2 (length ignored); rod: length x width rectangle at `angle`
    (radians); screw: shaft length x width with a triangular thread of pitch 0.15 cm and depth
    0.06 cm, plus a head 1.8 x wider and 0.3 cm long at one end.
    """
    check_choice("implant kind", kind, IMPLANT_KINDS)
    if pixel_cm <= 0 or length_cm <= 0 or width_cm <= 0:
        raise ScoreinvError("implant: pixel_cm, length_cm and width_cm must be > 0")
    yy, xx = _grid(shape, pixel_cm)
    dy, dx = yy - center_cm[0], xx - center_cm[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)  # along the implant
    v = -dx * math.sin(angle) + dy * math.cos(angle)  # across
    half_w = width_cm / 2
    if kind == "disc":
        return dx ** 2 + dy ** 2 <= half_w ** 2
    if kind == "rod":
        return (u.abs() <= length_cm / 2) & (v.abs() <= half_w)
    pitch, depth = 0.15, 0.06
    tri = 2 * ((u / pitch) % 1.0 - 0.5).abs()  # triangle wave in [0, 1]
    shaft = (u.abs() <= length_cm / 2) & (v.abs() <= half_w - depth + depth * tri)
    head = (u >= length_cm / 2) & (u <= length_cm / 2 + 0.3) & (v.abs() <= 1.8 * half_w)
    return shaft | head


def random_implants(body: torch.Tensor, pixel_cm: float, n: int | None = None,
                    kinds=IMPLANT_KINDS, generator: torch.Generator | None = None) -> torch.Tensor:
    """Place `n` (default: 1 to 3, random) implants of random kinds inside `body`, (H, W) bool.

    Sizes: screws 1.5-3.5 cm x 0.3-0.5 cm, rods 2-4 cm x 0.2-0.5 cm, discs 0.3-1.0 cm across,
    each scaled down to fit a field of view smaller than 15 cm. Centres are drawn among body
    pixels at least 10 % of the field of view from the border.
    """
    if body.ndim != 2 or body.dtype != torch.bool:
        raise ScoreinvError(f"body: expected an (H, W) bool mask, got {body.dtype} shape {tuple(body.shape)}")
    kinds = tuple(kinds)
    for k in kinds:
        check_choice("implant kind", k, IMPLANT_KINDS)
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def uni(a, b):
        return a + (b - a) * float(torch.rand((), generator=g))

    h, w = body.shape
    if n is None:
        n = int(torch.randint(1, 4, (), generator=g))
    if n < 1:
        raise ScoreinvError(f"number of implants = {n} must be >= 1")
    margin_y, margin_x = max(1, h // 10), max(1, w // 10)
    inner = torch.zeros_like(body)
    inner[margin_y:h - margin_y, margin_x:w - margin_x] = True
    cand = (body & inner).nonzero()
    if cand.shape[0] == 0:
        cand = inner.nonzero()  # no body found (e.g. a blank image): anywhere away from the border
    scale = min(1.0, min(h, w) * pixel_cm / 15.0)
    out = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(n):
        kind = kinds[int(torch.randint(len(kinds), (), generator=g))]
        iy, ix = cand[int(torch.randint(cand.shape[0], (), generator=g))].tolist()
        center = ((iy - (h - 1) / 2) * pixel_cm, (ix - (w - 1) / 2) * pixel_cm)
        angle = uni(0.0, math.pi)
        if kind == "screw":
            length, width = uni(1.5, 3.5), uni(0.3, 0.5)
        elif kind == "rod":
            length, width = uni(2.0, 4.0), uni(0.2, 0.5)
        else:
            length, width = 1.0, uni(0.3, 1.0)
        m = implant_mask(kind, (h, w), center, pixel_cm, angle, length * scale, max(width * scale, 1.5 * pixel_cm))
        out |= m
    if not bool(out.any()):  # an implant narrower than a pixel: at least the centre pixel
        out[cand[0, 0], cand[0, 1]] = True
    return out


def segment_metal(image: torch.Tensor, threshold_hu: float = 3300.0, smear: int = 3) -> torch.Tensor:
    """Metal segmentation of images in the [0, 1] scale: HU > threshold, dilated.

    image: (B, 1, H, W) -> bool (B, 1, H, W).
    """
    check_finite("image", image)
    if image.ndim != 4:
        raise ScoreinvError(f"image: expected (B, 1, H, W), got shape {tuple(image.shape)}")
    if smear < 1 or smear % 2 == 0:
        raise ScoreinvError(f"smear = {smear} must be a positive odd integer")
    metal = (unit_to_hu(image) > threshold_hu).to(image.dtype)
    if smear > 1:
        metal = F.max_pool2d(metal, smear, stride=1, padding=smear // 2)
    return metal > 0.5


def linear_interpolation(sino: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """LI inpainting along the detector axis (last axis) of every view.

    sino: (..., D) real; trace: bool broadcastable to sino (True = on the metal trace).
    Entries on the trace get the linear interpolation of the nearest off-trace neighbours
    (constant beyond the last one); rows entirely on the trace are left unchanged.
    """
    check_finite("sinogram", sino)
    trace = trace.to(sino.device).expand(sino.shape)
    d = sino.shape[-1]
    idx = torch.arange(d, device=sino.device).expand(sino.shape)
    valid = ~trace
    big = d + 1
    prev = torch.where(valid, idx, torch.full_like(idx, -1)).cummax(-1).values
    nxt = torch.where(valid, idx, torch.full_like(idx, big)).flip(-1).cummin(-1).values.flip(-1)
    has_prev, has_next = prev >= 0, nxt < big
    v_prev = torch.gather(sino, -1, prev.clamp(0, d - 1))
    v_next = torch.gather(sino, -1, nxt.clamp(0, d - 1))
    span = (nxt - prev).clamp_min(1).to(sino.dtype)
    wgt = (idx - prev).to(sino.dtype) / span
    both = v_prev + wgt * (v_next - v_prev)
    fill = torch.where(has_prev & has_next, both, torch.where(has_prev, v_prev, v_next))
    fill = torch.where(has_prev | has_next, fill, sino)
    return torch.where(trace, fill, sino)


def trace_edges(trace: torch.Tensor) -> torch.Tensor:
    """Entries of the trace with an off-trace neighbour along the detector axis (bool, same shape).

    The reference divides the metal line integrals there by 4 (partial-volume effect).
    """
    t = trace.to(torch.float32).reshape(-1, 1, trace.shape[-1])
    eroded = -F.max_pool1d(-t, 3, stride=1, padding=1)  # erosion; outside counts as on-trace
    eroded = eroded * t
    # erosion with zero padding, as scipy's binary_erosion (border outside = False)
    eroded[..., 0] = 0
    eroded[..., -1] = 0
    return (trace & ~(eroded.reshape(trace.shape) > 0.5))
