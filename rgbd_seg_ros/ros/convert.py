"""``sensor_msgs/Image`` and ``CameraInfo`` ↔ NumPy / :class:`RGBDFrame`, without cv_bridge.

Decoding honours ``step`` (row padding) and ``is_bigendian``; arrays are copies, never views of the
message buffer. Accepted encodings (names as in ``sensor_msgs/image_encodings.hpp``):

* colour: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped), ``mono8`` (grey replicated to RGB);
* depth (REP 118): ``16UC1`` / ``mono16`` in millimetres with 0 and 65535 = invalid, ``32FC1`` in metres with
  NaN/±inf (and ≤ 0) = invalid; a ``depth_scale`` (metres per unit) overrides either unit. Conversion goes
  through :func:`rgbd_seg_ros.frames.depth_to_metres`, the library's one unit boundary; depth whose values do
  not look like its unit leaves :func:`~rgbd_seg_ros.frames.depth_units_warning`'s text in the frame's
  ``meta[DEPTH_UNITS_WARNING]`` for the caller to log once.

Outputs are encoded from arrays with :func:`image_from_array` (``mono8``, ``mono16``, ``16UC1``, ``32FC1``,
``rgb8``, ``bgr8``), little- or big-endian as the host is.
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from rgbd_seg_ros.frames import DEPTH_UNITS_WARNING, CameraIntrinsics, RGBDFrame, depth_to_metres, depth_units_warning

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "UnsupportedEncodingError",
    "color_to_rgb",
    "depth_to_metres_image",
    "image_from_array",
    "image_to_array",
    "intrinsics_from_info",
    "stamp_to_ns",
    "to_rgbd_frame",
]

#: encoding → (dtype, channels) for every encoding this module reads or writes.
_LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

COLOR_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "mono16", "32FC1")
#: Relative difference of width/height ratios above which depth is not the colour image's view.
_ASPECT_TOLERANCE = 0.02


class UnsupportedEncodingError(ValueError):
    """An image encoding the node cannot use for that input."""


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` → int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_to_array(msg: Any) -> np.ndarray:
    """Decode an Image to a native-endian H×W (one channel) or H×W×C array (a copy; a decoded compressed image's own).

    Raises:
        UnsupportedEncodingError: an encoding outside the table above.
        ValueError: ``step`` or ``data`` too short for ``width`` × ``height`` of that encoding.
    """
    pixels = getattr(msg, "pixels", None)
    if pixels is not None:  # a decoded CompressedImage (rgbd_seg_ros.ros.compressed.DecodedImage): already an array
        return pixels
    layout = _LAYOUTS.get(msg.encoding)
    if layout is None:
        raise UnsupportedEncodingError(f"unsupported image encoding {msg.encoding!r}")
    dtype, channels = layout
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if height <= 0 or width <= 0:
        raise ValueError(f"{msg.encoding} image has no pixels ({width}x{height})")
    if step < row_bytes:
        raise ValueError(f"{msg.encoding} image of width {width} needs step ≥ {row_bytes} bytes, got {step}")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size < step * (height - 1) + row_bytes:
        raise ValueError(
            f"{msg.encoding} image {width}x{height} with step {step} needs {step * height} bytes, got {buffer.size}"
        )
    # Rows start every `step` bytes; the first `row_bytes` of each are pixels, the rest padding.
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes), strides=(step, 1))
    order = ">" if msg.is_bigendian else "<"
    pixels = np.array(rows).view(dtype.newbyteorder(order)).astype(dtype, copy=False)  # copies msg.data
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def color_to_rgb(msg: Any) -> np.ndarray:
    """A colour Image (:data:`COLOR_ENCODINGS`) → uint8 H×W×3 RGB."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise UnsupportedEncodingError(
            f"colour image encoding {msg.encoding!r} is not supported; use one of {', '.join(COLOR_ENCODINGS)}"
        )
    pixels = image_to_array(msg)
    if msg.encoding == "mono8":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if msg.encoding.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def depth_to_metres_image(msg: Any, scale: float | None = None) -> np.ndarray:
    """A depth Image (:data:`DEPTH_ENCODINGS`) → float32 H×W metres, NaN = invalid.

    ``scale`` (metres per unit) overrides REP 118's units (0.001 for 16-bit, 1.0 for 32FC1); None or ≤ 0 keeps them.
    """
    return depth_to_metres(_depth_pixels(msg), scale if scale is not None and scale > 0 else None)


def _depth_pixels(msg: Any) -> np.ndarray:
    if msg.encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(
            f"depth image encoding {msg.encoding!r} is not supported; use 16UC1 (mm) or 32FC1 (m) (REP 118)"
        )
    return image_to_array(msg)


