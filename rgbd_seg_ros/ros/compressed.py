"""``sensor_msgs/CompressedImage`` as image_transport's ``compressed`` and ``compressedDepth`` plugins write it.

The one decoder (and encoder) of compressed camera images, used by the node (on its worker thread), by bag replay
and by ``rgbd-seg make-bag --compressed``. Messages are duck-typed (rclpy or rosbags ``CompressedImage``: ``header``,
``format``, ``data``); nothing here imports ROS.

Formats (``format`` is ``"<encoding>; <details>"``):

* colour, ``compressed`` transport: e.g. ``rgb8; jpeg compressed bgr8``. ``data`` is a JPEG or PNG file; OpenCV
  decodes it to BGR, which ``compressed bgr8`` names (``compressed rgb8`` means the channels were stored swapped).
  A format without ``;`` (old publishers) is a BGR or grey image.
* depth, ``compressedDepth`` transport: e.g. ``16UC1; compressedDepth png`` or ``32FC1; compressedDepth png``.
  ``data`` starts with a 12-byte config header (native little-endian): int32 ``compressionFormat`` (0 = inverse
  depth), float32 ``depthQuantA``, float32 ``depthQuantB``; a PNG follows. 16UC1: the PNG holds the millimetres
  (0 = invalid). 32FC1: the PNG holds quantised inverse depth ``q`` (uint16); depth in metres is
  ``depthQuantA / (q − depthQuantB)`` in float32, NaN where ``q`` = 0. A format without ``;`` is PNG. RVL
  (``compressedDepth rvl``) is not supported.
* depth sent through the plain ``compressed`` transport (``16UC1; png compressed``): a 16-bit PNG, no header.

Decoded images are :class:`DecodedImage` objects, which :mod:`rgbd_seg_ros.ros.convert` reads like raw ``Image``
messages: colour as ``rgb8``, depth as ``16UC1`` millimetres or ``32FC1`` metres (REP 118 units).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "COMPRESSED_IMAGE_TYPE",
    "DEPTH_HEADER",
    "TRANSPORTS",
    "CompressedImageError",
    "DecodedImage",
    "declared_encoding",
    "decode_color",
    "decode_depth",
    "decode_inputs",
    "decode_message",
    "encode_color",
    "encode_depth",
    "is_compressed",
    "message_encoding",
    "transport_topic",
]

COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
#: Node input transports: ``raw`` = ``sensor_msgs/Image``; ``compressed`` = image_transport's compressed topic.
TRANSPORTS: tuple[str, ...] = ("raw", "compressed")
#: image_transport's topic suffix per input for the ``compressed`` transport.
_SUFFIX = {"color": "compressed", "depth": "compressedDepth"}
#: compressedDepth's config header: int32 compressionFormat, float32 depthQuantA, float32 depthQuantB.
DEPTH_HEADER = struct.Struct("<iff")
_INV_DEPTH = 0
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CompressedImageError(ValueError):
    """Compressed data that cannot be decoded (truncated, wrong header, unknown format); the text says which."""


@dataclass
class DecodedImage:
    """A decoded compressed image, read by :mod:`rgbd_seg_ros.ros.convert` like a raw ``Image``.

    Attributes:
        header: the compressed message's header (stamp and frame id).
        encoding: ``rgb8`` (colour), ``16UC1`` (depth, millimetres) or ``32FC1`` (depth, metres).
        pixels: H×W×3 uint8 RGB, H×W uint16 or H×W float32 (NaN = invalid).
    """

    header: Any
    encoding: str
    pixels: np.ndarray

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def transport_topic(topic: str, role: str, transport: str) -> str:
    """The topic to subscribe for input ``role`` (``color`` | ``depth``) over ``transport`` (:data:`TRANSPORTS`)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    return topic if transport == "raw" else f"{topic.rstrip('/')}/{_SUFFIX[role]}"


