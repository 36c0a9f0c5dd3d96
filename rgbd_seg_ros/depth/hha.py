"""HHA encoding (Gupta et al. 2014): horizontal disparity, height above the lowest point, angle to gravity.

This reproduces the reference definitions of Gupta's MATLAB ``saveHHA`` and its Python port
(Depth2HHA-python), vectorised: every window sum is a box / separable filter, so a 480×640 frame takes
milliseconds instead of seconds. Definitions (all constants live in :class:`HHAParams`):

* **Normals** — least-squares plane ``N·p = 1`` through the valid points of a (2R+1)² window around each
  pixel (R = 3 for the angle channel, R = 10 for gravity), windows clipped at the image border, the
  solution taken as ``adj(AᵀA)·Aᵀb`` and normalised (NaN where it vanishes), then oriented so ``N·p ≥ 0``
  (by ``sign(N_z)`` where the pixel has no depth). We solve the same system in window-local pixel
  coordinates, ``(a, b, 1)`` instead of the rays ``(x/z, y/z, 1)``; the two are related by a fixed
  invertible map with positive determinant, so the normalised normal is the same (and float32 suffices).
  Deviation: where a window's valid pixels are collinear the plane is undetermined and the reference
  normalises float64 rounding noise (a random normal); we return NaN there (→ the missing angle).
* **Gravity** — from ``(0, 1, 0)``, two stages with thresholds 45° then 15°, 5 iterations each: "floor"
  normals have ``|n·y| > cos θ``, "wall" normals ``|n·y| < sin θ``; ``y`` becomes the eigenvector of the
  smallest eigenvalue of ``Σ_wall nnᵀ − Σ_floor nnᵀ`` with its sign kept. One deviation: where that
  eigenvalue is (nearly) degenerate — e.g. a single wall and no floor, where the reference returns an
  arbitrary vector of the null space — we take the previous ``y`` projected onto the degenerate eigenspace.
* **Channels** (``np.rint``, clipped to 0..255, uint8, order disparity, height, angle):
  disparity ``31000 / max(z_cm, 100)``; height ``h − min(h)`` with ``h = −g·p`` in cm, where the lowest point
  counts as the floor only if it is ≥ 90 cm below the camera (else the camera is assumed 130 cm up);
  angle ``acosd(N·g) + 38``, with 180° for undefined normals. Pixels without depth are the points
  ``(0, 0, 0)`` as the reference sees its zero-depth pixels: disparity saturates, the height is the
  camera's. Like the reference, ``g`` within 0.1° of ``(0, 1, 0)`` is replaced by ``(0, 1, 0)`` for the height.

Pixel coordinates: the reference back-projects with 1-based pixel indices, ``x = (u₁ − cx) z / fx``. We use
the library's 0-based convention, ``x = (u − cx) z / fx``; to reproduce the reference's numbers with the
reference's ``K``, pass ``CameraIntrinsics(fx, fy, cx − 1, cy − 1, …)``. With ``cx``/``cy`` that are truly
0-based (``CameraInfo``) no shift is needed.

Gravity convention: a unit 3-vector, the direction gravity pulls, in the camera optical frame (x right,
y down, z forward), so a level camera gives ``(0, 1, 0)``.

A torch implementation (:func:`compute_hha_torch`, :func:`estimate_gravity_torch`) runs on the tensors' device
(GPU when present). The maths exists once: the normal solve (:func:`_solve_normals`) and the channel formula
(:func:`_channels`) take the array namespace (``numpy`` or ``torch``); each backend only supplies its window
sums, gravity sums and rounding.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from rgbd_seg_ros.depth.points import check_size, pixel_rays, sanitize_depth
from rgbd_seg_ros.frames import CameraIntrinsics

if TYPE_CHECKING:
    import torch

LEVEL_GRAVITY = (0.0, 1.0, 0.0)


class GravityEstimationError(ValueError):
    """Gravity cannot be estimated from the depth image (no surface normal could be fitted)."""


@dataclass(frozen=True)
class HHAParams:
    """The HHA constants; the defaults are the NYUv2 reference values (Gupta et al. / Depth2HHA).

    Attributes:
        disparity_numerator: disparity channel = ``disparity_numerator / max(z_cm, min_depth_cm)``.
        min_depth_cm: depth (cm) below which the disparity channel saturates.
        height_scale: height channel units per cm above the lowest point.
        floor_min_drop_cm: the lowest point is taken as the floor only if it is at least this far below the
            camera (cm) ...
        camera_height_cm: ... otherwise the floor is assumed this far below the camera.
        angle_scale: angle channel units per degree between the normal and gravity.
        angle_offset: added to the angle channel (128 − 90 = 38 in the reference).
        missing_angle_deg: the angle (degrees, before scale and offset) of pixels without a normal.
        normal_radius: window radius R (window (2R+1)²) of the normals of the angle channel.
        gravity_radius: window radius of the normals used to estimate gravity.
        gravity_thresholds_deg: floor/wall angle threshold of each gravity stage.
        gravity_iterations: iterations of each gravity stage.
        gravity_gap_ratio: the smallest eigenvalue counts as degenerate when the next one is within this
            fraction of the number of normals used (our guard, not in the reference; see module docstring).
        gravity_stride: use the gravity normals of every ``stride``-th row and column only (1 = all pixels,
            the reference; 2 is ~4× cheaper, see :func:`estimate_gravity`).
    """

    disparity_numerator: float = 31000.0
    min_depth_cm: float = 100.0
    height_scale: float = 1.0
    floor_min_drop_cm: float = 90.0
    camera_height_cm: float = 130.0
    angle_scale: float = 1.0
    angle_offset: float = 38.0
    missing_angle_deg: float = 180.0
    normal_radius: int = 3
    gravity_radius: int = 10
    gravity_thresholds_deg: tuple[float, ...] = (45.0, 15.0)
    gravity_iterations: tuple[int, ...] = (5, 5)
    gravity_gap_ratio: float = 0.01
    gravity_stride: int = 1

    def __post_init__(self) -> None:
        counts = {k: int(getattr(self, k)) for k in ("normal_radius", "gravity_radius", "gravity_stride")}
        thresholds = tuple(float(t) for t in self.gravity_thresholds_deg)
        iterations = tuple(int(i) for i in self.gravity_iterations)
        if min(counts.values()) < 1:
            raise ValueError(f"HHA window radii and gravity_stride must be ≥ 1, got {counts}")
        if len(thresholds) != len(iterations) or not all(0 < t < 90 for t in thresholds):
            raise ValueError(f"gravity stages need thresholds in (0, 90)° and one iteration count each, got {self}")
        if not (self.min_depth_cm > 0 and self.gravity_gap_ratio >= 0):
            raise ValueError(f"HHA needs min_depth_cm > 0 and gravity_gap_ratio ≥ 0, got {self}")
        for name, value in {**counts, "gravity_thresholds_deg": thresholds, "gravity_iterations": iterations}.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, float]]) -> HHAParams:
        """From ``InputSpec.hha_params`` (``(name, value)`` pairs of the scalar fields)."""
        scalar = {f.name for f in fields(cls)} - {"gravity_thresholds_deg", "gravity_iterations"}
        kwargs = dict(pairs)
        unknown = set(kwargs) - scalar
        if unknown:
            raise ValueError(f"unknown HHA parameter(s) {sorted(unknown)}; known: {sorted(scalar)}")
        return cls(**kwargs)


def _fit_mask(depth: np.ndarray, raw_depth_m: np.ndarray | None) -> np.ndarray:
    """Pixels whose points enter the plane fits: valid in ``depth`` and (when given) in the raw depth."""
    valid = np.isfinite(depth)
    if raw_depth_m is not None:
        raw = sanitize_depth(raw_depth_m, "raw_depth_m")
        if raw.shape != depth.shape:
            raise ValueError(f"raw_depth_m has shape {raw.shape}, depth_m has {depth.shape}")
        valid &= np.isfinite(raw)
    return valid


def _unit_gravity(gravity: Iterable[float]) -> np.ndarray:
    g = np.asarray(gravity, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(g)) if g.size == 3 else 0.0
    if not (np.isfinite(g).all() and norm > 0):
        raise ValueError(f"gravity must be a finite non-zero 3-vector, got {gravity!r}")
    return g / norm


# -- normals (NumPy) ------------------------------------------------------------------------------------------
def _window_moments(mask: np.ndarray, inv_z: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
    """Window sums around each pixel, offsets (a, b) ∈ [−R, R]², zero outside the image.

    Returns ``s00, s10, s01, s20, s11, s02`` (Σ m a^i b^j of the float32 fit mask m) and ``t0, t10, t01``
    (Σ w a^i b^j of ``inv_z``), each float32 H×W; computed as separable 1-D passes (exact for the mask).
    """
    a = np.arange(-radius, radius + 1, dtype=np.float32)
    kernels = (np.ones_like(a), a, a * a)  # orders 0, 1, 2

    def row(img: np.ndarray, order: int) -> np.ndarray:
        return cv2.filter2D(img, cv2.CV_32F, kernels[order][None, :], borderType=cv2.BORDER_CONSTANT)

    def col(img: np.ndarray, order: int) -> np.ndarray:
        return cv2.filter2D(img, cv2.CV_32F, kernels[order][:, None], borderType=cv2.BORDER_CONSTANT)

    m0, m1, m2, w0, w1 = row(mask, 0), row(mask, 1), row(mask, 2), row(inv_z, 0), row(inv_z, 1)
    return (
        col(m0, 0), col(m1, 0), col(m0, 1), col(m2, 0), col(m1, 1), col(m0, 2),
        col(w0, 0), col(w1, 0), col(w0, 1),
    )  # fmt: skip


def _solve_normals(moments, xr, yr, has_depth, fx: float, fy: float, xp=np, orient: bool = True):
    """Normals from window moments (NumPy or torch via ``xp``); see the module docstring. Returns (nx, ny, nz).

    ``orient=False`` skips the sign convention (gravity only needs the normals' lines).
    """
    s00, s10, s01, s20, s11, s02, t0, t10, t01 = moments
    # adj(L) of L = [[s20, s11, s10], [s11, s02, s01], [s10, s01, s00]] (symmetric).
    c00, c01, c02 = s02 * s00 - s01 * s01, s10 * s01 - s11 * s00, s11 * s01 - s10 * s02
    c11, c12, c22 = s20 * s00 - s10 * s10, s11 * s10 - s20 * s01, s20 * s02 - s11 * s11
    # det(L) is a sum of squared integer 3×3 minors: ≥ 1 unless the window's valid pixels are collinear, where
    # the plane is undetermined (the reference then normalises rounding noise; we return NaN).
    singular = s20 * c00 + s11 * c01 + s10 * c02 < 0.5
    lx = c00 * t10 + c01 * t01 + c02 * t0
    ly = c01 * t10 + c11 * t01 + c12 * t0
    lz = c02 * t10 + c12 * t01 + c22 * t0
    # Back from window-local (a, b, 1) to ray coordinates: N = P⁻ᵀ·l with P = [[1/fx, 0, x], [0, 1/fy, y], [0, 0, 1]].
    nx, ny = fx * lx, fy * ly
    nz = lz - (xr * fx) * lx - (yr * fy) * ly
    inv = 1 / xp.sqrt(nx * nx + ny * ny + nz * nz)
    inv = xp.where(singular, xp.nan, inv)
    if orient:  # N·p ≥ 0; N·p has the sign of lz where the pixel has depth, else the reference uses sign(N_z)
        inv = xp.where(xp.where(has_depth & (lz != 0), lz < 0, nz < 0), -inv, inv)
    return nx * inv, ny * inv, nz * inv  # 0·inf = NaN where the solution vanishes


_BLOCK_ROWS = 64  # the solve runs on row blocks: its ~60 temporaries stay in cache


class _FitInputs(NamedTuple):
    """What every normal fit of one frame needs, prepared once (each H×W)."""

    has_depth: np.ndarray  # bool: the pixel has a point (orients its normal)
    mask: np.ndarray  # float32 1/0: the pixel enters the plane fits
    inv_z: np.ndarray  # float32 z_ref / z on fit pixels, else 0


def _fit_inputs(depth: np.ndarray, fit: np.ndarray) -> _FitInputs:
    has_depth = np.isfinite(depth)
    z_ref = np.float32(np.nanmin(depth)) if has_depth.any() else np.float32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # w = z_ref / z: a positive rescaling of 1/z (the fit is scale-free) that keeps float32 in range.
        inv_z = np.divide(z_ref, depth, dtype=np.float32)
    inv_z[~fit] = 0
    return _FitInputs(has_depth, fit.astype(np.float32), inv_z)


def _normals_np(
    inputs: _FitInputs, intrinsics: CameraIntrinsics, radius: int, stride: int = 1, orient: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal planes (nx, ny, nz), each float32 H×W — or only every ``stride``-th row and column."""
    has_depth = inputs.has_depth
    planes = tuple(np.empty(has_depth[::stride, ::stride].shape, np.float32) for _ in range(3))
    xr, yr = pixel_rays(intrinsics)
    xr = xr[:, ::stride]
    moments = _window_moments(inputs.mask, inputs.inv_z, radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        for r0 in range(0, has_depth.shape[0], _BLOCK_ROWS):
            rows = slice(r0, r0 + _BLOCK_ROWS, stride)
            block = [m[rows, ::stride] for m in moments]
            sub = has_depth[rows, ::stride]
            normal = _solve_normals(block, xr, yr[rows], sub, intrinsics.fx, intrinsics.fy, orient=orient)
            out_rows = slice(r0 // stride, r0 // stride + block[0].shape[0])
            for plane, value in zip(planes, normal):
                plane[out_rows] = value
    return planes


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _background() -> ThreadPoolExecutor | None:
    """The process's HHA helper thread, or None where OpenCV is pinned to one thread (e.g. data-loader workers).

    :func:`compute_hha` fits the angle channel's normals there while the calling thread estimates gravity:
    the two are independent, and NumPy and OpenCV release the GIL, so two cores finish ~25 % sooner.
    """
    global _pool
    if cv2.getNumThreads() < 2:
        return None
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="hha")
        return _pool


def _forget_pool() -> None:  # a forked child has the executor object but not its thread
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def surface_normals(
    depth_m: np.ndarray, intrinsics: CameraIntrinsics, radius: int = 3, raw_depth_m: np.ndarray | None = None
) -> np.ndarray:
    """Unit surface normals (camera frame) by plane fits over (2·radius+1)² windows, as HHA defines them.

    Args:
        depth_m: H×W float metres (NaN/inf/≤0 invalid): the points.
        intrinsics: of this image.
        radius: window radius R.
        raw_depth_m: optional raw depth; pixels invalid there are left out of the fits (the reference's
            ``missingMask``) while ``depth_m`` still orients the normals.

    Returns:
        float32 H×W×3, oriented so that ``N·p ≥ 0``, NaN where no plane could be fitted.
    """
    depth = sanitize_depth(depth_m)
    check_size(depth.shape, intrinsics)
    inputs = _fit_inputs(depth, _fit_mask(depth, raw_depth_m))
    return np.stack(_normals_np(inputs, intrinsics, int(radius)), axis=-1)


# -- gravity (shared iteration) -------------------------------------------------------------------------------
def _smallest_direction(a6: np.ndarray, count: int, y: np.ndarray, gap_ratio: float) -> np.ndarray:
    """Eigenvector of the smallest eigenvalue of the symmetric A (6 unique entries), sign-aligned with ``y``."""
    if count == 0:
        return y
    a = np.array([[a6[0], a6[1], a6[2]], [a6[1], a6[3], a6[4]], [a6[2], a6[4], a6[5]]], dtype=np.float64)
    w, v = np.linalg.eigh(a)
    space = v[:, w <= w[0] + gap_ratio * count]
    if space.shape[1] == 3:
        return y
    proj = space @ (space.T @ y)
    norm = float(np.linalg.norm(proj))
    if space.shape[1] == 1 or norm < 1e-6:
        v0 = v[:, 0]
        return v0 if float(v0 @ y) >= 0 else -v0
    return proj / norm


def _iterate_gravity(
    accumulate: Callable[[np.ndarray, float, float], tuple[np.ndarray, int]],
    params: HHAParams,
    prior: Iterable[float],
) -> np.ndarray:
    """The two-stage iteration; ``accumulate(y, cos θ, sin θ)`` returns (Σ_wall nnᵀ − Σ_floor nnᵀ as 6, count)."""
    y = _unit_gravity(prior)
    for thresh, iters in zip(params.gravity_thresholds_deg, params.gravity_iterations):
        cos_t, sin_t = math.cos(math.radians(thresh)), math.sin(math.radians(thresh))
        previous = None
        for _ in range(iters):
            a6, count = accumulate(y, cos_t, sin_t)
            if previous is not None and np.array_equal(a6, previous):
                break  # same sets as last time: y is already the fixed point of this stage
            previous = a6
            y = _smallest_direction(a6, count, y, params.gravity_gap_ratio)
    return y


class _GravitySums:
    """``Σ_wall nnᵀ − Σ_floor nnᵀ`` (as 6 unique entries) and ``|wall| + |floor|`` for a direction ``y``, exactly.

    Speed-up without approximation: a normal's angle to the line of ``y`` moves by at most the angle between
    ``y`` and a reference ``y_r``. So while ``∠(y, y_r) ≤ α``, normals whose angle at ``y_r`` is more than
    ``α`` from both class boundaries keep their class; their sum is computed once per reference and only the
    few normals near a boundary are re-classified at each iteration.
    """

    ALPHA = math.radians(2.0)
    SLACK = 1e-4  # rad, covers float32 rounding of n·y

    def __init__(self, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> None:
        self.n = (nx, ny, nz)
        self.outer = (nx * nx, nx * ny, nx * nz, ny * ny, ny * nz, nz * nz)
        self.key: tuple | None = None

    @staticmethod
    def _abs_cos(n, y: np.ndarray) -> np.ndarray:
        sim = n[0] * np.float32(y[0])
        sim += n[1] * np.float32(y[1])
        sim += n[2] * np.float32(y[2])
        return np.abs(sim, out=sim)

    @staticmethod
    def _sums(outer, weight: np.ndarray) -> np.ndarray:
        # 1-D dot products: a threaded BLAS gemv stalls badly on a busy machine.
        return np.array([np.dot(o, weight) for o in outer], np.float64)

    def _rebase(self, y: np.ndarray, thresh: float) -> None:
        a = self.ALPHA + self.SLACK
        sim = self._abs_cos(self.n, y)
        sure_wall, sure_floor = sim < math.sin(thresh - a), sim > math.cos(thresh - a)
        near = ((sim <= math.sin(thresh + a)) & ~sure_wall) | ((sim >= math.cos(thresh + a)) & ~sure_floor)
        weight = np.subtract(sure_wall, sure_floor, dtype=np.float32)
        self.base = self._sums(self.outer, weight), int(np.count_nonzero(weight))
        idx = np.flatnonzero(near)
        self.near_n = tuple(c[idx] for c in self.n)
        self.near_outer = tuple(o[idx] for o in self.outer)
        self.key, self.y_ref = thresh, y

    def __call__(self, y: np.ndarray, cos_t: float, sin_t: float) -> tuple[np.ndarray, int]:
        thresh = math.acos(cos_t)
        if self.key != thresh or math.acos(min(1.0, abs(float(y @ self.y_ref)))) > self.ALPHA:
            self._rebase(y, thresh)
        sim = self._abs_cos(self.near_n, y)
        weight = np.subtract(sim < sin_t, sim > cos_t, dtype=np.float32)  # wall +1, floor −1
        return self.base[0] + self._sums(self.near_outer, weight), self.base[1] + int(np.count_nonzero(weight))


def _gravity_np(inputs: _FitInputs, intrinsics: CameraIntrinsics, params: HHAParams, prior: Iterable[float]):
    planes = _normals_np(inputs, intrinsics, params.gravity_radius, params.gravity_stride, orient=False)
    keep = np.isfinite(planes[0]).ravel()
    if not keep.any():
        raise GravityEstimationError(
            "no surface normal could be fitted (too little valid depth): pass gravity explicitly, e.g. from an IMU"
        )
    return _iterate_gravity(_GravitySums(*(p.ravel()[keep] for p in planes)), params, prior)


def estimate_gravity(
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    *,
    raw_depth_m: np.ndarray | None = None,
    params: HHAParams | None = None,
    prior: Iterable[float] = LEVEL_GRAVITY,
) -> np.ndarray:
    """Gravity direction from the depth image's floor and wall normals (the reference's two-stage estimate).

    Args:
        depth_m: H×W float metres, NaN/inf/≤0 invalid.
        intrinsics: of this image.
        raw_depth_m: optional raw depth; pixels invalid there are left out of the normal fits.
        params: HHA constants (window radius, thresholds, iterations).
        prior: starting direction (camera frame); ``(0, 1, 0)`` is the reference's.

    Returns:
        float64 unit 3-vector: the direction gravity pulls, in the camera optical frame.

    Raises:
        GravityEstimationError: when not a single normal can be fitted (e.g. an all-invalid frame).

    ``params.gravity_stride=2`` fits the R = 10 normals at every second row and column only: about half the
    time of the full estimate, and on synthetic scenes the same accuracy against the true gravity, but it
    departs from the reference by a few hundredths of a degree (HHA pixels change by ±1 at ~1 %).
    """
    params = params or HHAParams()
    depth = sanitize_depth(depth_m)
    check_size(depth.shape, intrinsics)
    return _gravity_np(_fit_inputs(depth, _fit_mask(depth, raw_depth_m)), intrinsics, params, prior)


# -- channels -------------------------------------------------------------------------------------------------
def _height_gravity(g: np.ndarray) -> np.ndarray:
    """The reference skips its rotation when g is within 0.1° of (0, 1, 0)."""
    phi = math.degrees(math.acos(max(-1.0, min(1.0, float(g[1])))))
    return np.array(LEVEL_GRAVITY) if abs(phi) <= 0.1 else g


def _channels(xp, z_cm, normals, rays, gravity, height_gravity, p: HHAParams):
    """The HHA formula (see the module docstring), written once for both backends: (disparity, height, angle)
    as float planes before rounding.

    ``xp`` is ``numpy`` (one H×W frame; gravity components Python floats) or ``torch`` (B×H×W; components
    B×1×1 tensors). ``z_cm``: depth in cm, 0 where invalid; ``normals``: (nx, ny, nz) planes; ``rays``:
    ``(u − cx)/fx`` per column and ``(v − cy)/fy`` per row; ``gravity`` for the angle, ``height_gravity``
    (:func:`_height_gravity`) for the height.
    """
    nx, ny, nz = normals
    xr, yr = rays
    gx, gy, gz = gravity
    hx, hy, hz = height_gravity
    height = -z_cm * (hx * xr + hy * yr + hz)  # −g·p in cm, p = z·(x ray, y ray, 1)
    floor = xp.amin(height, axis=(-2, -1), keepdims=True)  # lowest point of each frame
    floor = xp.where(floor > -p.floor_min_drop_cm, -p.camera_height_cm, floor)  # no floor in view: camera height
    angle = xp.rad2deg(xp.arccos(xp.clip(nx * gx + ny * gy + nz * gz, -1.0, 1.0)))
    angle = xp.where(xp.isnan(angle), p.missing_angle_deg, angle)  # no normal
    disparity = p.disparity_numerator / xp.clip(z_cm, p.min_depth_cm, None)
    return disparity, (height - floor) * p.height_scale, angle * p.angle_scale + p.angle_offset


def compute_hha(
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    gravity: Iterable[float] | None = None,
    raw_depth_m: np.ndarray | None = None,
    params: HHAParams | None = None,
) -> np.ndarray:
    """HHA image of a depth frame.

    Args:
        depth_m: H×W float metres (usually hole-filled), NaN/inf/≤0 invalid.
        intrinsics: of this image.
        gravity: unit 3-vector, direction gravity pulls in the camera frame (e.g. from an IMU); None estimates
            it with :func:`estimate_gravity`.
        raw_depth_m: the raw depth before filling; its invalid pixels are left out of the normal fits (the
            reference's ``RD``). None uses ``depth_m``'s own validity.
        params: HHA constants; default the NYUv2 reference.

    Returns:
        uint8 H×W×3, channels (disparity, height, angle).

    Raises:
        GravityEstimationError: if ``gravity`` is None and cannot be estimated (no normal can be fitted).

    When gravity is estimated and OpenCV may use two or more threads, the angle channel's normals are fitted on
    a helper thread meanwhile (same result; ~22 instead of ~30 ms per 480×640 frame on 2 cores).
    """
    p = params or HHAParams()
    depth = sanitize_depth(depth_m)
    check_size(depth.shape, intrinsics)
    inputs = _fit_inputs(depth, _fit_mask(depth, raw_depth_m))
    if gravity is None:
        pool = _background()
        pending = pool.submit(_normals_np, inputs, intrinsics, p.normal_radius) if pool else None
        g = _gravity_np(inputs, intrinsics, p, LEVEL_GRAVITY)
        nx, ny, nz = pending.result() if pending else _normals_np(inputs, intrinsics, p.normal_radius)
    else:
        g = _unit_gravity(gravity)
        nx, ny, nz = _normals_np(inputs, intrinsics, p.normal_radius)
    z_cm = np.where(np.isfinite(depth), depth * np.float32(100), np.float32(0))
    planes = _channels(np, z_cm, (nx, ny, nz), pixel_rays(intrinsics), _floats(g), _floats(_height_gravity(g)), p)
    return cv2.merge([_round_uint8(c) for c in planes])


def _floats(v: np.ndarray) -> tuple[float, ...]:
    """Python floats: they keep float32 arithmetic float32 (a NumPy float64 scalar would promote it)."""
    return tuple(float(x) for x in v)


def _round_uint8(plane: np.ndarray) -> np.ndarray:
    """float32 → uint8 as ``np.clip(np.rint(x), 0, 255)`` (OpenCV's saturating cast rounds half to even)."""
    return cv2.add(plane, 0.0, dtype=cv2.CV_8U)


# -- torch: the same maths on the tensors' device ----------------------------------------------------------------
def _torch_rays(intrinsics: CameraIntrinsics, device, dtype):
    import torch

    xr, yr = pixel_rays(intrinsics)  # read-only arrays: copy
    return tuple(torch.tensor(np.array(r), device=device, dtype=dtype) for r in (xr, yr))


def _as_batch(depth: torch.Tensor, name: str) -> torch.Tensor:
    """B×H×W float32 with NaN for every non-finite or non-positive value."""
    import torch

    if not isinstance(depth, torch.Tensor) or not depth.is_floating_point() or depth.dim() not in (2, 3):
        raise TypeError(f"{name} must be a float tensor H×W or B×H×W of metres")
    d = depth.to(torch.float32)
    d = d.unsqueeze(0) if d.dim() == 2 else d
    return torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, float("nan")))


def _normals_torch(
    depth: torch.Tensor, fit: torch.Tensor, intrinsics: CameraIntrinsics, radius: int, stride: int = 1, orient=True
):
    """B×H×W depth and fit mask → normal planes (nx, ny, nz), each B×H×W (every ``stride``-th pixel), float32."""
    import torch
    import torch.nn.functional as F

    b, h, w = depth.shape
    dev = depth.device
    has_depth = torch.isfinite(depth)
    flat = torch.where(has_depth, depth, torch.full_like(depth, float("inf"))).reshape(b, -1)
    z_ref = flat.amin(1)
    z_ref = torch.where(torch.isfinite(z_ref), z_ref, torch.ones_like(z_ref)).view(b, 1, 1)
    inv_z = torch.where(fit, z_ref / torch.where(fit, depth, torch.ones_like(depth)), torch.zeros_like(depth))
    x = torch.stack([fit.to(torch.float32), inv_z], 1).reshape(b * 2, 1, h, w)
    a = torch.arange(-radius, radius + 1, device=dev, dtype=torch.float32)
    kern = torch.stack([torch.ones_like(a), a, a * a])  # orders 0, 1, 2
    cudnn = torch.backends.cudnn
    # TF32 convolutions would round the window sums to 10 mantissa bits.
    with cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    ):
        rows = F.conv2d(x, kern.view(3, 1, 1, -1), padding=(0, radius))  # (2B)×3×H×W, orders in a
        cols = F.conv2d(rows.reshape(b * 6, 1, h, w), kern.view(3, 1, -1, 1), padding=(radius, 0))
    m = cols.reshape(b, 2, 3, 3, h, w)[..., ::stride, ::stride]  # [batch, (mask, inv_z), order a, order b]
    moments = (m[:, 0, 0, 0], m[:, 0, 1, 0], m[:, 0, 0, 1], m[:, 0, 2, 0], m[:, 0, 1, 1], m[:, 0, 0, 2])
    moments += (m[:, 1, 0, 0], m[:, 1, 1, 0], m[:, 1, 0, 1])
    xr, yr = _torch_rays(intrinsics, dev, torch.float32)
    sub = has_depth[:, ::stride, ::stride]
    fx, fy = intrinsics.fx, intrinsics.fy
    return _solve_normals(moments, xr[:, ::stride], yr[::stride], sub, fx, fy, xp=torch, orient=orient)


