"""rosbag2 input and output without ROS: colour / depth / CameraInfo (/ label) streams in, output images out.

Storage is read and written with ``rosbags`` (pure Python), in either rosbag2 format: a bag *folder*
(``metadata.yaml`` plus ``.mcap`` or ``.db3`` files) or a single ``.mcap`` / ``.db3`` file.

Reading pairs messages the way the live node does: messages are taken in **recording order** (the bag's
receive timestamps, i.e. the order the node's subscriptions would have seen them) and fed to
:class:`rgbd_seg_ros.sync.ApproximateTimeSynchronizer` with the node's inputs (colour, depth, depth
CameraInfo) and its defaults (``queue_size`` 10, ``slop`` 0.02 s, ``config/seg.yaml``). Pairing uses the
header stamps. Messages become :class:`~rgbd_seg_ros.frames.RGBDFrame` objects through
:mod:`rgbd_seg_ros.ros.convert`. That module also decodes the node's rclpy messages: it is duck-typed and
imports no ROS package at module level, so bag messages share the node's decoding, depth units included.

Ground-truth labels (optional) are ``mono8`` (or ``mono16``) images of *dataset ids*. For NYUv2-40 and the
synthetic scenes these are 0 = unlabeled and 1..40 = classes. A label image belongs to the synchronised set
whose colour image has exactly its stamp.

Written topics (see :data:`OUTPUT_TOPICS`) use the node's output encodings: ``labels`` mono8 (mono16 above
255 classes), ``color`` and ``overlay`` rgb8, ``confidence`` 32FC1. Each output carries its colour image's stamp
and ``frame_id``.
"""

from __future__ import annotations

import contextlib
import heapq
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, metres_to_millimetres_u16
from rgbd_seg_ros.labels import LabelSet
from rgbd_seg_ros.ros.compressed import (
    COMPRESSED_IMAGE_TYPE,
    decode_inputs,
    encode_color,
    encode_depth,
    transport_topic,
)
from rgbd_seg_ros.ros.convert import image_to_array, intrinsics_from_info, stamp_to_ns, to_rgbd_frame
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer

__all__ = [
    "CAMERA_INFO_DELAY_NS",
    "CAMERA_INFO_TYPE",
    "COLOR_INFO_TOPIC",
    "COLOR_TOPIC",
    "DATASET_LABEL_SETS",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SLOP",
    "DEPTH_INFO_TOPIC",
    "DEPTH_TOPIC",
    "IMAGE_TYPE",
    "LABEL_ENCODINGS",
    "LABEL_TOPIC",
    "OUTPUT_TOPICS",
    "POINTS_TOPIC",
    "BagError",
    "BagMessage",
    "BagReader",
    "BagWriter",
    "InputTopics",
    "LabelMessage",
    "StreamTiming",
    "SyncedSet",
    "check_inputs",
    "dataset_samples",
    "frame_of",
    "label_ids",
    "read_synchronized",
    "resolve_input_topics",
    "train_to_dataset_ids",
    "write_dataset_bag",
]

COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/depth/image_raw"
COLOR_INFO_TOPIC = "/camera/color/camera_info"
DEPTH_INFO_TOPIC = "/camera/depth/camera_info"
LABEL_TOPIC = "/camera/labels/ground_truth"
#: Output name → topic: the node's ``~/<name>`` outputs for a node named ``rgbd_seg``.
OUTPUT_TOPICS: dict[str, str] = {name: f"/rgbd_seg/{name}" for name in ("labels", "color", "overlay", "confidence")}
#: The node's ``~/points`` (semantic point cloud), written by replay on request.
POINTS_TOPIC = "/rgbd_seg/points"

IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
#: Encodings a ground-truth label image may have (integer dataset ids).
LABEL_ENCODINGS: tuple[str, ...] = ("mono8", "8UC1", "mono16", "16UC1")

#: The node's synchroniser defaults (``config/seg.yaml``; a test keeps them equal).
DEFAULT_QUEUE_SIZE = 10
DEFAULT_SLOP = 0.02

_STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
_MAGIC = {".mcap": b"\x89MCAP", ".db3": b"SQLite format 3\x00"}
_NS = 1_000_000_000
#: How long after its image a camera driver's CameraInfo is received in a written bag (0.1 ms): drivers publish
#: the pair back to back, image first.
CAMERA_INFO_DELAY_NS = 100_000