def image_from_array(array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Encode ``array`` (H×W or H×W×C matching ``encoding``'s dtype and channels) as a ``sensor_msgs/Image``.

    ``header`` is copied by reference (outputs carry their input's header). Raises ``ValueError`` on a
    dtype/shape that does not fit the encoding.
    """
    from sensor_msgs.msg import Image

    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise UnsupportedEncodingError(f"cannot encode images as {encoding!r}")
    dtype, channels = layout
    array = np.asarray(array)
    shape_ok = array.ndim == 2 if channels == 1 else (array.ndim == 3 and array.shape[2] == channels)
    if array.dtype != dtype or not shape_ok:
        raise ValueError(f"{encoding} needs {dtype} with {channels} channel(s), got {array.dtype} {array.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big" and dtype.itemsize > 1)
    msg.step = msg.width * channels * dtype.itemsize
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg


def intrinsics_from_info(info: Any, width: int, height: int) -> CameraIntrinsics:
    """Intrinsics of a ``CameraInfo`` for an image of ``width`` × ``height`` (a CameraInfo of size 0 means that size).

    Raises ``ValueError`` for an uncalibrated ``K`` (fx or fy = 0).
    """
    if int(info.width) <= 0 or int(info.height) <= 0:
        k = np.asarray(info.k, dtype=np.float64).reshape(-1)
        if k.size != 9 or k[0] <= 0 or k[4] <= 0:
            raise ValueError("CameraInfo has an uncalibrated K (fx or fy is 0): cannot back-project depth")
        return CameraIntrinsics(fx=k[0], fy=k[4], cx=k[2], cy=k[5], width=width, height=height)
    return CameraIntrinsics.from_camera_info(info)


def _same_view(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two (width, height) sizes have the same aspect ratio (within :data:`_ASPECT_TOLERANCE`)."""
    ra, rb = a[0] / a[1], b[0] / b[1]
    return abs(ra - rb) <= _ASPECT_TOLERANCE * rb


def to_rgbd_frame(
    color: Any, depth: Any, intrinsics: CameraIntrinsics, depth_scale: float | None = None
) -> tuple[RGBDFrame, bool]:
    """Build the frame of a synchronised (colour, depth) pair; stamp and frame id are the colour header's.

    Args:
        color: colour ``Image``. depth: depth ``Image``, registered to the colour camera. Either may be a
            ``CompressedImage`` (decoded here by :mod:`rgbd_seg_ros.ros.compressed`) or a decoded one.
        intrinsics: of the depth image (its CameraInfo) or of the colour image; scaled to the colour size.
        depth_scale: metres per depth unit; None or ≤ 0 = REP 118 units.

    Returns:
        The frame (depth resampled to the colour size with nearest neighbour where sizes differ) and whether
        depth had to be resized. Depth that looks like another unit (:func:`~rgbd_seg_ros.frames.depth_units_warning`)
        leaves the warning's text in ``frame.meta[DEPTH_UNITS_WARNING]``.

    Raises:
        UnsupportedEncodingError, ValueError: undecodable images, or depth / intrinsics whose aspect ratio
        differs from the colour image's (depth not registered to the colour camera).
    """
    from rgbd_seg_ros.ros.compressed import decode_inputs

    color, depth = decode_inputs(color, depth)  # CompressedImage → DecodedImage; raw images pass through
    rgb = color_to_rgb(color)
    raw = _depth_pixels(depth)
    scale = depth_scale if depth_scale is not None and depth_scale > 0 else None
    metres = depth_to_metres(raw, scale)
    units_warning = depth_units_warning(raw, scale)
    size = (rgb.shape[1], rgb.shape[0])
    depth_size = (metres.shape[1], metres.shape[0])
    for what, other in (("depth", depth_size), ("CameraInfo", (intrinsics.width, intrinsics.height))):
        if not _same_view(other, size):
            raise ValueError(
                f"{what} is {other[0]}x{other[1]} but colour is {size[0]}x{size[1]} (another aspect ratio): depth "
                "must be registered to the colour camera (e.g. RealSense aligned_depth_to_color, Azure Kinect "
                "depth_to_rgb)"
            )
    resized = depth_size != size
    if resized:
        metres = cv2.resize(metres, size, interpolation=cv2.INTER_NEAREST)
    if (intrinsics.width, intrinsics.height) != size:
        intrinsics = intrinsics.scaled(*size)
    frame = RGBDFrame(
        rgb=rgb,
        depth=metres,
        intrinsics=intrinsics,
        stamp_ns=stamp_to_ns(color.header.stamp),
        frame_id=str(color.header.frame_id),
        meta={DEPTH_UNITS_WARNING: units_warning} if units_warning else {},
    )
    return frame, resized