def is_compressed(msg: Any) -> bool:
    """Whether ``msg`` is a ``CompressedImage`` (it has ``format`` and no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def declared_encoding(fmt: str) -> str:
    """The raw image encoding a compressed ``format`` names (text before ``;``); ``bgr8`` for old colour formats."""
    head, sep, _ = str(fmt).partition(";")
    head = head.strip()
    if not sep and head.lower() in ("jpeg", "jpg", "png", ""):
        return "bgr8"
    return head


def message_encoding(msg: Any) -> str:
    """The encoding of an ``Image``, a :class:`DecodedImage` or (declared in its format) a ``CompressedImage``."""
    return declared_encoding(msg.format) if is_compressed(msg) else str(msg.encoding)


def _buffer(data: Any) -> np.ndarray:
    return np.frombuffer(bytes(data) if isinstance(data, (list, tuple)) else data, dtype=np.uint8)


def _imdecode(buffer: np.ndarray, what: str) -> np.ndarray:
    if buffer.size == 0:
        raise CompressedImageError(f"{what}: no data")
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise CompressedImageError(f"{what}: OpenCV cannot decode it ({str(exc).strip()})") from None
    if image is None or image.size == 0:
        raise CompressedImageError(f"{what}: OpenCV cannot decode it ({buffer.size} bytes; truncated or not an image)")
    return image


def decode_color(data: Any, fmt: str) -> np.ndarray:
    """A ``compressed`` colour image → uint8 H×W×3 RGB (grey replicated, alpha dropped), as image_transport decodes.

    Raises:
        CompressedImageError: undecodable data, or an image that is not 8-bit grey, BGR or BGRA.
    """
    image = _imdecode(_buffer(data), f"compressed colour image ({fmt!r})")
    if image.dtype != np.uint8:
        raise CompressedImageError(f"compressed colour image ({fmt!r}) decodes to {image.dtype}; expected 8-bit")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] not in (3, 4):
        raise CompressedImageError(f"compressed colour image ({fmt!r}) has {image.shape[2]} channels")
    stored_rgb = "compressed rgb" in str(fmt)  # the data's channels are R, G, B where OpenCV expects B, G, R
    return np.ascontiguousarray(image[:, :, :3] if stored_rgb else image[:, :, 2::-1])


def decode_depth(data: Any, fmt: str) -> tuple[np.ndarray, str]:
    """A ``compressedDepth`` (or 16-bit PNG ``compressed``) depth image → (pixels, encoding).

    Returns uint16 millimetres with ``16UC1`` (0 = invalid) or float32 metres with ``32FC1`` (NaN = invalid).

    Raises:
        CompressedImageError: an unknown format or encoding, a short or wrong header, a truncated PNG.
    """
    fmt = str(fmt)
    encoding = declared_encoding(fmt)
    details = fmt.partition(";")[2]
    if encoding not in ("16UC1", "mono16", "32FC1"):
        raise CompressedImageError(f"compressed depth format {fmt!r}: encoding {encoding!r} is not 16UC1 or 32FC1")
    buffer = _buffer(data)
    if "compressedDepth" in details or not details:
        codec = details.split("compressedDepth", 1)[-1].strip() or "png"
        if codec != "png":
            raise CompressedImageError(f"compressed depth format {fmt!r}: only PNG compressedDepth is supported")
        if buffer.size <= DEPTH_HEADER.size:
            raise CompressedImageError(
                f"compressedDepth image ({fmt!r}) has {buffer.size} bytes: no room for the 12-byte header and a PNG"
            )
        kind, quant_a, quant_b = DEPTH_HEADER.unpack_from(buffer.tobytes()[: DEPTH_HEADER.size])
        png = buffer[DEPTH_HEADER.size :]
        if png[: len(_PNG_SIGNATURE)].tobytes() != _PNG_SIGNATURE:
            raise CompressedImageError(
                f"compressedDepth image ({fmt!r}): no PNG after the 12-byte header (wrong header?)"
            )
    elif "png" in details:
        kind, quant_a, quant_b, png = _INV_DEPTH, 0.0, 0.0, buffer
    else:
        raise CompressedImageError(f"compressed depth format {fmt!r} is not compressedDepth png nor a 16-bit png")
    image = _imdecode(png, f"compressed depth image ({fmt!r})")
    if image.ndim != 2 or image.dtype != np.uint16:
        raise CompressedImageError(
            f"compressed depth image ({fmt!r}) decodes to {image.dtype} {image.shape}; expected one 16-bit channel"
        )
    if encoding != "32FC1":
        return image, "16UC1"
    if kind != _INV_DEPTH or not (np.isfinite(quant_a) and np.isfinite(quant_b)) or quant_a <= 0:
        raise CompressedImageError(
            f"compressedDepth image ({fmt!r}): header (format {kind}, depthQuantA {quant_a}, depthQuantB {quant_b}) "
            "is not a 32FC1 inverse-depth quantisation"
        )
    q = image.astype(np.float32)
    with np.errstate(divide="ignore"):
        metres = np.float32(quant_a) / (q - np.float32(quant_b))
    metres[image == 0] = np.nan
    return metres, "32FC1"


def decode_message(msg: Any, role: str) -> DecodedImage:
    """Decode a ``CompressedImage`` of input ``role`` (``color`` | ``depth``) to a :class:`DecodedImage`."""
    if role == "color":
        return DecodedImage(msg.header, "rgb8", decode_color(msg.data, msg.format))
    pixels, encoding = decode_depth(msg.data, msg.format)
    return DecodedImage(msg.header, encoding, pixels)


def decode_inputs(color: Any, depth: Any) -> tuple[Any, Any]:
    """``(color, depth)`` with each ``CompressedImage`` decoded (raw ``Image`` messages pass through).

    Raises:
        CompressedImageError: with ``role`` (``color`` | ``depth``) set on the exception.
    """
    out = []
    for role, msg in (("color", color), ("depth", depth)):
        if is_compressed(msg):
            try:
                msg = decode_message(msg, role)
            except CompressedImageError as exc:
                exc.role = role  # type: ignore[attr-defined]
                raise
        out.append(msg)
    return out[0], out[1]


# -- encoding (make-bag --compressed, tests) --------------------------------------------------------------------
def encode_color(rgb: np.ndarray, codec: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """uint8 H×W×3 RGB → (``format``, ``data``) as image_transport's compressed publisher writes an ``rgb8`` image."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_color needs uint8 H×W×3 RGB, got {rgb.dtype} {rgb.shape}")
    if codec not in ("jpeg", "png"):
        raise ValueError(f"codec must be jpeg or png, got {codec!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return f"rgb8; {codec} compressed bgr8", data.tobytes()


def encode_depth(
    depth: np.ndarray, depth_max: float = 10.0, depth_quantization: float = 100.0, png_level: int = 1
) -> tuple[str, bytes]:
    """uint16 millimetres (16UC1) or float32 metres (32FC1) → (``format``, ``data``) of ``compressedDepth png``.

    As image_transport's publisher: 16UC1 values above ``depth_max`` m become 0; 32FC1 is quantised to inverse
    depth with ``depthQuantA = z0 (z0 + 1)``, ``depthQuantB = 1 − depthQuantA / depth_max`` (``z0`` =
    ``depth_quantization``), invalid or ≥ ``depth_max`` → 0.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
        raise ValueError(f"encode_depth needs H×W uint16 (mm) or float32 (m), got {depth.dtype} {depth.shape}")
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    if depth.dtype == np.uint16:
        encoding, quant_a, quant_b = "16UC1", 0.0, 0.0
        image = np.where(depth > np.uint16(depth_max * 1000.0), 0, depth).astype(np.uint16)
    else:
        encoding = "32FC1"
        z0, far = np.float32(depth_quantization), np.float32(depth_max)
        quant_a = np.float32(z0 * (z0 + np.float32(1.0)))
        quant_b = np.float32(np.float32(1.0) - quant_a / far)
        valid = np.isfinite(depth) & (depth > 0) & (depth < far)
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = quant_a / np.where(valid, depth, np.float32(1.0)) + quant_b
        image = np.where(valid, np.clip(inverse, 1, 65535), 0).astype(np.uint16)  # truncation, as C++'s cast
    ok, png = cv2.imencode(".png", image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {depth.shape} depth image as PNG")
    return f"{encoding}; compressedDepth png", DEPTH_HEADER.pack(_INV_DEPTH, quant_a, quant_b) + png.tobytes()
