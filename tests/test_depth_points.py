"""Back-projection with the camera's own intrinsics (0-based pixel centres), and its consistency under resize/crop."""

from __future__ import annotations

import numpy as np
import pytest

from rgbd_seg_ros.depth.points import backproject
from rgbd_seg_ros.frames import CameraIntrinsics, depth_to_metres

K = CameraIntrinsics(fx=500.0, fy=480.0, cx=30.25, cy=20.5, width=64, height=48)


def test_pixel_values_follow_the_pinhole_model():
    depth = np.full((48, 64), 2.0, np.float32)
    depth[10, 5] = 4.0
    xyz = backproject(depth, K)
    assert xyz.shape == (48, 64, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz[10, 5], [(5 - 30.25) * 4 / 500, (10 - 20.5) * 4 / 480, 4.0], rtol=1e-6)
    # The principal point's ray is the optical axis: interpolating between its neighbours gives x = y = 0.
    np.testing.assert_allclose(0.75 * xyz[20, 30, 0] + 0.25 * xyz[20, 31, 0], 0, atol=1e-7)
    np.testing.assert_allclose(0.5 * (xyz[20, 40, 1] + xyz[21, 40, 1]), 0, atol=1e-7)


def test_invalid_depth_is_nan_in_all_coordinates():
    depth = np.full((48, 64), 1.5, np.float32)
    depth[0, :4] = [np.nan, np.inf, 0.0, -2.0]
    xyz = backproject(depth, K)
    assert np.isnan(xyz[0, :4]).all() and np.isfinite(xyz[1:]).all()


def test_crop_is_consistent():
    rng = np.random.default_rng(0)
    depth = (1 + rng.random((48, 64))).astype(np.float32)
    full = backproject(depth, K)
    x0, y0, w, h = 7, 5, 30, 20
    crop = backproject(depth[y0 : y0 + h, x0 : x0 + w], K.cropped(x0, y0, w, h))
    np.testing.assert_array_equal(crop, full[y0 : y0 + h, x0 : x0 + w])


def test_scale_is_consistent_with_pixel_area_averaging():
    # A fronto-parallel plane: a half-resolution pixel is the mean of a 2×2 block of full-resolution pixels.
    depth = np.full((48, 64), 2.0, np.float32)
    full = backproject(depth, K)
    pooled = full.reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    half = backproject(np.full((24, 32), 2.0, np.float32), K.scaled(32, 24))
    np.testing.assert_allclose(half, pooled, atol=1e-6)


def test_16uc1_and_32fc1_agree():
    mm = np.full((48, 64), 1234, np.uint16)
    mm[3, 3] = 0
    metres = np.where(mm > 0, 1.234, np.nan).astype(np.float32)
    a, b = backproject(depth_to_metres(mm), K), backproject(depth_to_metres(metres), K)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.isnan(a[3, 3]).all()


def test_bad_inputs():
    with pytest.raises(TypeError, match="depth_to_metres"):
        backproject(np.ones((48, 64), np.uint16), K)
    with pytest.raises(ValueError, match="intrinsics"):
        backproject(np.ones((64, 48), np.float32), K)
    with pytest.raises(ValueError, match="H×W"):
        backproject(np.ones((48, 64, 3), np.float32), K)
