"""Helpers for the node tests: a private rclpy context spun in a thread, message builders, stand-in segmenters.

Every harness uses its own ``Context`` with its own DDS domain and a unique namespace, so tests of several
modules (or several engineers) running at once on one machine do not see each other's topics. Discovery
stays on loopback (tests/conftest.py sets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.ros.convert import image_from_array
from rgbd_seg_ros.ros.node import SegmentationNode

_COUNTER = itertools.count()
PERIOD_NS = 33_333_333  # 30 Hz
DEPTH_OFFSET_NS = 3_000_000  # depth stamped 3 ms after colour, like unsynchronised sensors


def domain_id(offset: int) -> int:
    """A DDS domain for this process and test module (10..99; other machines' processes never collide)."""
    return 10 + (os.getpid() * 7 + offset) % 90


class RosHarness:
    """One context, one executor thread, one I/O node for the test's publishers and subscribers."""

    def __init__(self, domain: int) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.namespace = f"/t{os.getpid()}_{next(_COUNTER)}"
        self.executor = SingleThreadedExecutor(context=self.context)
        self.io = Node("test_io", namespace=self.namespace, context=self.context)
        self.executor.add_node(self.io)
        self.nodes: list[Node] = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if not self.context.ok():
                    return
                raise

    def start_node(self, segmenter: Any, cli_args: list[str] | None = None, **params: Any) -> SegmentationNode:
        """Start a node with ``segmenter`` (None = load the checkpoint the parameters name)."""
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        node = SegmentationNode(
            segmenter_factory=None if segmenter is None else (lambda _p: segmenter),
            namespace=self.namespace,
            context=self.context,
            parameter_overrides=overrides,
            cli_args=cli_args,
        )
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def publisher(self, msg_type: Any, topic: str, reliable: bool = False) -> Any:
        reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        return self.io.create_publisher(msg_type, topic, QoSProfile(depth=10, reliability=reliability))

    def collect(self, msg_type: Any, topic: str) -> list[Any]:
        received: list[Any] = []
        self.io.create_subscription(msg_type, topic, received.append, QoSProfile(depth=50))
        return received

    def shutdown(self) -> None:
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)
        self.executor.shutdown()


def wait_for(predicate: Any, timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; the final value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def wait_matched(*publishers: Any, timeout: float = 5.0) -> None:
    assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers), timeout), "no discovery"


def stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _set_header(msg: Any, t_ns: int, frame_id: str) -> Any:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(t_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def color_msg(rgb: np.ndarray, t_ns: int, frame_id: str = "color_optical", encoding: str = "rgb8") -> Image:
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": rgb[:, :, 0]}.get(encoding, rgb)
    msg = image_from_array(np.ascontiguousarray(pixels), encoding if encoding in ("rgb8", "bgr8", "mono8") else "rgb8")
    msg.encoding = encoding  # lets tests send an encoding the node must refuse
    return _set_header(msg, t_ns, frame_id)


def depth_msg(metres: np.ndarray, t_ns: int, encoding: str = "16UC1", frame_id: str = "depth_optical") -> Image:
    """Depth in REP 118 form: 16UC1 millimetres (NaN → 0) or 32FC1 metres (NaN kept)."""
    if encoding == "16UC1":
        array = np.nan_to_num(np.round(metres * 1000.0), nan=0.0).astype(np.uint16)
    else:
        array = metres.astype(np.float32)
    return _set_header(image_from_array(array, encoding), t_ns, frame_id)


class Recorder:
    """Stands in for the node's logger; keeps (level, text)."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda text, **_: self.lines.append((level, str(text)))

    def count(self, level, needle):
        return sum(1 for lv, text in list(self.lines) if lv == level and needle in text)


def info_msg(k: CameraIntrinsics, t_ns: int, frame_id: str = "depth_optical") -> CameraInfo:
    info = CameraInfo(width=k.width, height=k.height)
    info.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    return _set_header(info, t_ns, frame_id)


def make_scene(height: int = 48, width: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, CameraIntrinsics]:
    """Colour (uint8 RGB), depth (metres, mm-exact, a few NaN holes) and intrinsics of a small scene."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = (np.round(rng.uniform(0.5, 4.0, (height, width)) * 1000) / 1000).astype(np.float32)
    depth[rng.random((height, width)) < 0.05] = np.nan
    return rgb, depth, CameraIntrinsics.nyu_kinect(width, height)


class DepthSegmenter:
    """Stand-in segmenter: label = depth band (0.5 m steps), void (255) where depth is missing.

    Labels depend on every depth pixel, so equal label images mean equal decoded depth. ``delay`` (s) makes
    it slower than the camera; frames it saw are kept in ``frames``.
    """

    model_name = "depth-bands"
    device = "cpu"

    def __init__(self, delay: float = 0.0, label_set: str = "nyuv2-40") -> None:
        self.label_set = get_label_set(label_set)
        self.metadata = {"backbone": "none"}
        self.delay = delay
        self.frames: list[Any] = []

    def __call__(self, frame: Any) -> SimpleNamespace:
        self.frames.append(frame)
        if self.delay:
            time.sleep(self.delay)
        bands = np.clip(np.nan_to_num(frame.depth, nan=0.0) // 0.5, 0, self.label_set.num_classes - 1)
        labels = np.where(np.isnan(frame.depth), self.label_set.ignore_index, bands).astype(self.label_set.label_dtype)
        confidence = np.full(labels.shape, 0.75, np.float32)
        return SimpleNamespace(labels=labels, confidence=confidence, timings={"total": self.delay * 1e3})
