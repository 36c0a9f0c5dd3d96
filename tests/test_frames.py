"""CameraIntrinsics and RGBDFrame: back-projection stays consistent under scale/crop; bad frames are refused."""

from types import SimpleNamespace

import numpy as np
import pytest

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres


def _project(k: CameraIntrinsics, p: np.ndarray) -> np.ndarray:
    return np.array([k.fx * p[0] / p[2] + k.cx, k.fy * p[1] / p[2] + k.cy])


def _backproject(k: CameraIntrinsics, u: float, v: float, z: float) -> np.ndarray:
    return np.array([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z])


def test_scaled_maps_pixel_centres_and_keeps_rays():
    k = CameraIntrinsics.nyu_kinect()
    half = k.scaled(320, 240)
    # The centre of the 2×2 block of full-resolution pixels (0..1, 0..1) is pixel (0, 0) of the half image.
    ray_full = _backproject(k, 0.5, 0.5, 1.0)
    ray_half = _backproject(half, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(ray_full, ray_half, atol=1e-9)
    # A 3-D point projects to corresponding positions: u_half = (u_full + 0.5) / 2 - 0.5.
    p = np.array([0.3, -0.2, 2.0])
    uv_full, uv_half = _project(k, p), _project(half, p)
    np.testing.assert_allclose(uv_half, (uv_full + 0.5) / 2 - 0.5, atol=1e-9)


def test_cropped_shifts_the_principal_point_only():
    k = CameraIntrinsics(fx=500, fy=510, cx=320, cy=240, width=640, height=480)
    c = k.cropped(100, 50, 200, 150)
    p = np.array([0.1, 0.05, 1.5])
    np.testing.assert_allclose(_project(c, p), _project(k, p) - [100, 50])
    assert (c.width, c.height) == (200, 150)


def test_flipped_mirrors_the_scene():
    k = CameraIntrinsics(fx=500, fy=510, cx=300, cy=240, width=640, height=480)
    f = k.flipped()
    u, v, z = 100.0, 200.0, 2.0
    p, q = _backproject(k, u, v, z), _backproject(f, k.width - 1 - u, v, z)
    np.testing.assert_allclose(q, p * [-1, 1, 1])


def test_from_camera_info_reads_k_and_rejects_uncalibrated():
    msg = SimpleNamespace(k=[600.0, 0, 319.5, 0, 601.0, 239.5, 0, 0, 1], width=640, height=480)
    k = CameraIntrinsics.from_camera_info(msg)
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (600.0, 601.0, 319.5, 239.5, 640, 480)
    with pytest.raises(ValueError, match="uncalibrated"):
        CameraIntrinsics.from_camera_info(SimpleNamespace(k=[0.0] * 9, width=640, height=480))


def test_depth_to_metres_units_and_invalid_values():
    mm = np.array([[0, 1000], [1500, 65534]], np.uint16)
    m = depth_to_metres(mm)
    assert m.dtype == np.float32 and np.isnan(m[0, 0])
    np.testing.assert_allclose(m[~np.isnan(m)], [1.0, 1.5, 65.534], rtol=1e-6)  # 65535 is a sentinel (sentinel tests)
    f = depth_to_metres(np.array([[np.nan, np.inf], [-1.0, 2.5]], np.float32))
    assert np.isnan(f[:1]).all() and np.isnan(f[1, 0]) and f[1, 1] == 2.5
    np.testing.assert_array_equal(
        np.isnan(depth_to_metres(mm)), np.isnan(depth_to_metres(mm.astype(np.float32) / 1000))
    )
    with pytest.raises(TypeError):
        depth_to_metres(np.zeros((2, 2), bool))


def test_frame_rejects_mismatched_sizes_and_types():
    k = CameraIntrinsics.nyu_kinect(64, 48)
    rgb, depth = np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32)
    RGBDFrame(rgb, depth, k)
    with pytest.raises(ValueError, match="registered"):
        RGBDFrame(rgb, np.ones((24, 32), np.float32), k)
    with pytest.raises(ValueError, match="float32"):
        RGBDFrame(rgb, np.ones((48, 64), np.uint16), k)
    with pytest.raises(ValueError, match="uint8"):
        RGBDFrame(rgb.astype(np.float32), depth, k)
    with pytest.raises(ValueError, match="intrinsics"):
        RGBDFrame(rgb, depth, CameraIntrinsics.nyu_kinect(640, 480))