class BagError(ValueError):
    """A bag that cannot be used: not a bag, unreadable, or without the topics and types replay needs."""


@cache
def typestore() -> Any:
    """The rosbags type store (Humble definitions; Image and CameraInfo are the same in later distros)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


# -- reading ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicInfo:
    """A topic of a bag: message type and number of messages."""

    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One deserialised message: topic, receive time (ns, the bag's timestamp) and the message."""

    topic: str
    log_time_ns: int
    msg: Any


def _storage_file(path: Path) -> Path:
    """The path ``rosbags.rosbag2.Reader`` should open for ``path``, or :class:`BagError` if it is not a bag."""
    hint = "expected a rosbag2 folder (with metadata.yaml) or a .mcap / .db3 file"
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return path
        files = sorted(p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES)
        if len(files) != 1:
            found = "no .mcap or .db3 file" if not files else f"{len(files)} storage files and no metadata.yaml"
            raise BagError(f"{path} is not a rosbag2: {found} in it ({hint})")
        path = files[0]
    if path.suffix not in _STORAGE_SUFFIXES:
        raise BagError(f"{path} is not a rosbag2 ({hint})")
    with path.open("rb") as f:
        head = f.read(len(_MAGIC[path.suffix]))
    if head != _MAGIC[path.suffix]:
        kind = "an MCAP" if path.suffix == ".mcap" else "an SQLite3"
        raise BagError(f"{path} is not {kind} file (wrong leading bytes): not a rosbag2, or corrupt")
    return path


class BagReader:
    """An open rosbag2 (folder or single ``.mcap`` / ``.db3`` file); use as a context manager.

    Raises:
        FileNotFoundError: nothing at ``path``.
        BagError: ``path`` is not a bag, or its index / metadata cannot be read (truncated or corrupt).
    """

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no bag at {self.path}")
        target = _storage_file(self.path)
        try:
            self._reader = Reader(target)
            self._reader.open()
            connections = list(self._reader.connections)
        except Exception as exc:  # rosbags / sqlite / struct errors alike: re-raised with the path and reason
            reason = f"{type(exc).__name__}: {exc}"
            if "end magic" in str(exc):
                reason += " (an MCAP recording that did not finish; `mcap recover` or `ros2 bag reindex` repairs it)"
            raise BagError(f"cannot read the bag {self.path} (truncated or corrupt?): {reason}") from None
        suffixes = {p.suffix for p in ([target] if target.is_file() else target.iterdir())}
        self.storage = next((_STORAGE_SUFFIXES[s] for s in _STORAGE_SUFFIXES if s in suffixes), "unknown")
        self._connections = connections
        counts: dict[str, list[Any]] = {}
        for c in connections:
            counts.setdefault(c.topic, [c.msgtype, 0])[1] += c.msgcount
        self.topics: dict[str, TopicInfo] = {t: TopicInfo(m, n) for t, (m, n) in sorted(counts.items())}

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    def describe(self) -> str:
        """One line per topic: ``name (type, N messages)``."""
        if not self.topics:
            return "  (no topics)"
        return "\n".join(f"  {t} ({i.msgtype}, {i.count} messages)" for t, i in self.topics.items())

    def require(self, topic: str, msgtype: str, role: str) -> TopicInfo:
        """The topic's info; :class:`BagError` naming the bag's topics if it is absent or of another type."""
        info = self.topics.get(topic)
        if info is None:
            raise BagError(f"the bag {self.path} has no {role} topic {topic!r}; its topics are:\n{self.describe()}")
        if info.msgtype != msgtype:
            raise BagError(
                f"{role} topic {topic!r} in {self.path} has type {info.msgtype}, expected {msgtype}; "
                f"its topics are:\n{self.describe()}"
            )
        return info

    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Deserialised messages of ``topics`` in recording (receive-time) order.

        Raises :class:`BagError` where the bag turns out to be truncated or corrupt.
        """
        wanted = set(topics)
        conns = [c for c in self._connections if c.topic in wanted]
        if not conns:
            return
        store = typestore()
        log_time = 0
        try:
            for conn, log_time, raw in self._reader.messages(connections=conns):
                yield BagMessage(conn.topic, int(log_time), store.deserialize_cdr(raw, conn.msgtype))
        except Exception as exc:  # as in __init__: the reader's own error types, re-raised with context
            raise BagError(
                f"cannot read the bag {self.path} after time {log_time} ns (truncated or corrupt?): "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def first(self, topic: str) -> BagMessage | None:
        """The first message of ``topic`` (None if it has none)."""
        return next(iter(self.messages([topic])), None)


@dataclass(frozen=True)
class InputTopics:
    """The node's inputs in a bag: colour image, registered depth image and the depth CameraInfo."""

    color: str = COLOR_TOPIC
    depth: str = DEPTH_TOPIC
    camera_info: str = DEPTH_INFO_TOPIC

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.color, self.depth, self.camera_info)


