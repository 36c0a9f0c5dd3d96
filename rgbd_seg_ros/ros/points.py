"""The semantic point cloud: depth back-projected (:func:`rgbd_seg_ros.depth.points.backproject`) with colour, label
and confidence per point, laid out as ``sensor_msgs/PointCloud2``.

Point layout (little-endian, ``point_step`` 24 bytes): ``x``, ``y``, ``z`` float32 metres in the camera optical
frame (offsets 0, 4, 8); ``rgb`` float32 at 12 holding the bits of uint32 ``0x00RRGGBB`` (PCL's packing);
``label`` uint16 at 16 (the train id of ``~/labels``, 255 = unlabeled for ≤ 255 classes); 2 bytes padding;
``confidence`` float32 at 20.

Every ``stride``-th pixel of every ``stride``-th row is used. Unorganised (default): points with invalid depth
(NaN, ≤ 0, outside the depth range) are left out, ``height`` 1, ``is_dense`` true. Organised: one point per used
pixel (``height`` × ``width`` = the decimated image), invalid ones with NaN coordinates and ``is_dense`` false.
The layout is built here; :func:`point_cloud_message` makes the rclpy message and ``rgbd_seg_ros.bag`` the
rosbags one from the same :func:`cloud_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rgbd_seg_ros.depth.points import backproject
from rgbd_seg_ros.frames import CameraIntrinsics

__all__ = ["POINT_DTYPE", "POINT_FIELDS", "SemanticCloud", "cloud_layout", "point_cloud_message", "semantic_cloud"]

# sensor_msgs/PointField datatypes
_UINT16, _FLOAT32 = 4, 7
#: (name, offset, PointField datatype, count) of every field.
POINT_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ("x", 0, _FLOAT32, 1),
    ("y", 4, _FLOAT32, 1),
    ("z", 8, _FLOAT32, 1),
    ("rgb", 12, _FLOAT32, 1),
    ("label", 16, _UINT16, 1),
    ("confidence", 20, _FLOAT32, 1),
)
POINT_DTYPE = np.dtype(
    {
        "names": [f[0] for f in POINT_FIELDS],
        "formats": ["<u2" if f[2] == _UINT16 else "<f4" for f in POINT_FIELDS],
        "offsets": [f[1] for f in POINT_FIELDS],
        "itemsize": 24,
    }
)


@dataclass
class SemanticCloud:
    """Points (:data:`POINT_DTYPE`, shape ``(height, width)``) and whether every point is finite."""

    points: np.ndarray
    is_dense: bool

    @property
    def height(self) -> int:
        return int(self.points.shape[0])

    @property
    def width(self) -> int:
        return int(self.points.shape[1])


def _packed_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 …×3 RGB → float32 carrying the bits of uint32 ``0x00RRGGBB``."""
    c = rgb.astype(np.uint32)
    return ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).view(np.float32)


def semantic_cloud(
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    rgb: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    stride: int = 1,
    organized: bool = False,
    depth_range: tuple[float, float] | None = None,
) -> SemanticCloud:
    """The labelled cloud of one segmented frame.

    Args:
        depth_m: H×W float32 metres (NaN = invalid), registered to ``rgb``. intrinsics: of that H×W image.
        rgb: H×W×3 uint8. labels: H×W integer train ids. confidence: H×W float.
        stride: pixel decimation (≥ 1). organized: keep the image grid (NaN points) instead of leaving points out.
        depth_range: (min, max) metres; depth outside is invalid like NaN. None = any positive depth.
    """
    shape = np.asarray(depth_m).shape[:2]
    for name, array in (("rgb", rgb), ("labels", labels), ("confidence", confidence)):
        if np.asarray(array).shape[:2] != shape:
            raise ValueError(f"{name} is {np.asarray(array).shape} but depth is {shape}")
    xyz = backproject(depth_m, intrinsics, stride)
    valid = np.isfinite(xyz[..., 2])
    if depth_range is not None:
        with np.errstate(invalid="ignore"):
            valid &= (xyz[..., 2] >= depth_range[0]) & (xyz[..., 2] <= depth_range[1])
    s = slice(None, None, stride)
    columns = {
        "rgb": _packed_rgb(np.asarray(rgb)[s, s]),
        "label": np.asarray(labels)[s, s],
        "confidence": np.asarray(confidence)[s, s],
    }
    if organized:
        points = np.empty(valid.shape, POINT_DTYPE)
        xyz[~valid] = np.nan
        for i, axis in enumerate("xyz"):
            points[axis] = xyz[..., i]
        for name, values in columns.items():
            points[name] = values
        return SemanticCloud(points, bool(valid.all()))
    points = np.empty((1, int(np.count_nonzero(valid))), POINT_DTYPE)
    row = points[0]
    for i, axis in enumerate("xyz"):
        row[axis] = xyz[..., i][valid]
    for name, values in columns.items():
        row[name] = values[valid]
    return SemanticCloud(points, True)


def cloud_layout(cloud: SemanticCloud) -> dict[str, Any]:
    """``PointCloud2`` fields except ``header`` and the field objects: fields as tuples, data as uint8 bytes."""
    data = np.ascontiguousarray(cloud.points)  # POINT_DTYPE is little-endian on every host
    return {
        "height": cloud.height,
        "width": cloud.width,
        "fields": POINT_FIELDS,
        "is_bigendian": False,
        "point_step": POINT_DTYPE.itemsize,
        "row_step": POINT_DTYPE.itemsize * cloud.width,
        "data": data.reshape(-1).view(np.uint8),
        "is_dense": cloud.is_dense,
    }


def point_cloud_message(cloud: SemanticCloud, header: Any) -> Any:
    """An rclpy ``sensor_msgs/PointCloud2`` of ``cloud`` with ``header`` (the depth image's)."""
    from sensor_msgs.msg import PointCloud2, PointField

    layout = cloud_layout(cloud)
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = layout["height"], layout["width"]
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in layout["fields"]]
    msg.is_bigendian = layout["is_bigendian"]
    msg.point_step, msg.row_step = layout["point_step"], layout["row_step"]
    msg.data = layout["data"].tobytes()
    msg.is_dense = layout["is_dense"]
    return msg
