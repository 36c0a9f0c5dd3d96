"""Known gravity for HHA: from the frame (``RGBDFrame.gravity``) or an IMU, with the per-frame estimate as fallback.

Oracles: the synthetic scenes' true camera pose (``Scene.gravity``) and hand-derived accelerometer readings
(at rest an accelerometer reads +9.81 m/s² *up*; gravity points down).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rgbd_seg_ros.depth.completion import fill_depth
from rgbd_seg_ros.depth.encode import InputSpec, encode_frame
from rgbd_seg_ros.depth.hha import compute_hha, estimate_gravity
from rgbd_seg_ros.frames import RGBDFrame
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.ros.imu import ImuGravity, camera_from_imu_matrix, gravity_from_accelerometer
from rgbd_seg_ros.synthetic import SceneGenerator

G = 9.81
#: An IMU with REP 103 body axes (x forward, y left, z up) on the camera: optical x = −y, y = −z, z = x.
CAMERA_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
# [x, y, z, w] of CAMERA_FROM_BODY, worked out by hand; the inverse of the usual optical-frame static transform
# (parent body, child optical: -0.5 0.5 -0.5 0.5), as tf2_echo <optical frame> <body frame> prints it.
BODY_QUATERNION = (0.5, -0.5, 0.5, 0.5)
SPEC = InputSpec(depth_encoding="hha")  # natural units 0..255, no normalisation


def _angle_deg(a, b) -> float:
    return math.degrees(math.acos(float(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def _imu_msg(acceleration, stamp_ns: int, covariance0: float = 0.0) -> SimpleNamespace:
    """A duck-typed ``sensor_msgs/Imu``."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id="imu"),
        linear_acceleration=SimpleNamespace(x=acceleration[0], y=acceleration[1], z=acceleration[2]),
        linear_acceleration_covariance=[covariance0] + [0.0] * 8,
    )


def _at_rest(gravity_camera: np.ndarray, camera_from_imu: np.ndarray) -> np.ndarray:
    """The accelerometer reading (IMU frame) of a camera at rest whose gravity is ``gravity_camera``: +g up."""
    return camera_from_imu.T @ (-G * np.asarray(gravity_camera))


def _hha(frame: RGBDFrame) -> np.ndarray:
    """The Segmenter's HHA input (3×H×W, 0..255) for ``frame``: range limit, fill, HHA with the frame's gravity."""
    segmenter = Segmenter(None, SPEC, get_label_set("nyuv2-40"))  # prepare() does not touch the backend
    return segmenter.prepare(frame)[1][0].numpy()


@pytest.fixture(scope="module")
def scenes():
    gen = SceneGenerator(120, 160, seed=11)
    return [gen.sample(i) for i in range(4)]


def test_accelerometer_sign_and_mounting():
    assert np.allclose(camera_from_imu_matrix(BODY_QUATERNION), CAMERA_FROM_BODY)
    level = ImuGravity(BODY_QUATERNION)
    level.update(_imu_msg((0.0, 0.0, G), 5))  # a level IMU at rest reads +g along its z (up)
    gravity, problem = level.lookup(5)
    assert problem == "" and np.allclose(gravity, [0.0, 1.0, 0.0])  # down = +y of the optical frame
    # Optical axes (identity): a camera pitched 30° down reads +g up, i.e. towards −y and +z of the camera.
    pitch = math.radians(30)
    reading = G * np.array([0.0, -math.cos(pitch), math.sin(pitch)])
    down = gravity_from_accelerometer(reading, np.eye(3))
    assert np.allclose(down, [0.0, math.cos(pitch), -math.sin(pitch)])
    assert gravity_from_accelerometer((0.0, 0.0, 0.0), np.eye(3)) is None  # a zero message has no direction
    with pytest.raises(ValueError, match="camera_from_imu"):
        ImuGravity((0.0, 0.0, 0.0, 0.0))


def test_imu_reading_recovers_the_true_gravity_of_synthetic_scenes(scenes):
    for mount in (BODY_QUATERNION, tuple(Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_quat())):
        imu = ImuGravity(mount)
        rotation = camera_from_imu_matrix(mount)
        for scene in scenes:
            imu.update(_imu_msg(_at_rest(scene.gravity, rotation), 100))
            assert _angle_deg(imu.lookup(100)[0], scene.gravity) < 1e-6


def test_stale_missing_and_unestimated_readings_fall_back(scenes):
    imu = ImuGravity()
    assert imu.lookup(0) == (None, "no IMU reading has arrived")
    t = 10_000_000_000
    imu.update(_imu_msg((0.0, -G, 0.0), t))
    assert imu.lookup(t + 400_000_000)[0] is not None and imu.lookup(t - 400_000_000)[0] is not None
    gravity, problem = imu.lookup(t + 600_000_000)
    assert gravity is None and "0.60 s" in problem
    imu.update(_imu_msg((0.0, 0.0, G), t + 500_000_000, covariance0=-1.0))  # "no acceleration estimate"
    assert np.allclose(imu.lookup(t)[0], [0.0, 1.0, 0.0])  # the skipped reading did not replace the newest


