"""The library's frame types: pinhole intrinsics and one registered RGB-D frame.

Conventions (REP 103/118, ``sensor_msgs/CameraInfo``):

* Pixel ``(u, v)`` are 0-based column/row indices at pixel *centres*; the camera optical frame has
  x right, y down, z forward, so a pixel back-projects to ``((u - cx) z / fx, (v - cy) z / fy, z)``.
* Depth inside the library is float32 metres with NaN for "no measurement". Sensor encodings become that
  here, once, through :func:`depth_to_metres`: 16UC1 millimetres with the sentinels 0 and 65535 (no return,
  out of range) invalid, 32FC1 metres with NaN, ±inf and ≤ 0 invalid. :func:`depth_units_warning` says when
  the values do not look like their encoding's unit. The sensor's valid range is applied later, by the
  Segmenter (:func:`limit_depth_range`), before hole filling and encoding.
* Gravity (:attr:`RGBDFrame.gravity`, e.g. from an IMU) is a unit 3-vector in the camera optical frame pointing
  the way gravity pulls (down): a level camera has ``(0, 1, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` × ``height`` pixels (focal lengths and centre in pixels)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if not (np.isfinite([self.fx, self.fy, self.cx, self.cy]).all() and self.fx > 0 and self.fy > 0):
            raise ValueError(f"CameraIntrinsics needs finite fx, fy > 0 and finite cx, cy; got {self}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"CameraIntrinsics needs a positive image size; got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def nyu_kinect(cls, width: int = 640, height: int = 480) -> CameraIntrinsics:
        """The NYUv2 Kinect colour camera (the toolbox's calibration at 640×480), scaled to ``width``×``height``."""
        base = cls(fx=518.857901, fy=519.469611, cx=325.582449, cy=253.736166, width=640, height=480)
        return base if (width, height) == (640, 480) else base.scaled(width, height)

    @classmethod
    def from_camera_info(cls, msg: Any) -> CameraIntrinsics:
        """From a ``sensor_msgs/msg/CameraInfo`` (anything with ``k``, ``width``, ``height``).

        Uses the 3×3 ``K`` of the (distorted) image, as REP 104 defines it for registered depth.
        """
        k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f"CameraInfo.k must have 9 elements, got {k.size}")
        if k[0] <= 0 or k[4] <= 0:
            raise ValueError("CameraInfo has an uncalibrated K (fx or fy is 0): cannot back-project depth")
        return cls(fx=k[0], fy=k[4], cx=k[2], cy=k[5], width=int(msg.width), height=int(msg.height))

    @property
    def matrix(self) -> np.ndarray:
        """The 3×3 camera matrix K (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same view resized to ``width`` × ``height`` (pixel-centre convention).

        A pixel centre ``u`` maps to ``(u + 0.5) * sx - 0.5`` with ``sx = width / self.width``.
        """
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=width,
            height=height,
        )

    def cropped(self, x0: int, y0: int, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the window ``[y0:y0+height, x0:x0+width]`` (offsets may be negative for padding)."""
        return CameraIntrinsics(fx=self.fx, fy=self.fy, cx=self.cx - x0, cy=self.cy - y0, width=width, height=height)

    def flipped(self) -> CameraIntrinsics:
        """Intrinsics of the horizontally mirrored image, for a mirrored scene (x → −x): ``cx' = W − 1 − cx``."""
        return CameraIntrinsics(
            fx=self.fx, fy=self.fy, cx=self.width - 1 - self.cx, cy=self.cy, width=self.width, height=self.height
        )


def depth_to_metres(depth: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Convert a sensor depth image to float32 metres with NaN for every invalid pixel.

    Args:
        depth: H×W array. Integer types (16UC1) are millimetres by default; 0 and the type's largest value
            (65535 for 16 bits: Kinect v2 / libfreenect2 "out of range") are invalid. Float types (32FC1) are
            metres with NaN, ±inf and values ≤ 0 invalid.
        scale: metres per unit, overriding the default (0.001 for integers, 1.0 for floats); the sentinels are
            those of the raw values whatever the scale.
    """
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be a single-channel H×W image, got shape {depth.shape}")
    if np.issubdtype(depth.dtype, np.integer):
        unit = 0.001 if scale is None else scale
    elif np.issubdtype(depth.dtype, np.floating):
        unit = 1.0 if scale is None else scale
    else:
        raise TypeError(f"depth must be an integer (e.g. 16UC1 mm) or float (32FC1 m) image, got {depth.dtype}")
    if not unit > 0:
        raise ValueError(f"depth scale must be > 0 metres per unit, got {unit}")
    metres = depth.astype(np.float32) * np.float32(unit)
    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(metres) & (metres > 0))
    if np.issubdtype(depth.dtype, np.integer):
        invalid |= depth == np.iinfo(depth.dtype).max
    metres[invalid] = np.nan
    return metres


#: Largest depth a 16-bit millimetre image stores: 65534 mm. 65535 is never written: it is the "out of range"
#: sentinel that :func:`depth_to_metres` reads as invalid.
MAX_DEPTH_MM_U16 = 65534


def metres_to_millimetres_u16(depth: np.ndarray) -> np.ndarray:
    """float metres (NaN = invalid) → uint16 millimetres (16UC1, REP 118), rounded to the nearest millimetre.

    The one rule, as ROS 16UC1 depth has it: 0 = no measurement. NaN, ±inf, depth that rounds to 0 mm and depth
    beyond :data:`MAX_DEPTH_MM_U16` (from 65.5345 m) all become 0; nothing saturates. Every value written reads
    back through :func:`depth_to_metres` as itself (to the millimetre) or as invalid.
    """
    mm = np.round(np.asarray(depth, dtype=np.float64) * 1000.0)
    with np.errstate(invalid="ignore"):
        valid = (mm >= 1) & (mm <= MAX_DEPTH_MM_U16)  # False for NaN and ±inf
    return np.where(valid, mm, 0).astype(np.uint16)


#: ``RGBDFrame.meta`` key under which frame makers (``ros/convert.py``) leave :func:`depth_units_warning`'s text.
DEPTH_UNITS_WARNING = "depth_units_warning"
#: 16-bit depth whose largest valid value is below this looks like metres, not millimetres.
_MM_LOOKS_LIKE_METRES = 20
#: Float depth whose median valid value is above this looks like millimetres, not metres.
_METRES_LOOK_LIKE_MM = 100.0


def depth_units_warning(depth: np.ndarray, scale: float | None = None) -> str | None:
    """The warning to log when raw sensor depth does not look like its encoding's unit, else None.

    Integer depth (16UC1, millimetres) whose valid values all lie below 20 looks like metres; float depth (32FC1,
    metres) whose median valid value is above 100 looks like millimetres. Nothing is said when ``scale`` (metres
    per unit) is given: the unit was chosen explicitly. Checks every 4th row and column (cheap enough per frame).
    """
    if scale is not None and scale > 0:
        return None
    raw = np.asarray(depth)
    raw = raw[::4, ::4] if raw.ndim >= 2 else raw
    if np.issubdtype(raw.dtype, np.integer):
        valid = raw[(raw > 0) & (raw < np.iinfo(raw.dtype).max)]
        if valid.size and valid.max() < _MM_LOOKS_LIKE_METRES:
            return (
                f"integer (16UC1) depth is read as millimetres, but its largest value is {int(valid.max())}: that "
                "looks like metres; set depth_scale to the metres per unit (1.0 for metres)"
            )
    elif np.issubdtype(raw.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            valid = raw[np.isfinite(raw) & (raw > 0)]
        median = float(np.median(valid)) if valid.size else 0.0
        if median > _METRES_LOOK_LIKE_MM:
            return (
                f"float (32FC1) depth is read as metres, but its median is {median:.0f}: that looks like "
                "millimetres; set depth_scale to the metres per unit (0.001 for millimetres)"
            )
    return None


def limit_depth_range(frame: RGBDFrame, min_m: float, max_m: float) -> RGBDFrame:
    """``frame`` with depth outside [``min_m``, ``max_m``] metres (and NaN/inf) set to NaN: the valid range of the
    sensor, applied before hole filling and encoding. Returns ``frame`` itself when nothing changes."""
    depth = frame.depth
    with np.errstate(invalid="ignore"):
        bad = ~((depth >= np.float32(min_m)) & (depth <= np.float32(max_m)))
    bad &= ~np.isnan(depth)  # already invalid
    if not bad.any():
        return frame
    depth = depth.copy()
    depth[bad] = np.nan
    return replace(frame, depth=depth)


def valid_depth_fraction(frame: RGBDFrame, min_m: float, max_m: float) -> float:
    """Fraction (0..1) of ``frame``'s pixels with a depth in [``min_m``, ``max_m``] metres: what the model gets as
    measured depth after :func:`limit_depth_range`, before hole filling."""
    depth = frame.depth
    with np.errstate(invalid="ignore"):
        valid = (depth >= np.float32(min_m)) & (depth <= np.float32(max_m))
    return float(np.count_nonzero(valid)) / max(1, depth.size)


@dataclass
class RGBDFrame:
    """One registered RGB-D frame.

    Attributes:
        rgb: uint8 H×W×3, RGB order.
        depth: float32 H×W, metres, NaN = no measurement; registered to ``rgb`` (same pixel grid).
        intrinsics: of the colour image (and hence of the registered depth), ``width``×``height`` = W×H.
        stamp_ns: acquisition time in nanoseconds (the colour image's header stamp).
        frame_id: the optical frame of the colour camera.
        meta: free per-frame extras (e.g. a precomputed ``"hha"`` image, :data:`DEPTH_UNITS_WARNING`).
        gravity: known gravity (e.g. from an IMU): float64 unit 3-vector in this camera's optical frame (x right,
            y down, z forward) pointing the way gravity pulls, so a level camera has ``(0, 1, 0)``; any non-zero
            length is normalised. None = unknown: HHA estimates it from the depth image.
    """

    rgb: np.ndarray
    depth: np.ndarray
    intrinsics: CameraIntrinsics
    stamp_ns: int = 0
    frame_id: str = "camera_color_optical_frame"
    meta: dict[str, Any] = field(default_factory=dict)
    gravity: np.ndarray | None = None

    def __post_init__(self) -> None:
        rgb, depth = np.asarray(self.rgb), np.asarray(self.depth)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"RGBDFrame.rgb must be uint8 H×W×3, got {rgb.dtype} {rgb.shape}")
        if depth.dtype != np.float32 or depth.ndim != 2:
            raise ValueError(
                f"RGBDFrame.depth must be float32 H×W metres (convert with depth_to_metres), got {depth.dtype} "
                f"{depth.shape}"
            )
        if rgb.shape[:2] != depth.shape:
            raise ValueError(
                f"RGBDFrame: rgb is {rgb.shape[1]}x{rgb.shape[0]} but depth is {depth.shape[1]}x{depth.shape[0]}; "
                "depth must be registered to the colour image (resize it with the intrinsics first)"
            )
        if (self.intrinsics.width, self.intrinsics.height) != (rgb.shape[1], rgb.shape[0]):
            raise ValueError(
                f"RGBDFrame: intrinsics are for {self.intrinsics.width}x{self.intrinsics.height} but the images are "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        self.rgb, self.depth = rgb, depth
        if self.gravity is not None:
            g = np.asarray(self.gravity, dtype=np.float64).reshape(-1)
            norm = float(np.linalg.norm(g)) if g.size == 3 else 0.0
            if not (np.isfinite(g).all() and norm > 0):
                raise ValueError(f"RGBDFrame.gravity must be a finite non-zero 3-vector, got {self.gravity!r}")
            self.gravity = g / norm

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def resized(self, height: int, width: int) -> RGBDFrame:
        """The frame resampled to ``height`` × ``width``, intrinsics following.

        Colour is interpolated (area when shrinking, bilinear when enlarging); depth takes the nearest sample
        so that holes and depth edges are not smeared into invented values. ``meta`` and ``gravity`` are carried over
        unchanged (a resize does not rotate the camera).
        """
        import cv2

        if (height, width) == (self.height, self.width):
            return self
        shrink = height * width < self.height * self.width
        rgb = cv2.resize(self.rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        depth = cv2.resize(self.depth, (width, height), interpolation=cv2.INTER_NEAREST)
        intrinsics = self.intrinsics.scaled(width, height)
        return replace(self, rgb=rgb, depth=depth, intrinsics=intrinsics, meta=dict(self.meta))

    def flipped(self) -> RGBDFrame:
        """The horizontally mirrored frame, i.e. the frame of the mirrored scene (x → −x): intrinsics follow
        (:meth:`CameraIntrinsics.flipped`) and so does gravity's x component."""
        gravity = None if self.gravity is None else self.gravity * np.array([-1.0, 1.0, 1.0])
        return replace(
            self,
            rgb=np.ascontiguousarray(self.rgb[:, ::-1]),
            depth=np.ascontiguousarray(self.depth[:, ::-1]),
            intrinsics=self.intrinsics.flipped(),
            meta=dict(self.meta),
            gravity=gravity,
        )
