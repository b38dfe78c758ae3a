"""Single-coil Cartesian MRI: A = P(Λ) T with T the centred orthonormal 2-D FFT (docs/design.md §2.4).

k-space convention: DC at index (H // 2, W // 2) (fftshift layout), orthonormal scaling, so T
is unitary: ||T x|| = ||x|| and T^{-1} = T^H. This matches the reference's
`fftshift(fft2(ifftshift(x))) / N` for N x N images. Odd sizes are handled, not refused: the
same layout is exact for odd H or W (DC at the middle sample, the mirror of k at (2 (n // 2) − k)
mod n, no unpaired Nyquist sample), and matrices such as 255 or 175 occur in real scans; the
limits on size are the prior's (`score.check_model_size`).

The measurement is the full k-space grid with zeros off the mask, shape (B, H, W) complex;
hence P(Λ) ("restrict") and P(Λ)^{-1} ("embed") are both multiplication by the mask, and the
T-domain is also (B, H, W) complex. Images are real (B, 1, H, W) as in the paper (the adjoint
and T^{-1} keep the real part, <u, v> = Re(u^H v)); `complex_image=True` keeps complex images.

Conjugate-symmetric completion (`completed`, docs/design.md §2.11): the spectrum of a real image
is Hermitian, z(-k) = conj z(k), so a sampled k also measures its mirror -k. The completed mask
Λ ∪ -Λ with data y(k) on Λ, conj y(-k) where only -k is sampled (and the average of the two where both are
sampled: the nearest Hermitian data) is what the data-consistency steps use for real images;
the measurement itself (and hence what a file stores) is unchanged.

Complex images with a smooth phase (docs/design.md §3.5): `smooth_phase` draws the phase φ of a
simulated image |x| e^{iφ}; `estimate_phase` takes φ̂ from the fully sampled k-space centre (the
angle of the Hann-windowed low-resolution image, as homodyne / partial-Fourier reconstruction
does); `PhasedMRI` is A' = P(Λ) fft2c diag(e^{iφ̂}) on REAL images, so a real-valued prior and
every solver reconstruct the phase-corrected magnitude unchanged.
"""
from __future__ import annotations

import math

import torch

from ..errors import ScoreinvError, check_finite, check_range
from .base import LinearOperator


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes: (..., H, W) -> (..., H, W) complex."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    x = torch.fft.fft2(x, norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of `fft2c`: (..., H, W) complex -> (..., H, W) complex."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    k = torch.fft.ifft2(k, norm="ortho")
    return torch.fft.fftshift(k, dim=(-2, -1))


