"""Random CT phantoms defined in Hounsfield units (docs/design.md §3.4): head, chest and abdomen.

A phantom is a list of K = 31 ellipses in the coordinates of `phantom_render` (additive
values, in [0, 1] image units), plus, for the textured flavour, smooth random intensity
fields per tissue class, a fine grain and thin bright vessel-like lines, all continuous
functions of position. HU map to [0, 1] linearly: x = (HU - hu_min) / (hu_max - hu_min),
clipped; the default window [-1024, 3200] HU is the reference's (docs/design.md §7.1), so water
(0 HU) is 1024/4224.

Anatomy (HU): air outside the body -1000 inside the circular field of view (radius 1) and
hu_min (image value 0) outside it;
- chest / abdomen: subcutaneous fat (-120..-80), muscle wall (35..60), viscera (20..50),
  organs (+-30..70 around the viscera), lesions, a vertebra (cortical 1000..1600, marrow
  150..350), ribs (700..1300), bowel gas (-990..-940, abdomen) and lungs (-870..-820, chest)
  with nodules;
- head: scalp (20..60), skull ring (1100..1800), brain (25..45), ventricles and lesions.
Overlaps that could push a plain phantom out of PLAIN_HU_RANGE = [-1020, 2100] HU (outside the
field-of-view corners) are removed at sampling (conservative bounding-circle tests), so with
any window containing that range (the default does) nothing is clipped and the ellipse list
describes the plain image exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..errors import ScoreinvError
from ..physics import mar_spectra
from ..physics.mar_spectra import HU_MAX, HU_MIN
from .phantom_render import render

HU_AIR = -1000.0
DEFAULT_HU_WINDOW = (HU_MIN, HU_MAX)   # the one window of physics.mar_spectra
PLAIN_HU_RANGE = (-1020.0, 2100.0)
KINDS = ("head", "chest", "abdomen")
KIND_PROBS = (0.25, 0.35, 0.40)
CLASSES = ("fat", "soft", "bone", "lung")
# slot layout of the K ellipses
FOV, OUTER, INNER, CORE = 0, 1, 2, 3
ORGANS = slice(4, 10)
LESIONS = slice(10, 14)
SPINE = slice(14, 16)
RIBS = slice(16, 26)
AIR = slice(26, 29)
LUNGS = slice(29, 31)
K = 31
N_TEX = 16          # sinusoids per class field
N_GRAIN = 32        # sinusoids of the grain field
N_VESSELS, N_SEG = 3, 3


@dataclass
class PhantomBatch:
    """A batch of B continuous phantoms (all tensors on one device).

    ellipses (B, K, 6): (value, a, b, x0, y0, phi); value additive, in [0, 1] image units.
    Textured only: class_weights (B, C, K); per-class smooth fields tex_freq (B, C, M, 2) in
    cycles per unit length, tex_phase / tex_amp (B, C, M); a unit-RMS grain field grain_freq
    (B, 1, G, 2), grain_phase (B, 1, G), scaled per class by grain_amp (B, C); vessels (B, V, 4)
    segment end points, vessel_sigma (B, V), vessel_amp (B, C).
    """
    ellipses: torch.Tensor
    kind: torch.Tensor
    hu_min: float
    hu_max: float
    native_size: int
    textured: bool
    class_weights: torch.Tensor | None = None
    tex_freq: torch.Tensor | None = None
    tex_phase: torch.Tensor | None = None
    tex_amp: torch.Tensor | None = None
    grain_freq: torch.Tensor | None = None
    grain_phase: torch.Tensor | None = None
    grain_amp: torch.Tensor | None = None
    vessels: torch.Tensor | None = None
    vessel_sigma: torch.Tensor | None = None
    vessel_amp: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ellipses.shape[0]

    def _map(self, fn) -> "PhantomBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return PhantomBatch(**{k: fn(v) if torch.is_tensor(v) else v for k, v in kw.items()})

    def to(self, device) -> "PhantomBatch":
        return self._map(lambda t: t.to(device))

    def select(self, idx) -> "PhantomBatch":
        return self._map(lambda t: t[idx])

    @property
    def exact(self) -> bool:
        """True when the ellipse list describes the rendered image exactly (plain, no clipping)."""
        return (not self.textured) and self.hu_min <= PLAIN_HU_RANGE[0] and self.hu_max >= PLAIN_HU_RANGE[1]

    def render(self, size: int | None = None, antialias: bool = True) -> torch.Tensor:
        """(B, 1, S, S) in [0, 1]; S defaults to the native size."""
        return render(self, self.native_size if size is None else size, antialias)


def hu_to_unit(hu, hu_min: float = DEFAULT_HU_WINDOW[0], hu_max: float = DEFAULT_HU_WINDOW[1]):
    """x = clip(`mar_spectra.hu_to_unit`(HU), 0, 1) (works on floats and tensors)."""
    x = mar_spectra.hu_to_unit(hu, hu_min, hu_max)
    return x.clamp(0, 1) if torch.is_tensor(x) else min(max(float(x), 0.0), 1.0)


def check_window(hu_min, hu_max) -> tuple[float, float]:
    try:
        lo, hi = float(hu_min), float(hu_max)
    except (TypeError, ValueError):
        raise ScoreinvError(f"HU window must be two numbers, got ({hu_min!r}, {hu_max!r})") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ScoreinvError(f"HU window must satisfy hu_min < hu_max (finite), got [{hu_min}, {hu_max}]")
    return lo, hi


class _Rng:
    def __init__(self, generator: torch.Generator, batch: int):
        self.g, self.dev, self.B = generator, generator.device, batch

    def u(self, lo, hi, *shape):
        shape = shape or (self.B,)
        return lo + (hi - lo) * torch.rand(shape, generator=self.g, device=self.dev)

    def bern(self, p, *shape):
        return self.u(0.0, 1.0, *shape) < p


def _normdist(ell: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """sqrt(q_j(p_i)): ell (B, n, 6), pts (B, m, 2) -> (B, m, n)."""
    dx = pts[..., 0].unsqueeze(-1) - ell[..., 3].unsqueeze(-2)
    dy = pts[..., 1].unsqueeze(-1) - ell[..., 4].unsqueeze(-2)
    c, s = torch.cos(ell[..., 5]).unsqueeze(-2), torch.sin(ell[..., 5]).unsqueeze(-2)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return torch.sqrt((u / ell[..., 1].unsqueeze(-2)) ** 2 + (v / ell[..., 2].unsqueeze(-2)) ** 2)


def _rho(ell):
    return torch.maximum(ell[..., 1], ell[..., 2])


def _outside(small, big) -> torch.Tensor:
    """(B, m, n): ellipse i of `small` certainly does not meet ellipse j of `big`."""
    return _normdist(big, small[..., 3:5]) >= 1 + _rho(small).unsqueeze(-1) / \
        torch.minimum(big[..., 1], big[..., 2]).unsqueeze(-2)


def _inside(small, big) -> torch.Tensor:
    """(B, m, n): ellipse i of `small` certainly lies inside ellipse j of `big`."""
    return _normdist(big, small[..., 3:5]) + _rho(small).unsqueeze(-1) / \
        torch.minimum(big[..., 1], big[..., 2]).unsqueeze(-2) <= 1


def _ell(a, b, cx, cy, phi):
    return torch.stack([torch.zeros_like(a), a, b, cx, cy, phi], -1)


class _Body:
    """Body frame: centre c, angle phi; maps (r, theta) in a scaled ellipse to image points."""

    def __init__(self, c, phi):
        self.c, self.phi = c, phi

    def point(self, A, Bs, r, theta):
        """A, Bs (B, 1) semi-axes, r/theta (B, n) -> (B, n) x and y in the image."""
        px, py = A * r * torch.cos(theta), Bs * r * torch.sin(theta)
        c, s = torch.cos(self.phi).unsqueeze(-1), torch.sin(self.phi).unsqueeze(-1)
        return self.c[:, :1] + c * px - s * py, self.c[:, 1:] + s * px + c * py


def _inner_place(rng, body, A, Bs, rho, n, theta=None, r_frac=None, margin=0.02):
    """Centres for n ellipses of bounding radius rho (B, n) inside the ellipse (A, Bs) (B, 1)."""
    rmax = (1 - rho / torch.minimum(A, Bs) - margin).clamp_min(0)
    r = rmax * (rng.u(0, 1, rng.B, n).sqrt() if r_frac is None else r_frac.clamp(max=1))
    theta = rng.u(0, 2 * math.pi, rng.B, n) if theta is None else theta
    return body.point(A, Bs, r, theta)


def sample_phantoms(batch: int, generator: torch.Generator, *, textured: bool, native_size: int,
                    hu_min: float = DEFAULT_HU_WINDOW[0], hu_max: float = DEFAULT_HU_WINDOW[1]) -> PhantomBatch:
    """Draw `batch` random phantoms on generator.device (see the module docstring)."""
    hu_min, hu_max = check_window(hu_min, hu_max)
    rng = _Rng(generator, batch)
    B, dev = batch, generator.device
    kind = torch.multinomial(torch.tensor(KIND_PROBS, device=dev).expand(B, -1), 1,
                             generator=generator).squeeze(1)
    head, chest, abd = kind == 0, kind == 1, kind == 2
    w = lambda cond, x, y: torch.where(cond, x, y)  # noqa: E731
    E = torch.zeros(B, K, 6, device=dev)
    D = torch.zeros(B, K, device=dev)                 # HU increments
    # field of view and body (outer, inner = under the fat or scalp, core = viscera or brain)
    E[:, FOV] = _ell(torch.ones(B, device=dev), torch.ones(B, device=dev), torch.zeros(B, device=dev),
                     torch.zeros(B, device=dev), torch.zeros(B, device=dev))
    D[:, FOV] = HU_AIR - hu_min
    cb = rng.u(-0.04, 0.04, B, 2)
    phib = w(head, rng.u(-0.1, 0.1), rng.u(-0.2, 0.2))
    ax = w(head, rng.u(0.55, 0.72), rng.u(0.72, 0.9))
    ay = ax * w(head, rng.u(1.1, 1.25), rng.u(0.55, 0.8))
    f = ((0.96 - cb.norm(dim=1)) / torch.maximum(ax, ay)).clamp(max=1)
    ax, ay = ax * f, ay * f
    s2 = w(head, rng.u(0.94, 0.97), rng.u(0.86, 0.95))
    s3 = w(head, rng.u(0.90, 0.94), rng.u(0.88, 0.95))
    for slot, sc in ((OUTER, 1.0), (INNER, s2), (CORE, s2 * s3)):
        E[:, slot] = _ell(ax * sc, ay * sc, cb[:, 0], cb[:, 1], phib)
    hu_outer = w(head, rng.u(20, 60), rng.u(-120, -80))
    hu_inner = w(head, rng.u(1100, 1800), rng.u(35, 60))
    hu_core = w(head, rng.u(25, 45), rng.u(20, 50))
    D[:, OUTER], D[:, INNER], D[:, CORE] = hu_outer - HU_AIR, hu_inner - hu_outer, hu_core - hu_inner
    body = _Body(cb, phib)
    Ac, Bc = E[:, CORE, 1:2], E[:, CORE, 2:3]
    Ai, Bi = E[:, INNER, 1:2], E[:, INNER, 2:3]
    bmin = torch.minimum(Ac, Bc)

    # lungs (chest): left/right of the midline, clear of the spine
    rho_sp = (bmin * rng.u(0.12, 0.2, B, 1)).clamp(max=0.11)
    lcx = Ac * rng.u(0.4, 0.5, B, 1) * torch.tensor([-1.0, 1.0], device=dev)
    lcy = Bc * rng.u(0.0, 0.15, B, 1).expand(B, 2)
    la = (lcx.abs() - rho_sp - 0.02).clamp_min(0.02) * rng.u(0.85, 1.0, B, 2)
    lb = Bc * rng.u(0.55, 0.75, B, 2)
    lphi = phib.unsqueeze(1) + rng.u(-0.12, 0.12, B, 2)
    c, s = torch.cos(phib).unsqueeze(1), torch.sin(phib).unsqueeze(1)
    lx, ly = cb[:, :1] + c * lcx - s * lcy, cb[:, 1:] + s * lcx + c * lcy
    rn = torch.sqrt((lcx / Ac) ** 2 + (lcy / Bc) ** 2)
    shrink = ((1 - rn - 0.02) * bmin / torch.maximum(la, lb)).clamp(0.05, 1)
    E[:, LUNGS] = _ell(la * shrink, lb * shrink, lx, ly, lphi)
    hu_lung = rng.u(-870, -820, B, 1)
    D[:, LUNGS] = (hu_lung - hu_core.unsqueeze(1)) * chest.unsqueeze(1)
    lungs_on = chest.unsqueeze(1).expand(B, 2)

    # vertebra: cortical shell and marrow, posterior (body-frame -y)
    sp_a = rho_sp * rng.u(0.85, 1.0, B, 1)
    sp_b = sp_a * rng.u(0.75, 0.95, B, 1)
    sx, sy = _inner_place(rng, body, Ac, Bc, rho_sp, 1, theta=torch.full((B, 1), -math.pi / 2, device=dev),
                          r_frac=rng.u(0.7, 0.95, B, 1))
    marrow = rng.u(0.65, 0.8, B, 1)
    spine = torch.cat([_ell(sp_a, sp_b, sx, sy, phib.unsqueeze(1)),
                       _ell(sp_a * marrow, sp_b * marrow, sx, sy, phib.unsqueeze(1))], 1)
    E[:, SPINE] = spine
    spine_on = ~head & _outside(spine[:, :1], E[:, LUNGS]).logical_or(~lungs_on.unsqueeze(1)).all(-1).squeeze(1)
    hu_cort, hu_marrow = rng.u(1000, 1600), rng.u(150, 350)
    D[:, SPINE] = torch.stack([hu_cort - hu_core, hu_marrow - hu_cort], 1) * spine_on.unsqueeze(1)

    # ribs: in the chest wall, spread around, none at the spine
    nr = RIBS.stop - RIBS.start
    theta = rng.u(0, 2 * math.pi, B, 1) + 2 * math.pi * torch.arange(nr, device=dev) / nr + rng.u(-0.1, 0.1, B, nr)
    r_rho = rng.u(0.018, 0.035, B, nr)
    rx, ry = _inner_place(rng, body, Ai, Bi, r_rho, nr, theta=theta, r_frac=rng.u(0.9, 0.96, B, nr), margin=0.01)
    rib_phi = phib.unsqueeze(1) + theta + math.pi / 2
    E[:, RIBS] = _ell(r_rho, r_rho * rng.u(0.45, 0.8, B, nr), rx, ry, rib_phi)
    near_spine = torch.cos(theta + math.pi / 2) > math.cos(0.35)
    rib_on = (chest.unsqueeze(1) & rng.bern(0.85, B, nr)) | (abd.unsqueeze(1) & rng.bern(0.3, B, nr))
    rib_on &= ~near_spine & (_outside(E[:, RIBS], E[:, LUNGS]) | ~lungs_on.unsqueeze(1)).all(-1)
    D[:, RIBS] = rng.u(700, 1300, B, nr) * rib_on

    hard = torch.cat([E[:, SPINE.start:SPINE.start + 1], E[:, RIBS]], 1)
    hard_on = torch.cat([spine_on.unsqueeze(1), rib_on], 1)

    def clear_of(ells, others, on):  # (B, n): no overlap with any active `others`
        return (_outside(ells, others) | ~on.unsqueeze(1)).all(-1)

    # organs inside the core (chest: clear of the lungs; head: ventricles / deep structures)
    no = ORGANS.stop - ORGANS.start
    o_a = bmin * rng.u(0.08, 0.35, B, no)
    o_b = o_a * rng.u(0.4, 1.0, B, no)
    ox, oy = _inner_place(rng, body, Ac, Bc, o_a, no)
    E[:, ORGANS] = _ell(o_a, o_b, ox, oy, rng.u(0, math.pi, B, no))
    organ_on = rng.bern(0.7, B, no) & clear_of(E[:, ORGANS], E[:, LUNGS], lungs_on)
    d_org = torch.where(head.unsqueeze(1), rng.u(-30, 10, B, no),
                        torch.where(chest.unsqueeze(1), rng.u(-10, 40, B, no), rng.u(-30, 70, B, no)))
    D[:, ORGANS] = d_org * organ_on

    # lesions: anywhere in the core; inside a lung they are nodules of soft-tissue density
    nl = LESIONS.stop - LESIONS.start
    l_a = rng.u(0.015, 0.07, B, nl)
    lex, ley = _inner_place(rng, body, Ac, Bc, l_a, nl)
    E[:, LESIONS] = _ell(l_a, l_a * rng.u(0.6, 1.0, B, nl), lex, ley, rng.u(0, math.pi, B, nl))
    in_lung = (_inside(E[:, LESIONS], E[:, LUNGS]) & lungs_on.unsqueeze(1)).any(-1)
    off_lung = clear_of(E[:, LESIONS], E[:, LUNGS], lungs_on)
    les_on = rng.bern(0.5, B, nl) & (in_lung | off_lung) & clear_of(E[:, LESIONS], hard, hard_on)
    d_les = torch.where(head.unsqueeze(1), rng.u(-20, 60, B, nl), rng.u(-40, 90, B, nl))
    d_les = d_les + in_lung * (rng.u(-40, 60, B, nl) - hu_lung)
    D[:, LESIONS] = d_les * les_on

    # bowel gas (abdomen): clear of other gas, hard structures, lesions, and of >= 2 organs
    na = AIR.stop - AIR.start
    g_a = rng.u(0.03, 0.1, B, na)
    gx, gy = _inner_place(rng, body, Ac, Bc, g_a, na)
    E[:, AIR] = _ell(g_a, g_a * rng.u(0.5, 1.0, B, na), gx, gy, rng.u(0, math.pi, B, na))
    gas_on = abd.unsqueeze(1) & rng.bern(0.6, B, na)
    gas_on &= clear_of(E[:, AIR], hard, hard_on) & clear_of(E[:, AIR], E[:, LESIONS], les_on)
    organ_hits = (~_outside(E[:, AIR], E[:, ORGANS]) & organ_on.unsqueeze(1)).sum(-1)
    gas_on &= organ_hits <= 1
    for i in range(1, na):  # greedy: a pocket that meets an earlier kept pocket is dropped
        gas_on[:, i] &= clear_of(E[:, AIR][:, i:i + 1], E[:, AIR][:, :i], gas_on[:, :i]).squeeze(1)
    D[:, AIR] = (rng.u(-990, -940, B, na) - hu_core.unsqueeze(1)) * gas_on

    E[..., 0] = D / (hu_max - hu_min)
    batch_out = PhantomBatch(E, kind, hu_min, hu_max, int(native_size), bool(textured))
    if textured:
        on = torch.ones(B, K, device=dev)
        on[:, SPINE] = spine_on.unsqueeze(1).float()
        on[:, RIBS], on[:, ORGANS], on[:, LESIONS] = rib_on.float(), organ_on.float(), les_on.float()
        on[:, AIR], on[:, LUNGS] = gas_on.float(), lungs_on.float()
        _add_texture(batch_out, rng, head, chest, on, in_lung, hu_max - hu_min)
    return batch_out


def _add_texture(p: PhantomBatch, rng: _Rng, head, chest, on, in_lung, hu_range):
    """Class masks, smooth fields, grain and vessels of the textured flavour (HU -> units)."""
    B, dev = rng.B, rng.dev
    W = torch.zeros(B, len(CLASSES), K, device=dev)
    body = ~head
    hb, bb = head.float(), body.float()
    W[:, 0, OUTER], W[:, 0, INNER] = bb, -bb                                  # fat
    W[:, 1, OUTER], W[:, 1, INNER], W[:, 1, CORE] = hb, bb - hb, hb           # soft (head: scalp + brain)
    W[:, 2, INNER], W[:, 2, CORE] = hb, -hb                                    # skull
    W[:, 2, SPINE.start], W[:, 2, RIBS] = on[:, SPINE.start], on[:, RIBS]      # spine, ribs
    for sl in (slice(SPINE.start, SPINE.start + 1), RIBS, AIR, LUNGS):
        W[:, 1, sl] -= on[:, sl]
    W[:, 3, LUNGS] = on[:, LUNGS]
    nodule = (in_lung.float() * on[:, LESIONS])
    W[:, 1, LESIONS] += nodule
    W[:, 3, LESIONS] -= nodule
    p.class_weights = W

    nyq = p.native_size / 4.0                     # cycles per unit length at the native size
    cap = 0.45 * nyq
    bands = [(0.3, 2.0, 6, 12), (0.3, 3.0, 8, 20), (2.0, 8.0, 80, 200), (1.0, 6.0, 20, 50)]
    C = len(CLASSES)

    def waves(m, flo, fhi, *lead):
        fhi = min(fhi, cap)
        f = rng.u(min(flo, 0.5 * fhi), fhi, B, *lead, m)
        ang = rng.u(0, 2 * math.pi, B, *lead, m)
        return torch.stack([f * torch.cos(ang), f * torch.sin(ang)], -1), rng.u(0, 2 * math.pi, B, *lead, m)

    freq, phase = zip(*(waves(N_TEX, flo, fhi) for flo, fhi, _, _ in bands))
    rms = torch.stack([rng.u(alo, ahi) for _, _, alo, ahi in bands], 1) / hu_range       # (B, C)
    p.tex_freq, p.tex_phase = torch.stack(freq, 1), torch.stack(phase, 1)
    p.tex_amp = (rms * math.sqrt(2.0 / N_TEX)).unsqueeze(-1).expand(B, C, N_TEX).contiguous()
    p.grain_freq, p.grain_phase = waves(N_GRAIN, 0.2 * nyq, cap, 1)
    grain = torch.stack([rng.u(3, 8), rng.u(4, 12), rng.u(10, 40), rng.u(15, 40)], 1)
    p.grain_amp = grain / hu_range

    # vessels: polylines of N_SEG segments starting inside the core
    Ac, Bc = p.ellipses[:, CORE, 1:2], p.ellipses[:, CORE, 2:3]
    bodyf = _Body(p.ellipses[:, CORE, 3:5], p.ellipses[:, CORE, 5])
    x, y = _inner_place(rng, bodyf, Ac, Bc, torch.zeros(B, N_VESSELS, device=dev), N_VESSELS, margin=0.1)
    heading = rng.u(0, 2 * math.pi, B, N_VESSELS)
    segs = []
    for _ in range(N_SEG):
        length = rng.u(0.08, 0.25, B, N_VESSELS) * torch.minimum(Ac, Bc)
        heading = heading + rng.u(-0.6, 0.6, B, N_VESSELS)
        nx, ny = x + length * torch.cos(heading), y + length * torch.sin(heading)
        segs.append(torch.stack([x, y, nx, ny], -1))
        x, y = nx, ny
    p.vessels = torch.cat(segs, 1)
    px = 2.0 / p.native_size
    p.vessel_sigma = (rng.u(0.5, 0.9, B, N_VESSELS) * px).repeat(1, N_SEG)
    soft_amp = torch.where(head, rng.u(50, 150), rng.u(100, 300))
    lung_amp = rng.u(600, 850) * chest
    zero = torch.zeros(B, device=dev)
    p.vessel_amp = torch.stack([zero, soft_amp, zero, lung_amp], 1) / hu_range