def _gravity_torch(planes: tuple[torch.Tensor, ...], params: HHAParams, prior: Iterable[float]) -> np.ndarray:
    """Normal planes of one frame (each H×W) → gravity (float64 NumPy 3-vector)."""
    import torch

    keep = torch.isfinite(planes[0])
    if not bool(keep.any()):
        raise GravityEstimationError(
            "no surface normal could be fitted (too little valid depth): pass gravity explicitly, e.g. from an IMU"
        )
    nx, ny, nz = (p[keep] for p in planes)
    outer = torch.stack([nx * nx, nx * ny, nx * nz, ny * ny, ny * nz, nz * nz])

    def accumulate(y: np.ndarray, cos_t: float, sin_t: float) -> tuple[np.ndarray, int]:
        sim = (nx * float(y[0]) + ny * float(y[1]) + nz * float(y[2])).abs()  # elementwise: no TF32 matmul
        weight = (sim < sin_t).to(torch.float32) - (sim > cos_t).to(torch.float32)
        a6 = (outer * weight).sum(1, dtype=torch.float64)
        return a6.cpu().numpy(), int(torch.count_nonzero(weight))

    return _iterate_gravity(accumulate, params, prior)


def _fit_mask_torch(depth: torch.Tensor, raw_depth: torch.Tensor | None) -> torch.Tensor:
    import torch

    fit = torch.isfinite(depth)
    if raw_depth is not None:
        raw = _as_batch(raw_depth, "raw_depth").to(depth.device)
        if raw.shape != depth.shape:
            raise ValueError(f"raw_depth has shape {tuple(raw.shape)}, depth has {tuple(depth.shape)}")
        fit = fit & torch.isfinite(raw)
    return fit


