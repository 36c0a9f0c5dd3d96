"""sensor_msgs/Image ↔ NumPy without cv_bridge: encodings, row padding, byte order, depth units, registration."""

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="needs the ROS 2 message packages (pip install '.[ros]')")

from sensor_msgs.msg import CameraInfo, Image

from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.ros.convert import (
    UnsupportedEncodingError,
    color_to_rgb,
    depth_to_metres_image,
    image_from_array,
    image_to_array,
    intrinsics_from_info,
    to_rgbd_frame,
)

RNG = np.random.default_rng(0)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    """An Image built byte by byte (independently of the module): rows padded by ``pad`` bytes."""
    h, w = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = pixels.astype(dtype).reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian), step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 3, 64])
@pytest.mark.parametrize(
    ("encoding", "to_rgb"),
    [
        ("rgb8", lambda p: p),
        ("bgr8", lambda p: p[:, :, ::-1]),
        ("rgba8", lambda p: p[:, :, :3]),
        ("bgra8", lambda p: p[:, :, 2::-1]),
    ],
)
def test_colour_encodings_give_rgb(encoding, to_rgb, pad):
    channels = 4 if encoding.endswith("a8") else 3
    pixels = RNG.integers(0, 256, (5, 7, channels), dtype=np.uint8)
    rgb = color_to_rgb(raw_image(pixels, encoding, pad))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, to_rgb(pixels))


def test_mono8_is_replicated_to_three_channels():
    grey = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    rgb = color_to_rgb(raw_image(grey, "mono8", pad=2))
    np.testing.assert_array_equal(rgb, np.stack([grey] * 3, axis=2))


def test_decoded_arrays_are_copies_not_views_of_the_message():
    pixels = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    msg = raw_image(pixels, "rgb8")
    out = image_to_array(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_array(msg), pixels)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_16uc1_millimetres_to_metres_with_zero_invalid(big_endian, pad):
    mm = np.array([[0, 1000, 1234], [65534, 500, 1]], dtype=np.uint16)  # 65535: test_depth_sentinels.py
    metres = depth_to_metres_image(raw_image(mm, "16UC1", pad, big_endian))
    assert metres.dtype == np.float32
    assert np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[0, 1:], [1.0, 1.234], rtol=1e-6)
    np.testing.assert_allclose(metres[1], [65.534, 0.5, 0.001], rtol=1e-6)


@pytest.mark.parametrize("big_endian", [False, True])
def test_32fc1_metres_with_nan_inf_invalid(big_endian):
    m = np.array([[1.5, np.nan, np.inf], [-np.inf, 0.0, 3.25]], dtype=np.float32)
    metres = depth_to_metres_image(raw_image(m, "32FC1", pad=4, big_endian=big_endian))
    np.testing.assert_array_equal(np.isnan(metres), [[False, True, True], [True, True, False]])
    assert metres[0, 0] == np.float32(1.5) and metres[1, 2] == np.float32(3.25)


def test_depth_scale_overrides_rep118_units():
    raw = np.array([[10, 0]], dtype=np.uint16)  # e.g. a sensor reporting 0.1 mm units
    np.testing.assert_allclose(depth_to_metres_image(raw_image(raw, "16UC1"), scale=1e-4)[0, 0], 1e-3)
    np.testing.assert_allclose(depth_to_metres_image(raw_image(raw, "16UC1"), scale=0.0)[0, 0], 0.01)  # 0 = default


@pytest.mark.parametrize(
    ("reader", "encoding"),
    [(color_to_rgb, "16UC1"), (color_to_rgb, "yuv422"), (depth_to_metres_image, "rgb8"), (image_to_array, "8UC3")],
)
def test_unsupported_encodings_raise_a_named_error(reader, encoding):
    msg = Image(height=1, width=1, encoding=encoding, step=4)
    msg.data = bytes(4)
    with pytest.raises(UnsupportedEncodingError, match=encoding):
        reader(msg)