def resolve_input_topics(reader: BagReader, topics: InputTopics) -> InputTopics:
    """``topics`` with a colour or depth topic the bag lacks replaced by its image_transport compressed topic.

    ``/cam/color/image_raw`` absent but ``/cam/color/image_raw/compressed`` present → the latter (depth:
    ``…/compressedDepth``). Whether a topic is raw or compressed is then read from its message type.
    """
    chosen = {}
    for field_name in ("color", "depth"):
        topic = getattr(topics, field_name)
        transported = transport_topic(topic, field_name, "compressed")
        compressed = reader.topics.get(transported)
        if topic not in reader.topics and compressed is not None and compressed.msgtype == COMPRESSED_IMAGE_TYPE:
            topic = transported
        chosen[field_name] = topic
    return InputTopics(chosen["color"], chosen["depth"], topics.camera_info)


def check_inputs(reader: BagReader, topics: InputTopics, label_topic: str | None = None) -> None:
    """:class:`BagError` unless the bag has the input topics with their types and a usable label topic.

    Colour and depth are ``sensor_msgs/msg/Image`` or ``CompressedImage`` topics (see
    :func:`resolve_input_topics`). The label topic must hold ``sensor_msgs/msg/Image`` messages with a
    :data:`LABEL_ENCODINGS` encoding (its first message is checked).
    """
    topics = resolve_input_topics(reader, topics)
    for role, topic, msgtype in zip(("colour", "depth", "camera_info"), topics.as_tuple(), _INPUT_TYPES):
        info = reader.topics.get(topic)
        if role != "camera_info" and info is not None and info.msgtype == COMPRESSED_IMAGE_TYPE:
            continue
        reader.require(topic, msgtype, role)
    if label_topic:
        reader.require(label_topic, IMAGE_TYPE, "label")
        first = reader.first(label_topic)
        if first is not None and first.msg.encoding not in LABEL_ENCODINGS:
            raise BagError(
                f"label topic {label_topic!r} has encoding {first.msg.encoding!r}; ground truth must be an image of "
                f"class ids ({', '.join(LABEL_ENCODINGS)})"
            )
        if label_topic in topics.as_tuple():
            raise BagError(f"the label topic {label_topic!r} is also an input topic")


_INPUT_TYPES = (IMAGE_TYPE, IMAGE_TYPE, CAMERA_INFO_TYPE)


@dataclass
class SyncedSet:
    """One synchronised (colour, depth, CameraInfo) set as the node's callback receives it.

    Attributes:
        stamp_ns: the colour image's stamp (the stamp of every output made from the set).
        arrival_ns: receive time (bag timestamp) of the message that completed the set.
    """

    color: Any
    depth: Any
    info: Any
    stamp_ns: int
    arrival_ns: int


@dataclass
class LabelMessage:
    """A ground-truth label image, to be matched to the set whose colour stamp is ``stamp_ns``."""

    stamp_ns: int
    msg: Any
    arrival_ns: int


def read_synchronized(
    reader: BagReader,
    topics: InputTopics,
    synchronizer: ApproximateTimeSynchronizer,
    label_topic: str | None = None,
) -> Iterator[SyncedSet | LabelMessage]:
    """Feed the bag's input messages in recording order to ``synchronizer`` (3 inputs); yield what it emits.

    Label messages on ``label_topic`` are yielded as :class:`LabelMessage` where they occur. The
    synchroniser's counters (received, dropped, matched, unmatched per input) describe the whole bag.
    """
    if synchronizer.num_inputs != 3:
        raise ValueError(f"the synchroniser needs 3 inputs (colour, depth, camera_info), has {synchronizer.num_inputs}")
    index = {topic: i for i, topic in enumerate(topics.as_tuple())}
    if len(index) != 3:
        raise ValueError(f"colour, depth and camera_info topics must differ, got {topics.as_tuple()}")
    wanted = [*index, *([label_topic] if label_topic else [])]
    for item in reader.messages(wanted):
        if item.topic == label_topic:
            yield LabelMessage(stamp_to_ns(item.msg.header.stamp), item.msg, item.log_time_ns)
            continue
        match = synchronizer.add(index[item.topic], item.msg, stamp_to_ns(item.msg.header.stamp))
        if match is not None:
            color, depth, info = match.messages
            yield SyncedSet(color, depth, info, match.stamps_ns[0], item.log_time_ns)