def test_frame_gravity_is_checked_normalised_and_follows_resize_and_flip(scenes):
    f = scenes[0].frame
    frame = RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=(0.0, 2.0, 0.0))
    assert np.array_equal(frame.gravity, [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="gravity"):
        RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=(0.0, 0.0, 0.0))
    tilted = RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=scenes[0].gravity)
    assert np.allclose(tilted.resized(60, 80).gravity, scenes[0].gravity)
    mirrored = tilted.flipped()
    assert np.allclose(mirrored.gravity, scenes[0].gravity * [-1, 1, 1])
    assert np.array_equal(mirrored.depth, f.depth[:, ::-1], equal_nan=True)


def test_hha_with_the_imu_gravity_matches_the_estimate_and_a_wrong_mount_does_not(scenes):
    imu = ImuGravity(BODY_QUATERNION)
    wrong_mount = Rotation.from_matrix(CAMERA_FROM_BODY) * Rotation.from_euler("x", 10, degrees=True)
    wrong = ImuGravity(tuple(wrong_mount.as_quat()))  # the IMU's mounting rotation off by 10°
    for i, scene in enumerate(scenes):
        f = scene.frame
        reading = _imu_msg(_at_rest(scene.gravity, CAMERA_FROM_BODY), i)
        imu.update(reading)
        wrong.update(reading)
        known = _hha(RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=imu.lookup(i)[0]))
        estimated = _hha(f)
        off = _hha(RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=wrong.lookup(i)[0]))
        filled = fill_depth(f.depth, "fast", f.rgb)
        assert _angle_deg(estimate_gravity(filled, f.intrinsics, raw_depth_m=f.depth), scene.gravity) < 2.0
        # The Segmenter's HHA is compute_hha with the frame's gravity ...
        reference = compute_hha(filled, f.intrinsics, gravity=scene.gravity, raw_depth_m=f.depth)
        assert np.abs(known - reference.transpose(2, 0, 1)).max() <= 1
        # ... close to the per-frame estimate (within 2° of the truth here) ...
        assert np.abs(known[1] - estimated[1]).mean() < 3.0 and np.abs(known[2] - estimated[2]).mean() < 1.5
        # ... and a wrong camera_from_imu visibly changes the height channel (positive control).
        assert np.abs(known[1] - off[1]).mean() > 10.0


def test_encode_uses_the_frame_gravity_unless_one_is_passed(scenes):
    f = scenes[1].frame
    up = RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=-scenes[1].gravity)  # gravity pointing the wrong way
    _, from_frame = encode_frame(up, SPEC)
    _, passed = encode_frame(up, SPEC, gravity=scenes[1].gravity)
    _, plain = encode_frame(RGBDFrame(f.rgb, f.depth, f.intrinsics, gravity=scenes[1].gravity), SPEC)
    assert np.array_equal(passed.numpy(), plain.numpy())
    floor = scenes[1].labels == 2
    # Upside-down gravity puts the floor's normals at 180° (218 = 180 + 38) instead of 0° (38).
    assert np.median(from_frame[0, 2].numpy()[floor]) > 200 and np.median(plain[0, 2].numpy()[floor]) < 50


def test_node_attaches_imu_gravity_and_falls_back_when_stale():
    pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
    from ros_harness import DepthSegmenter, RosHarness, color_msg, depth_msg, domain_id, info_msg, make_scene, wait_for
    from sensor_msgs.msg import CameraInfo, Image, Imu

    ros = RosHarness(domain_id(41))
    try:
        model = DepthSegmenter()
        node = ros.start_node(model, publish_all=True, imu_topic="imu", camera_from_imu=list(BODY_QUATERNION))
        warnings: list[str] = []
        node._log = SimpleNamespace(warning=warnings.append, error=warnings.append, info=lambda *_: None)
        pubs = [ros.publisher(t, name) for t, name in ((Image, "color/image"), (Image, "depth/image"),
                                                       (CameraInfo, "depth/camera_info"), (Imu, "imu"))]  # fmt: skip
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs))
        rgb, depth, k = make_scene()
        truth = Rotation.from_euler("x", -25, degrees=True).apply([0.0, 1.0, 0.0])  # camera pitched 25°

        def send(t_ns: int, imu_t_ns: int) -> None:
            imu = Imu()
            imu.header.stamp.sec, imu.header.stamp.nanosec = divmod(imu_t_ns, 1_000_000_000)
            a = _at_rest(truth, CAMERA_FROM_BODY)
            imu.linear_acceleration.x, imu.linear_acceleration.y, imu.linear_acceleration.z = (float(v) for v in a)
            pubs[3].publish(imu)
            time.sleep(0.05)  # the IMU reading arrives before its frame
            for pub, msg in zip(pubs, (color_msg(rgb, t_ns), depth_msg(depth, t_ns), info_msg(k, t_ns))):
                pub.publish(msg)

        t0 = 2_000_000_000
        send(t0, t0 - 10_000_000)
        assert wait_for(lambda: len(model.frames) >= 1)
        assert model.frames[0].gravity is not None and _angle_deg(model.frames[0].gravity, truth) < 1e-6
        send(t0 + 1_000_000_000, t0 - 1_000_000_000)  # the newest reading is 2 s older than the frame
        assert wait_for(lambda: len(model.frames) >= 2)
        assert model.frames[1].gravity is None
        assert sum("imu" in w and "estimating gravity" in w for w in warnings) == 1, warnings
    finally:
        ros.shutdown()
