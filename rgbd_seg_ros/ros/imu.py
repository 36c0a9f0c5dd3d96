"""Gravity for HHA from a ``sensor_msgs/Imu`` accelerometer, rotated into the colour camera's optical frame.

Conventions:

* An accelerometer measures specific force: at rest it reads about 9.81 m/s² pointing **up** (REP 145), the
  reaction to gravity. HHA's gravity (:attr:`rgbd_seg_ros.frames.RGBDFrame.gravity`) points **down**, the way
  gravity pulls, in the camera optical frame (x right, y down, z forward): ``g = −R·a / |a|``.
* ``camera_from_imu`` is the fixed rotation ``R`` taking vectors in the IMU message's frame into the colour
  camera's optical frame, as a quaternion ``[x, y, z, w]`` (``geometry_msgs/Quaternion`` order). It is the
  rotation of tf2's ``lookup_transform(<colour optical frame>, <IMU frame>)``, which
  ``ros2 run tf2_ros tf2_echo <colour optical frame> <IMU frame>`` prints. Identity ``[0, 0, 0, 1]`` means the
  IMU's axes are the camera's optical axes.
* A frame uses the newest reading whose stamp is within :data:`IMU_MAX_AGE_S` of the frame's stamp (both from
  the sensors' clock); otherwise (no reading yet, stale, or a reading without an acceleration estimate) the
  frame has no gravity and HHA estimates it from the depth image. The newest reading includes the camera's own
  acceleration: on a platform that accelerates hard the direction is off by ``atan(|a_motion| / g)``.

Messages are duck-typed (``header.stamp``, ``linear_acceleration``, ``linear_acceleration_covariance``), like
:mod:`rgbd_seg_ros.ros.convert`: this module imports no ROS package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from rgbd_seg_ros.ros.convert import stamp_to_ns

__all__ = ["IMU_MAX_AGE_S", "ImuGravity", "camera_from_imu_matrix", "gravity_from_accelerometer"]

#: Largest |frame stamp − IMU stamp| (s) for which a reading gives the frame's gravity.
IMU_MAX_AGE_S = 0.5
#: Readings shorter than this (m/s²) carry no direction (a driver's zero message, free fall).
_MIN_ACCELERATION = 1.0


def camera_from_imu_matrix(quaternion: Sequence[float]) -> np.ndarray:
    """3×3 float64 rotation of a ``[x, y, z, w]`` quaternion (any non-zero length; normalised).

    Raises:
        ValueError: not 4 finite numbers, or all zero.
    """
    q = np.asarray(quaternion, dtype=np.float64).reshape(-1)
    if q.size != 4 or not np.isfinite(q).all() or not np.linalg.norm(q) > 1e-9:
        raise ValueError(f"camera_from_imu must be a rotation quaternion [x, y, z, w] (non-zero), got {list(q)}")
    return Rotation.from_quat(q).as_matrix()


def gravity_from_accelerometer(acceleration: Sequence[float], camera_from_imu: np.ndarray) -> np.ndarray | None:
    """Unit gravity (pointing down) in the camera optical frame from an accelerometer reading.

    Args:
        acceleration: ``(x, y, z)`` m/s² in the IMU frame, as ``sensor_msgs/Imu.linear_acceleration`` (+g up at rest).
        camera_from_imu: 3×3 rotation, IMU frame → camera optical frame (:func:`camera_from_imu_matrix`).

    Returns:
        float64 unit 3-vector, or None for a reading without a direction (non-finite or shorter than 1 m/s²).
    """
    a = np.asarray(acceleration, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(a))
    if not (np.isfinite(a).all() and norm >= _MIN_ACCELERATION):
        return None
    return -(camera_from_imu @ a) / norm


class ImuGravity:
    """The newest IMU reading as gravity in the camera frame (see the module docstring).

    :meth:`update` runs in the subscription callback and :meth:`lookup` in the node's worker thread; the newest
    reading is one tuple replaced whole, so neither needs a lock.
    """

    def __init__(self, camera_from_imu: Sequence[float] = (0.0, 0.0, 0.0, 1.0), max_age_s: float = IMU_MAX_AGE_S):
        self.rotation = camera_from_imu_matrix(camera_from_imu)
        self.max_age_s = float(max_age_s)
        self._newest: tuple[int, np.ndarray] | None = None

    def update(self, msg: Any) -> None:
        """Take a ``sensor_msgs/Imu``; readings without an acceleration estimate (covariance[0] = −1) are skipped."""
        covariance = getattr(msg, "linear_acceleration_covariance", None)
        if covariance is not None and len(covariance) and covariance[0] == -1:
            return
        a = msg.linear_acceleration
        gravity = gravity_from_accelerometer((a.x, a.y, a.z), self.rotation)
        if gravity is not None:
            self._newest = (stamp_to_ns(msg.header.stamp), gravity)

    def lookup(self, stamp_ns: int) -> tuple[np.ndarray | None, str]:
        """``(gravity, "")`` for a frame stamped ``stamp_ns``, or ``(None, why not)`` when no reading is recent."""
        newest = self._newest
        if newest is None:
            return None, "no IMU reading has arrived"
        age = abs(int(stamp_ns) - newest[0]) / 1e9
        if age > self.max_age_s:
            return None, f"the newest IMU reading is {age:.2f} s from the frame's stamp (more than {self.max_age_s} s)"
        return newest[1], ""