def frame_of(synced: SyncedSet, depth_scale: float | None = None) -> tuple[RGBDFrame, bool]:
    """The set's :class:`RGBDFrame` (exactly as the node makes it) and whether depth had to be resized.

    Compressed colour or depth (``CompressedImage``) is decoded as the node decodes it.

    Raises ``ValueError`` (incl. ``UnsupportedEncodingError``, ``CompressedImageError``) for images the node would
    skip.
    """
    color, depth = decode_inputs(synced.color, synced.depth)  # CompressedImage → DecodedImage (compressed.py)
    intrinsics = intrinsics_from_info(synced.info, int(depth.width), int(depth.height))
    return to_rgbd_frame(color, depth, intrinsics, depth_scale)


def label_ids(msg: Any) -> np.ndarray:
    """A ground-truth label image → H×W integer dataset ids."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise BagError(f"a label image has encoding {msg.encoding!r}; expected one of {', '.join(LABEL_ENCODINGS)}")
    return image_to_array(msg)


# -- writing ----------------------------------------------------------------------------------------------------
def _header(stamp_ns: int, frame_id: str) -> Any:
    types = typestore().types
    stamp = types["builtin_interfaces/msg/Time"](sec=int(stamp_ns) // _NS, nanosec=int(stamp_ns) % _NS)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=str(frame_id))


_CHECKED_LAYOUTS: set[tuple[str, str, tuple[int, ...]]] = set()


def image_message(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``sensor_msgs/msg/Image`` of ``array`` (H×W or H×W×C, native byte order) in ``encoding``.

    Which dtype and channel count an encoding means is decided in one place, :mod:`rgbd_seg_ros.ros.convert`.
    The first message of each (encoding, dtype, channels) is decoded back with it, so an array that does not
    fit its encoding raises ``ValueError``.
    """
    array = np.ascontiguousarray(array)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"an image must be a non-empty H×W or H×W×C array, got shape {array.shape}")
    height, width = array.shape[:2]
    row_bytes = array.strides[0]
    msg = typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big" and array.itemsize > 1),
        step=row_bytes,
        data=array.reshape(-1).view(np.uint8),
    )
    key = (encoding, array.dtype.str, array.shape[2:])
    if key not in _CHECKED_LAYOUTS:
        try:
            decoded = image_to_array(msg)
        except ValueError as exc:
            raise ValueError(f"a {array.dtype} array of shape {array.shape} is not a {encoding} image: {exc}") from None
        if decoded.shape != array.shape or decoded.dtype != array.dtype:
            raise ValueError(
                f"a {array.dtype} array of shape {array.shape} is not a {encoding} image "
                f"({encoding} decodes to {decoded.dtype} {decoded.shape})"
            )
        _CHECKED_LAYOUTS.add(key)
    return msg