def mirror_index(n: int, device=None) -> torch.Tensor:
    """Index of -k for each k along an axis of n samples in the fftshift layout (DC at n // 2)."""
    return (2 * (n // 2) - torch.arange(n, device=device)) % n


def mirror(z: torch.Tensor) -> torch.Tensor:
    """z(-k) over the last two axes (fftshift layout): (..., H, W) -> (..., H, W)."""
    h, w = z.shape[-2:]
    return z.index_select(-2, mirror_index(h, z.device)).index_select(-1, mirror_index(w, z.device))


def check_kspace(y: torch.Tensor, where: str, name: str = "measurement") -> torch.Tensor:
    """Raise unless y is complex k-space (a real array cannot hold the phase of each sample: the
    magnitude of a k-space, or a real image given where k-space is expected); return y."""
    if torch.is_tensor(y) and not y.is_complex():
        raise ScoreinvError(f"{name}: real {str(y.dtype).replace('torch.', '')} values given to {where}; expected "
                            "complex k-space (each sample's real and imaginary part, e.g. complex64)")
    return y


def as_kspace_mask(mask, shape: tuple[int, int] | None = None, name: str = "mask") -> torch.Tensor:
    """Validate a k-space sampling mask and return it as a bool tensor of shape (H, W).

    Accepts a 2-D (H, W) array/tensor of 0/1 (or bool) values, or a 1-D column mask (W,) when
    `shape` is given (expanded to every row). Raises ScoreinvError if the mask does not fit
    `shape`, holds values other than 0/1, or samples nothing.
    """
    m = torch.as_tensor(mask)
    if m.is_complex():
        raise ScoreinvError(f"{name}: expected a real 0/1 mask, got a complex tensor")
    if m.ndim == 1 and shape is not None:
        if m.shape[0] != shape[1]:
            raise ScoreinvError(
                f"{name}: a 1-D column mask must have {shape[1]} entries (the k-space width), got {m.shape[0]}")
        m = m.reshape(1, -1).expand(shape[0], -1)
    if m.ndim != 2:
        raise ScoreinvError(f"{name}: expected a 2-D k-space mask of shape (H, W), got shape {tuple(m.shape)}")
    if shape is not None and tuple(m.shape) != tuple(shape):
        raise ScoreinvError(
            f"{name}: shape {tuple(m.shape)} does not fit the k-space grid {tuple(shape)}; expected {tuple(shape)}")
    if m.dtype != torch.bool:
        mf = m.to(torch.float64)
        if not bool(((mf == 0) | (mf == 1)).all()):
            raise ScoreinvError(f"{name}: expected values 0 or 1 only")
        m = mf > 0.5
    if not bool(m.any()):
        raise ScoreinvError(f"{name}: samples no k-space entry; expected at least one 1")
    return m.contiguous()


class CartesianMRI(LinearOperator):
    """Single-coil Cartesian MRI, y = Λ ⊙ fft2c(x).

    Args:
        mask: (H, W) 0/1 sampling mask (or (W,) columns with `image_shape`), DC at (H//2, W//2).
        image_shape: optional (H, W); the mask must fit it.
        complex_image: if True, images are complex (B, 1, H, W) and nothing is discarded.

    Shapes: image (B, 1, H, W) -> measurement (B, H, W) complex, zero off the mask.
    """

    has_decomposition = True

    def __init__(self, mask, image_shape: tuple[int, int] | None = None, complex_image: bool = False):
        self.mask = as_kspace_mask(mask, tuple(image_shape) if image_shape is not None else None)
        self.image_shape = tuple(self.mask.shape)
        self.meas_shape = tuple(self.mask.shape)
        self.complex_image = bool(complex_image)
        h, w = self.image_shape
        self.name = f"CartesianMRI({h}x{w}, {self.acceleration:.2f}x)"

    @property
    def acceleration(self) -> float:
        """Number of k-space grid points divided by the number sampled."""
        return self.mask.numel() / float(self.mask.sum())

    def _mask(self, ref: torch.Tensor) -> torch.Tensor:
        return self.mask.to(ref.device)

    def check_measurement(self, y: torch.Tensor, name: str = "measurement") -> torch.Tensor:
        """Raise unless y is finite complex k-space of shape (B, H, W) (base class; `check_kspace`)."""
        return check_kspace(super().check_measurement(y, name), self.name, name)

    def _out(self, z: torch.Tensor) -> torch.Tensor:
        return (z if self.complex_image else z.real).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, H, W) complex: Λ ⊙ fft2c(x)."""
        x = self.check_image(x)
        return self.restrict(self.T(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, W) complex -> (B, 1, H, W): Re(ifft2c(Λ ⊙ y)) (complex if complex_image)."""
        y = self.check_measurement(y)
        return self._out(ifft2c(y * self._mask(y)))

    def T(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, H, W) complex: fft2c(x)."""
        return fft2c(x[:, 0])

    def T_inv(self, z: torch.Tensor) -> torch.Tensor:
        """(B, H, W) complex -> (B, 1, H, W): ifft2c(z), real part for real images."""
        return self._out(ifft2c(z))

    def embed(self, y: torch.Tensor) -> torch.Tensor:
        """P(Λ)^{-1}: measurement -> k-space, zero off the mask."""
        return y * self._mask(y)

    def restrict(self, z: torch.Tensor) -> torch.Tensor:
        """P(Λ): k-space -> measurement (entries off the mask set to zero)."""
        return z * self._mask(z)

    def completed(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conjugate-symmetric completion for real images (module docstring): (mask Λ ∪ -Λ (H, W)
        bool, k-space data (B, H, W) complex, zero off that mask). For complex images (nothing
        links k and -k) the plain (Λ, embed(y))."""
        m = self._mask(y)
        if self.complex_image:
            return m, self.embed(y)
        mr = mirror(m)
        z = torch.where(m, y, 0) + torch.where(mr, mirror(y).conj(), 0)
        return m | mr, torch.where(m & mr, 0.5 * z, z)

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled reconstruction T^{-1}(embed(y)), (B, 1, H, W)."""
        y = self.check_measurement(y)
        return self.T_inv(self.embed(y))


def kspace_rms(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square magnitude of the sampled k-space entries -> (B,).

    y: (B, ...) complex; mask: bool, broadcastable to y.shape[1:]. Used to express MRI noise
    levels relative to the signal (`--noise` of `scoreinv simulate`).
    """
    check_finite("k-space", y)
    m = mask.to(y.device).expand(y.shape[1:]).to(y.real.dtype)
    return ((y.abs() ** 2 * m).flatten(1).sum(1) / m.sum().clamp_min(1)).sqrt()


# --- complex images with a smooth phase (docs/design.md §3.5) --------------------------------
PHASE_DEGREE = 2        # the phase polynomial: every term u^i v^j with 1 <= i + j <= 2
MIN_CENTRE = 2          # fewest fully sampled centre lines (each way) a phase estimate takes


def smooth_phase(batch: int, shape, generator: torch.Generator | None = None, amplitude: float = math.pi,
                 dtype=torch.float32) -> torch.Tensor:
    """Random smooth phase maps φ (B, H, W) in radians (docs/design.md §3.5, (D23)).

    φ(u, v) = φ0 + a · p(u, v) / max|p|, u, v ∈ [−1, 1] the pixel centres' positions over the
    field of view, p = Σ c_ij u^i v^j over 1 <= i + j <= 2 (linear and quadratic terms: an
    off-centre object and a smooth field inhomogeneity), c_ij ~ U(−1, 1), φ0 ~ U(−π, π) and
    a = `amplitude` (the largest |φ − φ0| over the image; default π). Seeded by `generator`.
    """
    b = int(batch)
    if b < 1:
        raise ScoreinvError(f"smooth_phase: batch = {batch} must be >= 1")
    h, w = (int(s) for s in shape)
    if h < 2 or w < 2:
        raise ScoreinvError(f"smooth_phase: shape {tuple(shape)}; expected (H, W) with H, W >= 2")
    a = check_range("phase amplitude", amplitude, 0.0, math.pi)
    dev = generator.device if generator is not None else torch.device("cpu")
    terms = [(i, d - i) for d in range(1, PHASE_DEGREE + 1) for i in range(d + 1)]
    c = 2 * torch.rand(b, len(terms), generator=generator, device=dev, dtype=torch.float64) - 1
    phi0 = math.pi * (2 * torch.rand(b, generator=generator, device=dev, dtype=torch.float64) - 1)
    u = (2 * torch.arange(h, dtype=torch.float64, device=dev) + 1) / h - 1
    v = (2 * torch.arange(w, dtype=torch.float64, device=dev) + 1) / w - 1
    basis = torch.stack([u[:, None] ** i * v[None, :] ** j for i, j in terms])          # (T, H, W)
    p = torch.einsum("bt,thw->bhw", c, basis)
    p = p / p.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(b, 1, 1)
    return (phi0.reshape(b, 1, 1) + a * p).to(dtype).cpu()


def centre_box(mask) -> tuple[int, int]:
    """(rows, columns) of the fully sampled block around DC (H//2, W//2) that `estimate_phase` uses:
    (H, c) for a column mask whose centre band of c >= 2 whole columns is sampled, else the side s
    of the largest centred s x s square that is fully sampled, (s, s); (0, 0) if DC is not sampled."""
    m = as_kspace_mask(mask)
    h, w = m.shape
    cy, cx = h // 2, w // 2
    if not bool(m[cy, cx]):
        return 0, 0
    full = m.all(0)
    if bool(full[cx]):
        lo, hi = cx, cx
        while lo > 0 and bool(full[lo - 1]):
            lo -= 1
        while hi < w - 1 and bool(full[hi + 1]):
            hi += 1
        if hi - lo + 1 >= MIN_CENTRE:
            return h, hi - lo + 1
    s = 1
    while s < min(h, w) and bool(m[cy - (s + 1) // 2:cy - (s + 1) // 2 + s + 1,
                                   cx - (s + 1) // 2:cx - (s + 1) // 2 + s + 1].all()):
        s += 1
    return s, s


def estimate_phase(y: torch.Tensor, mask) -> torch.Tensor:
    """φ̂ (B, H, W) float: the angle of the low-resolution image of the fully sampled centre.

    y: (B, H, W) complex k-space (DC at (H//2, W//2)); the block `centre_box(mask)` is weighted by a
    separable Hann window (no sample outside it is used) and transformed back:
    φ̂ = angle(ifft2c(window ⊙ y)) (docs/design.md §3.5, (D24)). Raises if the mask leaves fewer
    than 2 fully sampled centre lines each way.
    """
    m = as_kspace_mask(mask)
    if not torch.is_tensor(y) or not y.is_complex() or y.ndim != 3:
        raise ScoreinvError("k-space: expected a complex tensor (B, H, W)"
                            + (f", got {'complex' if y.is_complex() else 'real'} shape {tuple(y.shape)}"
                               if torch.is_tensor(y) else f", got {type(y).__name__}"))
    if tuple(y.shape[-2:]) != tuple(m.shape):
        raise ScoreinvError(f"k-space: shape {tuple(y.shape)} does not fit the mask {tuple(m.shape)}")
    check_finite("k-space", y)
    bh, bw = centre_box(m)
    if min(bh, bw) < MIN_CENTRE:
        raise ScoreinvError(f"phase estimation: the mask samples a fully sampled centre of only {bh} x {bw} "
                            f"k-space lines around DC; expected at least {MIN_CENTRE} x {MIN_CENTRE} (a column "
                            "mask with a centre band: random or equispaced, or a lower acceleration)")
    h, w = m.shape
    rdt = y.real.dtype
    wy = torch.hann_window(bh + 2, periodic=False, dtype=rdt, device=y.device)[1:-1]
    wx = torch.hann_window(bw + 2, periodic=False, dtype=rdt, device=y.device)[1:-1]
    win = torch.zeros(h, w, dtype=rdt, device=y.device)
    y0, x0 = h // 2 - bh // 2, w // 2 - bw // 2
    win[y0:y0 + bh, x0:x0 + bw] = wy[:, None] * wx[None, :]
    return torch.angle(ifft2c(y * win))


class PhasedMRI(LinearOperator):
    """Single-coil Cartesian MRI of a real image x seen through a known phase: y = Λ ⊙ fft2c(e^{iφ} x).

    With φ = φ̂ (`estimate_phase`) this is the operator A' of docs/design.md §3.5 (D25): a real
    magnitude image whose phase is taken from the k-space centre. Real images, (B, 1, H, W) ->
    (B, H, W) complex, zero off the mask; adjoint Re(e^{−iφ} ifft2c(Λ ⊙ y)) (exact for the real
    inner product). No cheap exact T (the phase mixes k and −k), so the solvers project by
    conjugate gradient (docs/design.md §2.6), as for SENSE.

    Args:
        mask: (H, W) 0/1 sampling mask (or (W,) columns with `image_shape`), DC at (H//2, W//2).
        phase: (H, W) shared or (B, H, W) per image, real radians (then batches must have B images).
        image_shape: optional (H, W); the mask must fit it.
    """

    has_decomposition = False

    def __init__(self, mask, phase, image_shape: tuple[int, int] | None = None):
        self.mask = as_kspace_mask(mask, tuple(image_shape) if image_shape is not None else None)
        ph = torch.as_tensor(phase)
        if ph.is_complex() or not ph.is_floating_point():
            raise ScoreinvError(f"phase: expected real radians (floating point), got {ph.dtype}")
        if ph.ndim not in (2, 3) or tuple(ph.shape[-2:]) != tuple(self.mask.shape):
            h, w = self.mask.shape
            raise ScoreinvError(f"phase: expected shape ({h}, {w}) or (B, {h}, {w}) to fit the mask, "
                                f"got {tuple(ph.shape)}")
        self.phase = check_finite("phase", ph)
        self.image_shape = tuple(self.mask.shape)
        self.meas_shape = tuple(self.mask.shape)
        h, w = self.image_shape
        per = f", phase of {ph.shape[0]} images" if ph.ndim == 3 else ""
        self.name = f"PhasedMRI({h}x{w}, {self.acceleration:.2f}x{per})"

    @property
    def acceleration(self) -> float:
        """Number of k-space grid points divided by the number sampled."""
        return self.mask.numel() / float(self.mask.sum())

    def check_measurement(self, y: torch.Tensor, name: str = "measurement") -> torch.Tensor:
        """Raise unless y is finite complex k-space of shape (B, H, W) (base class; `check_kspace`)."""
        return check_kspace(super().check_measurement(y, name), self.name, name)

    def _unit(self, ref: torch.Tensor) -> torch.Tensor:
        """e^{iφ} as (B or 1, H, W) complex of ref's precision, on ref's device."""
        if self.phase.ndim == 3 and self.phase.shape[0] != ref.shape[0]:
            raise ScoreinvError(f"{self.name}: the phase is per image for {self.phase.shape[0]} images, "
                                f"got a batch of {ref.shape[0]}")
        rdt = torch.float64 if ref.dtype in (torch.float64, torch.complex128) else torch.float32
        ph = self.phase.to(device=ref.device, dtype=rdt)
        return torch.polar(torch.ones_like(ph), ph if ph.ndim == 3 else ph.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) real -> (B, H, W) complex: Λ ⊙ fft2c(e^{iφ} x)."""
        x = self.check_image(x)
        return fft2c(self._unit(x) * x[:, 0]) * self.mask.to(x.device)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, W) complex -> (B, 1, H, W) real: Re(e^{−iφ} ifft2c(Λ ⊙ y))."""
        y = self.check_measurement(y)
        return (self._unit(y).conj() * ifft2c(y * self.mask.to(y.device))).real.unsqueeze(1)

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """The phase-corrected zero-filled image A'ᵀ y, (B, 1, H, W) real."""
        return self.adjoint(y)

    def select(self, sl: slice) -> "PhasedMRI":
        """The operator of images `sl` of the batch (a per-image phase is sliced)."""
        return self if self.phase.ndim == 2 else PhasedMRI(self.mask, self.phase[sl])

    def repeat(self, k: int) -> "PhasedMRI":
        """The operator of the batch repeated k times along dim 0 (as y.repeat(k, 1, 1))."""
        return self if self.phase.ndim == 2 or k == 1 else PhasedMRI(self.mask, self.phase.repeat(k, 1, 1))


def phase_corrected(y: torch.Tensor, mask) -> PhasedMRI:
    """The operator A' of (D25) for k-space y (B, H, W): PhasedMRI(mask, estimate_phase(y, mask))."""
    return PhasedMRI(mask, estimate_phase(y, mask))