def estimate_gravity_torch(
    depth: torch.Tensor,
    intrinsics: CameraIntrinsics,
    *,
    raw_depth: torch.Tensor | None = None,
    params: HHAParams | None = None,
    prior: Iterable[float] = LEVEL_GRAVITY,
) -> np.ndarray:
    """:func:`estimate_gravity` for a tensor (H×W or B×H×W metres) on any device; returns B×3 (or 3) float64."""
    params = params or HHAParams()
    batch = _as_batch(depth, "depth")
    check_size(batch.shape[1:], intrinsics, "depth")
    fit = _fit_mask_torch(batch, raw_depth)
    planes = _normals_torch(batch, fit, intrinsics, params.gravity_radius, params.gravity_stride, orient=False)
    out = np.stack([_gravity_torch(frame, params, prior) for frame in zip(*planes)])
    return out[0] if depth.dim() == 2 else out


def compute_hha_torch(
    depth: torch.Tensor,
    intrinsics: CameraIntrinsics,
    gravity: Iterable[float] | np.ndarray | None = None,
    raw_depth: torch.Tensor | None = None,
    params: HHAParams | None = None,
) -> torch.Tensor:
    """:func:`compute_hha` on the tensors' device.

    Args:
        depth: float H×W or B×H×W metres (NaN/inf/≤0 invalid).
        intrinsics: shared by the batch.
        gravity: None (estimate per frame), one 3-vector for all frames, or B×3.
        raw_depth: optional raw depth of the same shape (see :func:`compute_hha`).
        params: HHA constants.

    Returns:
        uint8 tensor 3×H×W (or B×3×H×W), channels (disparity, height, angle) — channel-first, unlike the
        NumPy version's H×W×3.
    """
    import torch

    p = params or HHAParams()
    batch = _as_batch(depth, "depth")
    b = batch.shape[0]
    check_size(batch.shape[1:], intrinsics, "depth")
    fit = _fit_mask_torch(batch, raw_depth)
    if gravity is None:
        planes = _normals_torch(batch, fit, intrinsics, p.gravity_radius, p.gravity_stride, orient=False)
        g = np.stack([_gravity_torch(frame, p, LEVEL_GRAVITY) for frame in zip(*planes)])
    else:
        g = np.asarray(gravity, dtype=np.float64).reshape(-1, 3)
        if g.shape[0] not in (1, b):
            raise ValueError(f"gravity must be one 3-vector or one per frame (B={b}), got shape {g.shape}")
        g = np.stack([_unit_gravity(v) for v in np.broadcast_to(g, (b, 3))])
    dev = batch.device
    normals = _normals_torch(batch, fit, intrinsics, p.normal_radius)
    z_cm = torch.where(torch.isfinite(batch), batch * 100.0, torch.zeros_like(batch))
    rays = _torch_rays(intrinsics, dev, torch.float32)

    def per_frame(vectors: np.ndarray) -> tuple[torch.Tensor, ...]:  # B×3 → three B×1×1 components
        t = torch.as_tensor(vectors, dtype=torch.float32, device=dev).view(b, 3, 1, 1)
        return t[:, 0], t[:, 1], t[:, 2]

    heights = np.stack([_height_gravity(v) for v in g])
    out = torch.stack(_channels(torch, z_cm, normals, rays, per_frame(g), per_frame(heights), p), 1)
    out = out.round().clamp(0, 255).to(torch.uint8)
    return out[0] if depth.dim() == 2 else out