def camera_info_message(intrinsics: CameraIntrinsics, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``sensor_msgs/msg/CameraInfo`` for an undistorted pinhole camera (``plumb_bob``, D = 0)."""
    types = typestore().types
    k = intrinsics.matrix
    p = np.concatenate([k, np.zeros((3, 1))], axis=1)
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[CAMERA_INFO_TYPE](
        header=_header(stamp_ns, frame_id),
        height=intrinsics.height,
        width=intrinsics.width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=k.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def compressed_image_message(fmt: str, data: bytes, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``sensor_msgs/msg/CompressedImage``; ``format`` and ``data`` as ``ros/compressed.py`` makes them."""
    return typestore().types[COMPRESSED_IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(data, dtype=np.uint8)
    )


def point_cloud_message(cloud: Any, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``sensor_msgs/msg/PointCloud2`` of a :class:`rgbd_seg_ros.ros.points.SemanticCloud`."""
    from rgbd_seg_ros.ros.points import cloud_layout

    types = typestore().types
    layout = cloud_layout(cloud)
    fields = [
        types["sensor_msgs/msg/PointField"](name=n, offset=o, datatype=d, count=c) for n, o, d, c in layout["fields"]
    ]
    return types["sensor_msgs/msg/PointCloud2"](header=_header(stamp_ns, frame_id), **{**layout, "fields": fields})


class BagWriter:
    """Writes a new rosbag2: a folder (``path`` without a storage suffix) or a single ``.mcap`` / ``.db3`` file.

    Args:
        path: must not exist. ``out/bag`` → folder ``out/bag/`` (``metadata.yaml`` + ``bag.mcap``);
            ``out/output.mcap`` → that one file.
        storage: ``"mcap"`` or ``"sqlite3"``; for a single file its suffix decides.

    The bag is written in a hidden staging folder beside ``path`` (``.<name>.partial``) and moved into place
    when it is closed, so ``path`` never holds a half-written bag. Use as a context manager: an exception
    inside the block still closes the bag normally, so everything written up to it stays readable;
    :meth:`discard` instead drops it (nothing appears at ``path``).
    """

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin

        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already; choose another path or remove it")
        self.single_file = self.path.suffix in _STORAGE_SUFFIXES
        if self.single_file:
            storage = _STORAGE_SUFFIXES[self.path.suffix]
        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        self.storage = storage
        self._plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._staging = self.path.parent / f".{self.path.name}.partial"
        # rosbags names the storage file after the bag folder: <staging>/<name>/<name>.mcap
        self._folder = self._staging / (self.path.stem if self.single_file else self.path.name)
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def open(self) -> BagWriter:
        from rosbags.rosbag2 import Writer

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._staging.exists():
            shutil.rmtree(self._staging)  # left by a killed earlier run
        self._staging.mkdir()
        self._writer = Writer(self._folder, version=9, storage_plugin=self._plugin)
        self._writer.open()
        return self

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Serialise and write a rosbags message; ``log_time_ns`` is the bag's receive timestamp."""
        if self._writer is None:
            raise RuntimeError("BagWriter is not open (use it as a context manager)")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msg.__msgtype__, typestore=typestore())
            self._connections[topic] = conn
            self.counts[topic] = 0
        elif conn.msgtype != msg.__msgtype__:
            raise ValueError(f"topic {topic!r} holds {conn.msgtype}, cannot write a {msg.__msgtype__}")
        self._writer.write(conn, int(log_time_ns), typestore().serialize_cdr(msg, msg.__msgtype__))
        self.counts[topic] += 1

    def write_image(
        self, topic: str, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str, log_time_ns: int | None = None
    ) -> None:
        """Write ``array`` as an Image stamped ``stamp_ns``; received at ``log_time_ns`` (default: the stamp)."""
        msg = image_message(array, encoding, stamp_ns, frame_id)
        self.write(topic, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_camera_info(
        self, topic: str, intrinsics: CameraIntrinsics, stamp_ns: int, frame_id: str, log_time_ns: int | None = None
    ) -> None:
        """Write the CameraInfo of ``intrinsics`` stamped ``stamp_ns``."""
        msg = camera_info_message(intrinsics, stamp_ns, frame_id)
        self.write(topic, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_compressed_image(
        self, topic: str, fmt: str, data: bytes, stamp_ns: int, frame_id: str, log_time_ns: int | None = None
    ) -> None:
        """Write a ``CompressedImage`` (``format``, ``data``) stamped ``stamp_ns``."""
        msg = compressed_image_message(fmt, data, stamp_ns, frame_id)
        self.write(topic, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_points(self, topic: str, cloud: Any, stamp_ns: int, frame_id: str) -> None:
        """Write a semantic cloud (:func:`rgbd_seg_ros.ros.points.semantic_cloud`) as ``PointCloud2``."""
        self.write(topic, point_cloud_message(cloud, stamp_ns, frame_id), stamp_ns)

    def close(self) -> None:
        """Finish the bag (index, metadata) and move it into place."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
            if self.single_file:
                (self._folder / f"{self._folder.name}{self.path.suffix}").replace(self.path)
            else:
                self._folder.rename(self.path)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def discard(self) -> None:
        """Drop the bag being written: nothing appears at ``path`` (for a write that failed part-way)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        shutil.rmtree(self._staging, ignore_errors=True)


# -- datasets → bags ---------------------------------------------------------------------------------------------
#: Dataset name → the label set whose dataset ids its label topic holds.
DATASET_LABEL_SETS: dict[str, str] = {
    "synthetic": "synthetic",
    "nyudv2": "nyuv2-40",
    "sunrgbd": "sunrgbd-37",
    "cityscapes": "cityscapes-19",
}


def dataset_samples(
    name: str,
    frames: int | None = None,
    root: str | Path | None = None,
    split: str = "test",
    size: tuple[int, int] = (480, 640),
    seed: int = 0,
) -> Iterator[tuple[RGBDFrame, np.ndarray]]:
    """``(frame, dataset ids)`` of a dataset split, for :func:`write_dataset_bag`.

    ``synthetic``: ``frames`` procedural scenes of ``size`` (H, W) from ``seed`` (NYUv2-40 ids, 0 = unlabeled).
    Other names (``nyudv2``, ``sunrgbd``, ``cityscapes``): the first ``frames`` samples (all if None) of
    ``split`` under ``root``, read by ``rgbd_seg_ros.datasets``; their train ids are turned back into dataset
    ids (:func:`train_to_dataset_ids`). Arguments are checked before the first sample is made.
    """
    from rgbd_seg_ros.labels import get_label_set

    if name not in DATASET_LABEL_SETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_LABEL_SETS)}")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be ≥ 1, got {frames}")
    if name == "synthetic":
        from rgbd_seg_ros.synthetic import SceneGenerator

        if frames is None:
            raise ValueError("the synthetic dataset needs a number of frames")
        generator = SceneGenerator(height=size[0], width=size[1], seed=seed)
        return ((s.frame, s.labels) for s in map(generator.sample, range(frames)))
    if root is None:
        raise ValueError(f"dataset {name!r} needs its root folder")
    from rgbd_seg_ros.datasets import build_dataset

    dataset = build_dataset(name, root, split)
    label_set = get_label_set(DATASET_LABEL_SETS[name])
    count = len(dataset) if frames is None else min(frames, len(dataset))
    return ((s.frame, train_to_dataset_ids(s.labels, label_set)) for s in map(dataset.__getitem__, range(count)))


def train_to_dataset_ids(train_ids: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Invert :meth:`LabelSet.to_train_ids`: train ids (``ignore_index`` = void) → the dataset's stored ids.

    Each train id maps to the smallest dataset id that maps to it (NYUv2-40: ``k → k + 1``, 255 → 0). A train id
    that no dataset id maps to (a model's own "void" class) becomes the dataset's unlabelled id, as void does.
    """
    table = label_set.id_to_train
    if table is None:
        raise ValueError(f"label set {label_set.name!r} has no dataset-id mapping")
    if max(table) > 65535 or len(table) > 65536:
        raise ValueError(f"label set {label_set.name!r} has ids too large for a 16-bit label image")
    unlabelled = min((i for i, t in enumerate(table) if t == label_set.ignore_index), default=0)
    inverse = np.full(label_set.ignore_index + 1, unlabelled, dtype=np.int64)
    for dataset_id in reversed(range(len(table))):  # reversed: the smallest dataset id wins
        inverse[table[dataset_id]] = dataset_id
    ids = inverse[np.asarray(train_ids, dtype=np.int64)]
    return ids.astype(np.uint8 if len(table) <= 256 else np.uint16)


@dataclass(frozen=True)
class StreamTiming:
    """How :func:`write_dataset_bag` stamps and orders messages, like a camera driver and a recorder would.

    Colour frame ``i`` is stamped ``start_ns + i / fps``; its depth ``N(0, jitter_ms)`` later (clipped to
    ±2σ, so at most 6 ms with the default, below the node's 20 ms slop). Each image is received (written)
    a uniform ``delay_ms`` after its stamp; its CameraInfo :data:`CAMERA_INFO_DELAY_NS` after the image; the
    label image with the colour image, stamped like it.
    """

    fps: float = 30.0
    jitter_ms: float = 3.0
    delay_ms: tuple[float, float] = (5.0, 15.0)
    start_ns: int = 1_700_000_000 * _NS
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.jitter_ms < 0 or not 0 <= self.delay_ms[0] <= self.delay_ms[1]:
            raise ValueError(f"jitter_ms must be ≥ 0 and delay_ms an increasing pair ≥ 0, got {self}")


def write_dataset_bag(
    path: str | Path,
    samples: Iterable[tuple[RGBDFrame, np.ndarray | None]],
    storage: str = "mcap",
    timing: StreamTiming = StreamTiming(),
    label_encoding: str = "mono8",
    compressed: bool = False,
) -> dict[str, int]:
    """Write ``(frame, dataset ids or None)`` samples as a camera recording; returns messages per topic.

    Topics: :data:`COLOR_TOPIC` (rgb8), :data:`DEPTH_TOPIC` (16UC1 mm, registered to colour), both
    CameraInfo topics (the frame's intrinsics), and :data:`LABEL_TOPIC` (``label_encoding``) for samples
    with labels. Frames keep their own ``frame_id``; stamps follow ``timing``, not ``frame.stamp_ns``. Depth is
    stored by :func:`~rgbd_seg_ros.frames.metres_to_millimetres_u16`. If a sample fails, nothing is left at ``path``.
    ``compressed``: colour and depth as image_transport writes them instead (``sensor_msgs/CompressedImage``:
    JPEG on ``<COLOR_TOPIC>/compressed``, ``16UC1; compressedDepth png`` on ``<DEPTH_TOPIC>/compressedDepth``).
    """
    writer = BagWriter(path, storage).open()
    try:
        _write_samples(writer, samples, timing, label_encoding, compressed)
    except BaseException:  # a sample that cannot be read or written: no half-written bag is left at ``path``
        writer.discard()
        raise
    writer.close()
    return dict(writer.counts)


def _write_samples(
    writer: BagWriter,
    samples: Iterable[tuple[RGBDFrame, np.ndarray | None]],
    timing: StreamTiming,
    label_encoding: str,
    compressed: bool = False,
) -> None:
    """Stamp the samples per ``timing`` and write their messages in receive order."""
    rng = np.random.default_rng(timing.seed)
    sigma = timing.jitter_ms * 1e6
    lo, hi = (d * 1e6 for d in timing.delay_ms)
    pending: list[tuple] = []  # heap of (log time, write order, kind, topic, payload, stamp, frame_id)
    order = 0
    for i, (frame, labels) in enumerate(samples):
        color_stamp = timing.start_ns + round(i * _NS / timing.fps)
        depth_stamp = color_stamp + round(float(np.clip(rng.normal(0.0, sigma), -2 * sigma, 2 * sigma)))
        color_log = color_stamp + round(rng.uniform(lo, hi))
        depth_log = depth_stamp + round(rng.uniform(lo, hi))
        depth_mm = metres_to_millimetres_u16(frame.depth)
        images = [
            (color_log, "image", COLOR_TOPIC, (frame.rgb, "rgb8"), color_stamp),
            (depth_log, "image", DEPTH_TOPIC, (depth_mm, "16UC1"), depth_stamp),
        ]
        if compressed:
            color_topic = transport_topic(COLOR_TOPIC, "color", "compressed")
            depth_topic = transport_topic(DEPTH_TOPIC, "depth", "compressed")
            images = [
                (color_log, "compressed", color_topic, encode_color(frame.rgb), color_stamp),
                (depth_log, "compressed", depth_topic, encode_depth(depth_mm), depth_stamp),
            ]
        events = [
            images[0],
            (color_log + CAMERA_INFO_DELAY_NS, "info", COLOR_INFO_TOPIC, frame.intrinsics, color_stamp),
            images[1],
            (depth_log + CAMERA_INFO_DELAY_NS, "info", DEPTH_INFO_TOPIC, frame.intrinsics, depth_stamp),
        ]
        if labels is not None:
            events.append((color_log, "image", LABEL_TOPIC, (np.asarray(labels), label_encoding), color_stamp))
        for log, kind, topic, payload, stamp in events:
            heapq.heappush(pending, (log, order, kind, topic, payload, stamp, frame.frame_id))
            order += 1
        # Everything received before the earliest possible later message can be written, in receive order.
        horizon = timing.start_ns + round((i + 1) * _NS / timing.fps) - 2 * sigma
        while pending and pending[0][0] < horizon:
            _write_event(writer, heapq.heappop(pending))
    while pending:
        _write_event(writer, heapq.heappop(pending))


def _write_event(writer: BagWriter, event: tuple) -> None:
    log, _, kind, topic, payload, stamp, frame_id = event
    if kind == "image":
        array, encoding = payload
        writer.write_image(topic, array, encoding, stamp, frame_id, log)
    elif kind == "compressed":
        fmt, data = payload
        writer.write_compressed_image(topic, fmt, data, stamp, frame_id, log)
    else:
        writer.write_camera_info(topic, payload, stamp, frame_id, log)
