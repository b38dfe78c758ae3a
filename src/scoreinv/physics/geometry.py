"""CT acquisition geometries in physical units, and the angle sets of the paper (docs/design.md §3.1).

Coordinates (used by every CT module):
- The image is N x N pixels of side `pixel_size` (mm). Pixel (i, j) (row i, column j) has its
  centre at x = (j - (N-1)/2) * pixel_size, y = ((N-1)/2 - i) * pixel_size: x to the right,
  y up, origin at the geometric image centre.
- The rotation centre is `center` = (row, col) in pixel-index units, default ((N-1)/2, (N-1)/2)
  (the image centre, as ASTRA). scikit-image's `radon` rotates about pixel (N//2, N//2).
- Parallel beam, view angle θ: detector axis e_θ = (cos θ, sin θ), rays travel along
  (-sin θ, cos θ); a point p is seen at s = (p - c_rot) · e_θ. Bin k has its centre at
  s_k = (k - (D-1)/2) * det_spacing (mm).
- Fan beam, source angle β: source at S = c_rot + R (sin β, -cos β), central ray along
  e_c = (-sin β, cos β), detector axis e_u = (cos β, sin β). The ray with fan angle γ (towards
  e_u) belongs to the parallel view θ = β - γ at offset s = R sin γ. Equiangular detectors have
  bins at γ_k = (k - (D-1)/2) Δγ with Δγ = det_spacing / D_sd (arc length at the detector);
  flat detectors at u_k = (k - (D-1)/2) * det_spacing, γ = atan(u / D_sd).
- Sinogram values are line integrals in millimetres times the image value (mm · value): a
  finer grid of the same physical object gives the same sinogram.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from ..errors import ScoreinvError, check_choice, check_int, check_range


def _angles_array(angles, name: str = "angles") -> np.ndarray:
    try:
        a = np.asarray(angles.detach().cpu().numpy() if hasattr(angles, "detach") else angles, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ScoreinvError(f"{name}: expected a 1-D array of angles in radians ({e})") from None
    if a.ndim != 1 or a.size == 0:
        raise ScoreinvError(f"{name}: expected a non-empty 1-D array of angles in radians, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ScoreinvError(f"{name}: contains NaN or Inf; expected finite angles in radians")
    a = a.copy()
    a.setflags(write=False)
    return a


def _check_size(n) -> int:
    return check_int("image size N", n, 2)


def _check_factor(f) -> int:
    return check_int("refinement factor", f)


def _parity_at_least(v: float, like: int) -> int:
    """Smallest integer >= v with the parity of `like`."""
    d = int(math.ceil(v - 1e-9))
    return d if d % 2 == like % 2 else d + 1


def dense_angles(n: int, arc: float = math.pi) -> np.ndarray:
    """The dense angle set: n angles equally spaced over [0, arc) (radians), shape (n,)."""
    n = check_int("number of angles n", n)
    check_range("arc", arc, 1e-9, 4 * math.pi)
    return np.arange(n, dtype=np.float64) * (arc / n)


def sparse_view_indices(n_dense: int, n_views: int) -> np.ndarray:
    """Rows of the dense set that a sparse-view scan measures: round(linspace(0, n_dense-1, n_views)).

    Same selection as the reference implementation (NumPy's round-half-to-even), shape (n_views,).
    """
    n_views = check_int("views", n_views, 1, n_dense)
    idx = np.round(np.linspace(0, n_dense - 1, int(n_views))).astype(np.int64)
    return idx


def sparse_view_angles(n: int, n_views: int) -> np.ndarray:
    """Angles of a sparse-view scan: dense_angles(n)[sparse_view_indices(n, n_views)], (n_views,)."""
    return dense_angles(n)[sparse_view_indices(n, n_views)]


def limited_angles(n_views: int, arc: float, start: float = 0.0) -> np.ndarray:
    """A limited-angle scan: n_views angles equally spaced over the contiguous arc [start, start+arc)."""
    n_views = check_int("views", n_views)
    check_range("arc", arc, 1e-9, 2 * math.pi)
    return start + np.arange(n_views, dtype=np.float64) * (arc / n_views)


class _Geometry:
    """Shared parts of the parallel and fan geometries (image grid, angles, detector)."""

    kind = "geometry"

    def _init_grid(self, n, angles, pixel_size, center):
        self.n = _check_size(n)
        self._angles = _angles_array(angles)   # read-only: the geometry key hashes it
        self.pixel_size = check_range("pixel_size", pixel_size, 1e-12)
        if center is None:
            center = ((self.n - 1) / 2.0, (self.n - 1) / 2.0)
        c = np.asarray(center, dtype=np.float64)
        if c.shape != (2,) or not np.isfinite(c).all():
            raise ScoreinvError(f"center: expected (row, col) in pixel units, got {center!r}")
        self.center = (float(c[0]), float(c[1]))

    @property
    def angles(self) -> np.ndarray:
        """View (parallel) or source (fan) angles in radians, shape (V,) (a fresh copy)."""
        return self._angles.copy()

    @property
    def n_views(self) -> int:
        return int(self._angles.size)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def rotation_center_mm(self) -> np.ndarray:
        """Rotation centre (x, y) in mm relative to the image centre, shape (2,)."""
        h = (self.n - 1) / 2.0
        return np.array([(self.center[1] - h) * self.pixel_size, (h - self.center[0]) * self.pixel_size])

    def pixel_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every pixel centre in mm, each of shape (N*N,), row-major."""
        h = (self.n - 1) / 2.0
        c = (np.arange(self.n) - h) * self.pixel_size
        x = np.broadcast_to(c[None, :], (self.n, self.n)).reshape(-1)
        y = np.broadcast_to(-c[:, None], (self.n, self.n)).reshape(-1)
        return x, y

    def _refined_center(self, factor: int) -> tuple[float, float]:
        return tuple((c + 0.5) * factor - 0.5 for c in self.center)

    @property
    def key(self) -> tuple:
        """Hashable identity of the geometry (used to cache system matrices)."""
        h = hashlib.sha1(np.ascontiguousarray(self._angles).tobytes()).hexdigest()
        return (self.kind, self.n, self.pixel_size, self.center, h) + self._detector_key()

    def __eq__(self, other):
        return isinstance(other, _Geometry) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


class ParallelGeometry(_Geometry):
    """2-D parallel-beam geometry.

    Args:
        n: image size N (N x N pixels).
        angles: view angles θ in radians, shape (V,).
        pixel_size: pixel side in mm (default 1).
        n_det: detector bins D (default: the smallest count >= √2 N pixel_size / det_spacing,
            which covers the image diagonal, with the parity of N, so that with the default
            centre and unit spacing the bin centres fall on pixel centres at θ = 0; e.g. 364
            for N = 256, where ⌈√2 N⌉ = 363 would put every pixel centre on a bin edge).
        det_spacing: bin width in mm (default pixel_size).
        center: rotation centre (row, col) in pixel-index units (default the image centre).
    """

    kind = "parallel"

    def __init__(self, n: int, angles, pixel_size: float = 1.0, n_det: int | None = None,
                 det_spacing: float | None = None, center=None):
        self._init_grid(n, angles, pixel_size, center)
        self.det_spacing = check_range("det_spacing", self.pixel_size if det_spacing is None else det_spacing, 1e-12)
        if n_det is None:
            n_det = _parity_at_least(math.sqrt(2.0) * self.n * self.pixel_size / self.det_spacing, self.n)
        self.n_det = check_int("detector bins n_det", n_det)

    def _detector_key(self) -> tuple:
        return (self.n_det, self.det_spacing)

    @property
    def det_positions(self) -> np.ndarray:
        """Bin centres s_k in mm, shape (D,)."""
        return (np.arange(self.n_det) - (self.n_det - 1) / 2.0) * self.det_spacing

    def with_angles(self, angles) -> "ParallelGeometry":
        """The same geometry with another angle set."""
        return ParallelGeometry(self.n, angles, self.pixel_size, self.n_det, self.det_spacing, self.center)

    def refine(self, factor: int) -> "ParallelGeometry":
        """The same physical scan on a grid `factor` times finer (same detector and angles)."""
        f = _check_factor(factor)
        return ParallelGeometry(self.n * f, self.angles, self.pixel_size / f, self.n_det,
                                self.det_spacing, self._refined_center(f))

    def rays(self, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Ray of every (view, bin): a point on it and its unit direction, each (V, D, 2) in mm.

        `offset` shifts the rays by that fraction of a bin (for sub-bin sampling).
        """
        th = self.angles[:, None]
        s = (self.det_positions[None, :] + offset * self.det_spacing)
        c = self.rotation_center_mm
        pts = np.stack([c[0] + s * np.cos(th), c[1] + s * np.sin(th)], -1)
        d = np.stack(np.broadcast_arrays(-np.sin(th), np.cos(th)), -1)
        return pts, np.broadcast_to(d, pts.shape).copy()

    def __repr__(self):
        return (f"ParallelGeometry(n={self.n}, views={self.n_views}, pixel_size={self.pixel_size:g} mm, "
                f"n_det={self.n_det}, det_spacing={self.det_spacing:g} mm)")


class FanGeometry(_Geometry):
    """2-D fan-beam geometry (circular source orbit).

    Args:
        n, pixel_size, center: the image grid as in `ParallelGeometry`.
        angles: source angles β in radians, shape (V,) (a full scan covers [0, 2π)).
        source_distance: R, source to rotation centre in mm (default 2 N pixel_size).
        detector_distance: D_sd, source to detector in mm (default 2 R).
        detector: 'equiangular' (curved, bins equally spaced in angle) or 'flat'.
        det_spacing: bin width in mm at the detector (default pixel_size * D_sd / R: one pixel
            at the rotation centre).
        n_det: detector bins (default: the smallest count with the parity of N that covers the
            circle around the image).
    """

    kind = "fan"

    def __init__(self, n: int, angles, pixel_size: float = 1.0, source_distance: float | None = None,
                 detector_distance: float | None = None, detector: str = "equiangular",
                 n_det: int | None = None, det_spacing: float | None = None, center=None):
        self._init_grid(n, angles, pixel_size, center)
        self.detector = check_choice("detector", detector, ("equiangular", "flat"))
        r = 2.0 * self.n * self.pixel_size if source_distance is None else source_distance
        self.source_distance = check_range("source_distance", r, 1e-12)
        rmax = self.fov_radius
        if self.source_distance <= rmax:
            raise ScoreinvError(f"source_distance = {self.source_distance:g} mm lies inside the image; "
                                f"expected more than {rmax:g} mm (the half-diagonal around the rotation centre)")
        dsd = 2.0 * self.source_distance if detector_distance is None else detector_distance
        self.detector_distance = check_range("detector_distance", dsd, self.source_distance)
        sp = self.pixel_size * self.detector_distance / self.source_distance if det_spacing is None else det_spacing
        self.det_spacing = check_range("det_spacing", sp, 1e-12)
        if n_det is None:
            gmax = math.asin(rmax / self.source_distance)
            if self.detector == "equiangular":
                half = gmax / self.det_angle
            else:
                half = self.detector_distance * math.tan(gmax) / self.det_spacing
            n_det = _parity_at_least(2 * half + 1, self.n)
        self.n_det = check_int("detector bins n_det", n_det)
        if self.detector == "equiangular" and (self.n_det * self.det_angle) / 2 >= math.pi / 2:
            raise ScoreinvError("equiangular detector spans a fan of 180 degrees or more; reduce n_det or det_spacing")

    @property
    def fov_radius(self) -> float:
        """Radius (mm) around the rotation centre of the circle that holds the whole image."""
        c = self.rotation_center_mm
        h = self.n * self.pixel_size / 2.0
        return float(max(math.hypot(abs(c[0]) + h, abs(c[1]) + h), 1e-12))

    @property
    def det_angle(self) -> float:
        """Δγ of an equiangular detector (radians per bin)."""
        return self.det_spacing / self.detector_distance

    def _detector_key(self) -> tuple:
        return (self.n_det, self.det_spacing, self.detector, self.source_distance, self.detector_distance)

    def fan_angles(self, offset: float = 0.0) -> np.ndarray:
        """Fan angle γ of every bin centre (shifted by `offset` bins), shape (D,)."""
        k = np.arange(self.n_det) - (self.n_det - 1) / 2.0 + offset
        if self.detector == "equiangular":
            return k * self.det_angle
        return np.arctan(k * self.det_spacing / self.detector_distance)

    def sources(self) -> np.ndarray:
        """Source positions (x, y) in mm, shape (V, 2)."""
        c = self.rotation_center_mm
        b = self.angles
        return np.stack([c[0] + self.source_distance * np.sin(b), c[1] - self.source_distance * np.cos(b)], -1)

    def rays(self, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Ray of every (view, bin): its source point and unit direction, each (V, D, 2) in mm."""
        b = self.angles[:, None]
        g = self.fan_angles(offset)[None, :]
        src = np.broadcast_to(self.sources()[:, None, :], (self.n_views, self.n_det, 2)).copy()
        d = np.stack([-np.sin(b) * np.cos(g) + np.cos(b) * np.sin(g),
                      np.cos(b) * np.cos(g) + np.sin(b) * np.sin(g)], -1)
        return src, d

    def with_angles(self, angles) -> "FanGeometry":
        return FanGeometry(self.n, angles, self.pixel_size, self.source_distance, self.detector_distance,
                           self.detector, self.n_det, self.det_spacing, self.center)

    def refine(self, factor: int) -> "FanGeometry":
        """The same physical scan on a grid `factor` times finer (same source, detector, angles)."""
        f = _check_factor(factor)
        return FanGeometry(self.n * f, self.angles, self.pixel_size / f, self.source_distance,
                           self.detector_distance, self.detector, self.n_det, self.det_spacing,
                           self._refined_center(f))

    def __repr__(self):
        return (f"FanGeometry(n={self.n}, views={self.n_views}, {self.detector}, R={self.source_distance:g} mm, "
                f"D_sd={self.detector_distance:g} mm, n_det={self.n_det})")
