"""Point maps: depth (metres) back-projected through the camera's own intrinsics.

Pixel ``(u, v)`` is 0-based at the pixel centre (``CameraIntrinsics`` convention), so a valid depth ``z`` at
``(u, v)`` becomes ``((u − cx) z / fx, (v − cy) z / fy, z)`` in the camera optical frame (x right, y down,
z forward). The intrinsics come from ``CameraInfo`` — never a dataset's hard-coded centre — and stay right
after :meth:`CameraIntrinsics.scaled` / :meth:`~CameraIntrinsics.cropped`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rgbd_seg_ros.frames import CameraIntrinsics


def sanitize_depth(depth_m: np.ndarray, name: str = "depth_m") -> np.ndarray:
    """A float32 H×W copy of ``depth_m`` (metres) with NaN for every non-finite or non-positive value.

    Raises:
        TypeError: for integer images (sensor millimetres must go through ``frames.depth_to_metres`` first).
        ValueError: for anything but a 2-D (or H×W×1) image.
    """
    depth = np.asarray(depth_m)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"{name} must be an H×W depth image in metres, got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise TypeError(
            f"{name} must be float metres (NaN = invalid), got {depth.dtype}; convert sensor images with "
            "rgbd_seg_ros.frames.depth_to_metres"
        )
    out = depth.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def check_size(shape: tuple[int, ...], intrinsics: CameraIntrinsics, name: str = "depth_m") -> None:
    """Raise ``ValueError`` unless an H×W image matches the intrinsics' ``width`` × ``height``."""
    if (intrinsics.height, intrinsics.width) != tuple(shape[:2]):
        raise ValueError(
            f"{name} is {shape[1]}x{shape[0]} but the intrinsics are for {intrinsics.width}x{intrinsics.height}; "
            "use CameraIntrinsics.scaled/cropped to follow a resize or crop"
        )


@lru_cache(maxsize=16)
def pixel_rays(intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``(u − cx)/fx`` (shape 1×W) and per-row ``(v − cy)/fy`` (shape H×1), float32, read-only."""
    k = intrinsics
    xr = ((np.arange(k.width, dtype=np.float64) - k.cx) / k.fx).astype(np.float32)[None, :]
    yr = ((np.arange(k.height, dtype=np.float64) - k.cy) / k.fy).astype(np.float32)[:, None]
    xr.flags.writeable = False
    yr.flags.writeable = False
    return xr, yr


def backproject(depth_m: np.ndarray, intrinsics: CameraIntrinsics, stride: int = 1) -> np.ndarray:
    """XYZ point map of a depth image.

    Args:
        depth_m: H×W float depth in metres; NaN, ±inf and values ≤ 0 are invalid.
        intrinsics: of this very image (``width`` × ``height`` = W × H).
        stride: back-project every ``stride``-th pixel of every ``stride``-th row only (pixels ``(k·stride,
            j·stride)``, each through its own ray).

    Returns:
        float32 ⌈H/stride⌉×⌈W/stride⌉×3, metres in the camera optical frame, NaN (all three coordinates) where
        depth is invalid.
    """
    if int(stride) < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    depth = np.asarray(depth_m)
    z = sanitize_depth(depth[::stride, ::stride] if depth.ndim >= 2 else depth)
    check_size(depth.shape, intrinsics)
    xr, yr = pixel_rays(intrinsics)
    xr, yr = xr[:, ::stride], yr[::stride, :]
    out = np.empty((*z.shape, 3), np.float32)
    np.multiply(z, xr, out=out[..., 0])
    np.multiply(z, yr, out=out[..., 1])
    out[..., 2] = z
    return out