def test_short_step_or_data_is_an_error():
    msg = raw_image(np.zeros((2, 3, 3), np.uint8), "rgb8")
    msg.step = 8  # < 3 px × 3 bytes
    with pytest.raises(ValueError, match="step"):
        image_to_array(msg)
    short = raw_image(np.zeros((2, 3, 3), np.uint8), "rgb8")
    short.data = bytes(10)
    with pytest.raises(ValueError, match="bytes"):
        image_to_array(short)


@pytest.mark.parametrize(
    ("encoding", "array"),
    [
        ("mono8", RNG.integers(0, 256, (4, 5), dtype=np.uint8)),
        ("mono16", RNG.integers(0, 65536, (4, 5), dtype=np.uint16)),
        ("16UC1", RNG.integers(0, 65536, (4, 5), dtype=np.uint16)),
        ("32FC1", RNG.random((4, 5), dtype=np.float32)),
        ("rgb8", RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)),
        ("bgr8", RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)),
    ],
)
def test_image_from_array_round_trips_and_keeps_the_header(encoding, array):
    header = Image().header
    header.frame_id = "cam"
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = image_from_array(array, encoding, header)
    assert (msg.height, msg.width, msg.encoding) == (4, 5, encoding)
    assert msg.step == 5 * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("cam", 12, 345)
    np.testing.assert_array_equal(image_to_array(msg), array)


def test_image_from_array_rejects_mismatched_dtype_or_channels():
    with pytest.raises(ValueError, match="mono8"):
        image_from_array(np.zeros((2, 2), np.uint16), "mono8")
    with pytest.raises(ValueError, match="rgb8"):
        image_from_array(np.zeros((2, 2), np.uint8), "rgb8")


def _info(k, width, height):
    info = CameraInfo(width=width, height=height)
    info.k = [float(v) for v in k]
    return info


def test_intrinsics_from_info_and_size_zero_fallback():
    k = [500.0, 0, 319.5, 0, 510.0, 239.5, 0, 0, 1]
    assert intrinsics_from_info(_info(k, 640, 480), 1, 1) == CameraIntrinsics(500, 510, 319.5, 239.5, 640, 480)
    assert intrinsics_from_info(_info(k, 0, 0), 320, 240) == CameraIntrinsics(500, 510, 319.5, 239.5, 320, 240)
    with pytest.raises(ValueError, match="uncalibrated"):
        intrinsics_from_info(_info([0.0] * 9, 0, 0), 320, 240)


def _stamped(msg: Image, sec: int, nanosec: int, frame_id: str) -> Image:
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, frame_id
    return msg


def test_to_rgbd_frame_uses_colour_header_and_resizes_depth_with_intrinsics():
    rgb = RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    mm = np.full((4, 6), 2000, np.uint16)
    mm[0, 0] = 0
    color = _stamped(raw_image(rgb[:, :, ::-1], "bgr8"), 7, 500, "color_optical")
    depth = _stamped(raw_image(mm, "16UC1"), 7, 900, "depth_optical")
    depth_k = CameraIntrinsics(fx=5.0, fy=5.0, cx=2.5, cy=1.5, width=6, height=4)
    frame, resized = to_rgbd_frame(color, depth, depth_k)
    assert resized
    assert frame.stamp_ns == 7_000_000_500 and frame.frame_id == "color_optical"
    np.testing.assert_array_equal(frame.rgb, rgb)
    assert frame.depth.shape == (8, 12)
    assert np.isnan(frame.depth[:2, :2]).all() and np.nanmin(frame.depth) == np.float32(2.0)
    assert frame.intrinsics == depth_k.scaled(12, 8)


def test_to_rgbd_frame_rejects_depth_of_another_aspect_ratio():
    color = raw_image(np.zeros((48, 64, 3), np.uint8), "rgb8")
    depth = raw_image(np.ones((48, 48), np.uint16), "16UC1")  # 1:1 next to 4:3: not registered
    with pytest.raises(ValueError, match="registered"):
        to_rgbd_frame(color, depth, CameraIntrinsics(40, 40, 24, 24, 48, 48))
