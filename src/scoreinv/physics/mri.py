"""Single-coil Cartesian MRI: A = P(Λ) T with T the centred orthonormal 2-D FFT (docs/design.md §2.4).

k-space convention: DC at index (H // 2, W // 2) (fftshift layout), orthonormal scaling, so T
is unitary: ||T x|| = ||x|| and T^{-1} = T^H. This matches the reference's
`fftshift(fft2(ifftshift(x))) / N` for N x N images.

The measurement is the full k-space grid with zeros off the mask, shape (B, H, W) complex;
hence P(Λ) ("restrict") and P(Λ)^{-1} ("embed") are both multiplication by the mask, and the
T-domain is also (B, H, W) complex. Images are real (B, 1, H, W) as in the paper (the adjoint
and T^{-1} keep the real part, <u, v> = Re(u^H v)); `complex_image=True` keeps complex images.

Conjugate-symmetric completion (`completed`, docs/design.md §2.11): the spectrum of a real image
is Hermitian, z(-k) = conj z(k), so a sampled k also measures its mirror -k. The completed mask
Λ ∪ -Λ with data y(k) on Λ, conj y(-k) where only -k is sampled (and the average of the two where both are
sampled: the nearest Hermitian data) is what the data-consistency steps use for real images;
the measurement itself (and hence what a file stores) is unchanged.
"""
from __future__ import annotations

import torch

from ..errors import ScoreinvError, check_finite
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
