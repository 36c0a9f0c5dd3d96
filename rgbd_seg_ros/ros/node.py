"""``rgbd_seg_node``: synchronised colour + depth (+ CameraInfo) in, semantic images out.

Inputs (relative, remappable): ``color/image`` (rgb8, bgr8, rgba8, bgra8, mono8), ``depth/image`` (16UC1 mm /
32FC1 m, REP 118; ``depth_scale`` overrides), ``depth/camera_info`` (of the registered depth). Outputs, each
with the colour image's header: ``~/labels`` (mono8, 255 = unlabeled; mono16 above 255 classes), ``~/color``
(rgb8), ``~/overlay`` (rgb8), ``~/confidence`` (32FC1); ``~/points`` (PointCloud2, the depth image's header,
``ros/points.py``) while subscribed; ``~/label_info`` latched once (``ros/label_info.py``); status on
``/diagnostics``. With ``input_transport.color|depth: compressed`` the inputs are image_transport's
``color/image/compressed`` and ``depth/image/compressedDepth``, decoded on the worker (``ros/compressed.py``).
``ros/lifecycle_node.py`` runs the same node as a managed node (set-up split into ``_declare``, ``_configure``,
``_activate``).

Threading: the synchronised callback only stores the newest set (replacing an unprocessed one counts as a
drop); one worker thread converts, segments and publishes the newest set. Latency therefore stays within
about one camera period plus one model period when the model is slower than the camera, and callbacks never
wait for inference.

Decisions:

* Missing CameraInfo: with ``fallback_intrinsics`` all 0 (default), colour, depth and CameraInfo are
  synchronised together, so nothing is published until CameraInfo arrives; a warning names the topic every
  ``camera_info_timeout`` seconds while images arrive without it. With ``fallback_intrinsics`` set, colour
  and depth are synchronised alone and the newest CameraInfo is used when one has arrived, the fallback before.
* Depth of another size than colour (same aspect ratio): resampled to the colour size with nearest
  neighbour, intrinsics scaled (warned once). Another aspect ratio means unregistered depth: reported once,
  those sets are skipped.
* A message with an unsupported encoding is reported once per input and encoding and skipped; the node runs on.
* Depth whose values look like another unit (16UC1 metres, 32FC1 millimetres) is warned about once, naming
  ``depth_scale``. With ``imu_topic`` set, frames carry the accelerometer's gravity (``ros/imu.py``) for HHA;
  frames without a reading within 0.5 s use the per-frame estimate (warned once).
* No enabled output with a subscriber (and ``publish_all`` off): the set is not segmented (counted as idle).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from rgbd_seg_ros.allocator import tune_allocator
from rgbd_seg_ros.frames import DEPTH_UNITS_WARNING, CameraIntrinsics, valid_depth_fraction
from rgbd_seg_ros.labels import LabelSet, get_label_set
from rgbd_seg_ros.render import render_outputs
from rgbd_seg_ros.ros.compressed import (
    CompressedImageError,
    decode_inputs,
    is_compressed,
    message_encoding,
    transport_topic,
)
from rgbd_seg_ros.ros.convert import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    image_from_array,
    intrinsics_from_info,
    stamp_to_ns,
    to_rgbd_frame,
)
from rgbd_seg_ros.ros.diagnostics import NodeStats, diagnostic_array
from rgbd_seg_ros.ros.imu import ImuGravity
from rgbd_seg_ros.ros.label_info import LABEL_INFO_QOS_DEPTH, label_info_message, label_info_type
from rgbd_seg_ros.ros.params import OUTPUTS, RUNTIME_PARAMS, StartupError, declare_parameters
from rgbd_seg_ros.ros.points import point_cloud_message, semantic_cloud
from rgbd_seg_ros.settings import RunOptions, resolve_depth_range
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer

__all__ = [
    "SegmentationNode",
    "StartupError",
    "load_segmenter",
    "main",
    "missing_dependency",
    "resolve_sync_backend",
    "run",
]

NODE_NAME = "rgbd_seg"
COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC = "color/image", "depth/image", "depth/camera_info"
_INPUTS = ("color", "depth", "camera_info")
_OUTPUT_QOS = QoSProfile(depth=5)  # reliable: matches reliable and best-effort subscribers

#: ``factory(parameters) -> segmenter``; the segmenter has ``label_set``, ``device``, ``model_name`` and
#: ``__call__(RGBDFrame) -> Segmentation``.
SegmenterFactory = Callable[[Mapping[str, Any]], Any]


def run_options_from_params(params: Mapping[str, Any]) -> RunOptions:
    """The :class:`~rgbd_seg_ros.settings.RunOptions` the node's parameters name (same defaults as the CLI)."""
    height, width = (int(v) for v in params["input_size"])
    try:
        return RunOptions(
            device=str(params["device"]),
            backend=str(params["backend"]),
            precision=str(params["precision"]),
            input_size=(height, width) if height and width else None,
            num_threads=int(params["num_threads"]),
            depth_fill=str(params["depth_fill"]) or None,
            min_depth_m=float(params["min_depth_m"]) or None,
            max_depth_m=float(params["max_depth_m"]) or None,
            cache_dir=str(params["onnx_cache"]) or None,
        )
    except ValueError as exc:
        raise StartupError(f"parameters: {exc}") from exc


def load_segmenter(params: Mapping[str, Any]) -> Any:
    """Load the :class:`~rgbd_seg_ros.pipeline.Segmenter` the parameters name; :class:`StartupError` if impossible.

    With a known model input size the model is warmed up here (and, with ``backend: auto`` on the CPU, exported
    to the ONNX cache), so the first frame is not slow.
    """
    path = str(params["checkpoint"])
    if not path:
        raise StartupError(
            "parameter 'checkpoint' is empty: pass a model file, e.g. --ros-args -p checkpoint:=/path/model.safetensors"
        )
    from rgbd_seg_ros.pipeline import Segmenter

    options = run_options_from_params(params)
    try:
        segmenter = Segmenter.from_checkpoint(path, options)
        segmenter.warmup()
        return segmenter
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        text = str(exc).strip("'\"")
        raise StartupError(text if path in text else f"cannot load checkpoint {path}: {text}") from exc


def model_name(segmenter: Any) -> str:
    """The model's registry name: the checkpoint metadata's ``model`` where present, else ``model_name``."""
    metadata = getattr(segmenter, "metadata", {}) or {}
    return str(metadata.get("model") or segmenter.model_name)


def check_compatibility(segmenter: Any, params: Mapping[str, Any]) -> LabelSet:
    """Check the ``model``/``backbone``/``label_set`` expectations against the loaded model; return the label set."""
    path = params["checkpoint"] or "(injected segmenter)"
    metadata = getattr(segmenter, "metadata", {}) or {}
    for key, actual in (("model", model_name(segmenter)), ("backbone", metadata.get("backbone"))):
        wanted = str(params[key])
        if wanted and actual is None:
            raise StartupError(f"checkpoint {path} does not record its {key}; leave parameter '{key}' empty")
        if wanted and wanted != str(actual):
            raise StartupError(f"checkpoint {path} holds {key} {actual!r} but parameter '{key}' asks for {wanted!r}")
    label_set = segmenter.label_set
    if params["label_set"]:
        try:
            named = get_label_set(params["label_set"])
        except ValueError as exc:
            raise StartupError(f"parameter 'label_set': {exc}") from exc
        if named.num_classes != label_set.num_classes:
            raise StartupError(
                f"checkpoint {path} predicts {label_set.num_classes} classes ({label_set.name}) but parameter "
                f"'label_set' is {named.name!r} with {named.num_classes}"
            )
        label_set = named
    return label_set


def resolve_sync_backend(requested: str) -> tuple[str, Any]:
    """``(backend name, message_filters module or None)`` for ``auto`` | ``message_filters`` | ``builtin``."""
    if requested in ("auto", "message_filters"):
        try:
            import message_filters
        except ImportError:
            if requested == "message_filters":
                raise StartupError(
                    "sync_backend 'message_filters' requested but message_filters is not installed (it comes with a "
                    "ROS 2 install, not with the PyPI rclpy wheels); use sync_backend 'auto' or 'builtin'"
                ) from None
        else:
            return "message_filters", message_filters
    return "builtin", None


def _same_value(a: Any, b: Any) -> bool:
    """Parameter values equal, arrays compared element-wise (rclpy hands arrays back as ``array.array``)."""
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        return a == b
    if hasattr(a, "__len__") and hasattr(b, "__len__"):
        return list(a) == list(b)
    return a == b


class _RosLogHandler(logging.Handler):
    """Forwards Python log records of the library (logger ``rgbd_seg_ros``) to a node's ROS logger."""

    def __init__(self, node: Any) -> None:
        super().__init__(logging.INFO)
        self.node = node

    def emit(self, record: logging.LogRecord) -> None:
        log = self.node._log
        level = record.levelno
        (log.error if level >= logging.ERROR else log.warning if level >= logging.WARNING else log.info)(
            record.getMessage()
        )


class SegmentationNode(Node):
    """The segmentation node (see the module docstring).

    Args:
        segmenter_factory: builds the segmenter from the parameter values (default :func:`load_segmenter`);
            tests inject stand-ins here.
        node_name: default ``rgbd_seg``.
        **kwargs: passed to :class:`rclpy.node.Node` (``namespace``, ``context``, ``parameter_overrides``, ...).

    Raises:
        StartupError: bad parameters, an unloadable or mismatching checkpoint, an unavailable sync backend.
    """

    def __init__(
        self, segmenter_factory: SegmenterFactory | None = None, node_name: str = NODE_NAME, **kwargs: Any
    ) -> None:
        super().__init__(node_name, **kwargs)
        self._log = self.get_logger()
        # The library's own warnings (another input size than the checkpoint's, a rebuilt ONNX cache entry, ...)
        # go to this node's ROS logger, so they reach the console and /rosout like the node's messages.
        self._library_log = _RosLogHandler(self)
        library = logging.getLogger("rgbd_seg_ros")
        library.addHandler(self._library_log)
        if library.level == logging.NOTSET:  # its info lines (e.g. "exporting ... to ONNX (once)") too
            library.setLevel(logging.INFO)
        self._cond = threading.Condition()
        self._pending: tuple[Any, Any, Any, int] | None = None  # colour, depth, CameraInfo, arrival ns
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._reported: set[Any] = set()
        self._problem = ""
        self._latest_info: Any = None
        self._watch_counts: dict[str, int] = {}
        self._valid_depth = float("nan")  # valid-depth fraction of the newest converted frame
        self._depth_out = False  # in a depth outage (valid fraction below min_valid_depth)
        self.stats = NodeStats()
        try:
            self._setup(segmenter_factory or load_segmenter)
        except BaseException:
            self.destroy_node()
            raise

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _setup(self, factory: SegmenterFactory) -> None:
        self._declare()
        self._configure(factory)
        self._activate()

    def _declare(self) -> None:
        """Declare and validate the parameters (a managed node does this when it is created)."""
        self.params = declare_parameters(self)
        self._runtime = {k: self.params[k] for k in RUNTIME_PARAMS}
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _configure(self, factory: SegmenterFactory) -> None:
        """Load (and warm up) the model, create the publishers, latch ~/label_info (a managed node's configure)."""
        self.sync_backend, self._message_filters = resolve_sync_backend(self.params["sync_backend"])
        self.segmenter = factory(self.params)
        self.label_set = check_compatibility(self.segmenter, self.params)
        #: Valid depth (m): the Segmenter's (parameters, else the checkpoint's range; settings.py), else parameters.
        self.depth_range_m: tuple[float, float] = getattr(self.segmenter, "depth_range_m", None) or resolve_depth_range(
            run_options_from_params(self.params), {}
        )
        fx, fy, cx, cy = (float(v) for v in self.params["fallback_intrinsics"])
        self._fallback = (fx, fy, cx, cy) if fx > 0 else None
        self._sync_info = self._fallback is None

        self.output_publishers = {name: self.create_publisher(Image, f"~/{name}", _OUTPUT_QOS) for name in OUTPUTS}
        self._diag_pub = self.create_publisher(self._diagnostic_type(), "/diagnostics", 10)
        self._points_pub = self.create_publisher(PointCloud2, "~/points", _OUTPUT_QOS)
        self._publish_label_info()

    def _activate(self) -> None:
        """Subscribe, start the worker thread and the timers (a managed node's activate)."""
        before = (set(self.subscriptions), set(self.timers))
        message_filters = self._message_filters
        qos = qos_profile_sensor_data
        if self.params["input_qos"] == "reliable":
            qos = QoSProfile(depth=qos_profile_sensor_data.depth, reliability=ReliabilityPolicy.RELIABLE)
        if message_filters is not None:
            self._subscribe_message_filters(message_filters, qos)
        else:
            self._subscribe_builtin(qos)
        if not self._sync_info:
            self.create_subscription(CameraInfo, INFO_TOPIC, self._on_info, qos)
        self._imu = ImuGravity(self.params["camera_from_imu"]) if self.params["imu_topic"] else None
        if self._imu is not None:  # gravity for HHA from the accelerometer (ros/imu.py)
            from sensor_msgs.msg import Imu

            self.create_subscription(Imu, self.params["imu_topic"], self._imu.update, qos)

        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="rgbd_seg_worker", daemon=True)
        self._worker.start()
        self.create_timer(float(self.params["diagnostics_period"]), self._publish_diagnostics)
        self.create_timer(float(self.params["camera_info_timeout"]), self._watchdog)
        #: What activation created (a managed node's deactivate destroys them).
        self._activated = (
            [s for s in self.subscriptions if s not in before[0]],
            [t for t in self.timers if t not in before[1]],
        )
        inputs = [self.resolve_topic_name(topic) for _, topic in self._input_topics()]
        self._log.info(
            f"segmenting {inputs[0]} + {inputs[1]} (CameraInfo {inputs[2]}, "
            f"{'synchronised' if self._sync_info else 'newest, fallback intrinsics before'}) with "
            f"{model_name(self.segmenter)} on {self.segmenter.device} ({getattr(self.segmenter, 'backend_name', '?')}, "
            f"input {self._input_size_text()}); sync {self.sync_backend} "
            f"(queue {self.params['queue_size']}, slop {self.params['slop']} s), QoS {self.params['input_qos']}; "
            f"outputs {', '.join(self.resolve_topic_name(f'~/{n}') for n in OUTPUTS)}"
        )

    def _input_size_text(self) -> str:
        size = getattr(self.segmenter, "input_size", None)
        return f"{size[0]}x{size[1]}" if size else "frame size"

    @staticmethod
    def _diagnostic_type() -> Any:
        from diagnostic_msgs.msg import DiagnosticArray

        return DiagnosticArray

    def _input_topics(self) -> list[tuple[Any, str]]:
        """(message type, topic) of colour, depth and CameraInfo, per ``input_transport.*`` (compressed.py)."""
        topics = []
        for role, topic in (("color", COLOR_TOPIC), ("depth", DEPTH_TOPIC)):
            transport = self.params[f"input_transport.{role}"]
            topics.append((Image if transport == "raw" else CompressedImage, transport_topic(topic, role, transport)))
        return [*topics, (CameraInfo, INFO_TOPIC)]

    def _publish_label_info(self) -> None:
        """Latch the class names on ~/label_info (vision_msgs/LabelInfo, else std_msgs/String JSON: label_info.py)."""
        msg_type, self.label_info_type = label_info_type()
        latched = QoSProfile(depth=LABEL_INFO_QOS_DEPTH, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_info_pub = self.create_publisher(msg_type, "~/label_info", latched)
        header = Header(stamp=self.get_clock().now().to_msg())
        self._label_info_pub.publish(label_info_message(self.label_set, header, msg_type))

    def _subscribe_builtin(self, qos: QoSProfile) -> None:
        n = 3 if self._sync_info else 2
        self._sync = ApproximateTimeSynchronizer(n, int(self.params["queue_size"]), float(self.params["slop"]))
        self._sync.register_callback(self._on_synchronised)
        for index, (msg_type, topic) in enumerate(self._input_topics()[:n]):
            self.create_subscription(msg_type, topic, partial(self._on_input, index), qos)

    def _subscribe_message_filters(self, message_filters: Any, qos: QoSProfile) -> None:
        topics = self._input_topics()[: 3 if self._sync_info else 2]
        subs = [message_filters.Subscriber(self, t, topic, qos_profile=qos) for t, topic in topics]
        for sub, name in zip(subs, _INPUTS):
            sub.registerCallback(self._count_input, name)
        self._sync = message_filters.ApproximateTimeSynchronizer(
            subs, int(self.params["queue_size"]), float(self.params["slop"])
        )
        self._sync.registerCallback(self._on_synchronised)
        self._mf_subscribers = subs

    # -- callbacks (executor thread: short, never block on inference) ----------------------------------------------
    def _count_input(self, _msg: Any, name: str) -> None:
        self.stats.count(name)

    def _on_input(self, index: int, msg: Any) -> None:
        self.stats.count(_INPUTS[index])
        self._sync.add(index, msg)

    def _on_info(self, msg: Any) -> None:
        self.stats.count("camera_info")
        self._latest_info = msg

    def _on_synchronised(self, color: Any, depth: Any, info: Any = None) -> None:
        for name, msg, allowed in (("colour", color, COLOR_ENCODINGS), ("depth", depth, DEPTH_ENCODINGS)):
            encoding = message_encoding(msg)
            if encoding not in allowed:
                self.stats.count("rejected")
                self._report_once(
                    (name, encoding),
                    f"{name} image encoding {encoding!r} is not supported (use one of {', '.join(allowed)}); "
                    "skipping these messages",
                )
                return
        self.stats.count("synchronised")
        arrival = self.get_clock().now().nanoseconds
        self.stats.add("input delay", (arrival - stamp_to_ns(color.header.stamp)) / 1e6)
        with self._cond:
            if self._pending is not None:
                self.stats.count("dropped")
            self._pending = (color, depth, info if self._sync_info else self._latest_info, arrival)
            self._cond.notify()

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        for p in params:
            if p.name not in RUNTIME_PARAMS and not _same_value(p.value, self.params.get(p.name, p.value)):
                reason = f"'{p.name}' is fixed at start-up: restart the node to change it"
                self._log.warning(f"refused to set {reason}")
                return SetParametersResult(successful=False, reason=reason)
        for p in params:
            if p.name in RUNTIME_PARAMS:
                self._runtime[p.name] = p.value
        return SetParametersResult(successful=True)

    # -- worker thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item, self._pending = self._pending, None
            try:
                self._process(*item)
            except Exception as exc:
                if self._stopping or not self.context.ok():
                    return  # shutting down (Ctrl-C): publishing into a closed context is expected, not an error
                self.stats.count("errors")
                self._report_once(("error", type(exc).__name__), f"segmentation failed: {type(exc).__name__}: {exc}")

    def _wanted_outputs(self) -> list[str]:
        force = bool(self._runtime["publish_all"])
        return [
            name
            for name in OUTPUTS
            if self._runtime[f"publish_{name}"] and (force or self.output_publishers[name].get_subscription_count() > 0)
        ]

    def _intrinsics(self, color: Any, depth: Any, info: Any) -> CameraIntrinsics | None:
        if info is not None:
            try:
                return intrinsics_from_info(info, int(depth.width), int(depth.height))
            except ValueError as exc:
                self._report_once(("info", str(exc)), f"{self.resolve_topic_name(INFO_TOPIC)}: {exc}")
                if self._fallback is None:
                    return None
        fx, fy, cx, cy = self._fallback  # type: ignore[misc]
        return CameraIntrinsics(fx, fy, cx, cy, int(color.width), int(color.height))

    def _process(self, color: Any, depth: Any, info: Any, arrival_ns: int) -> None:
        start = time.perf_counter()
        self.stats.add("queue wait", (self.get_clock().now().nanoseconds - arrival_ns) / 1e6)
        wanted = self._wanted_outputs()
        if not wanted and not self._points_wanted():
            self.stats.count("idle")
            return
        decoded = self._decode(color, depth)
        if decoded is None:
            return
        color, depth = decoded
        intrinsics = self._intrinsics(color, depth, info)
        if intrinsics is None:
            self.stats.count("rejected")
            return
        try:
            frame, resized = to_rgbd_frame(color, depth, intrinsics, float(self.params["depth_scale"]))
        except ValueError as exc:
            self.stats.count("rejected")
            self._report_once(("frame", str(exc)), f"skipping synchronised images: {exc}")
            return
        if resized:
            self._report_once(
                ("resized", depth.width, depth.height),
                f"depth is {depth.width}x{depth.height} but colour is {color.width}x{color.height}: resampling depth "
                "(nearest neighbour) and scaling the intrinsics; publish depth registered at the colour resolution "
                "to avoid this",
                warn=True,
            )
        self._check_depth(frame)
        if frame.meta.get(DEPTH_UNITS_WARNING):
            self._report_once(("depth units",), str(frame.meta[DEPTH_UNITS_WARNING]), warn=True)
        if self._imu is not None:
            frame.gravity, problem = self._imu.lookup(frame.stamp_ns)
            if problem:
                topic = self.resolve_topic_name(self.params["imu_topic"])
                self._report_once(("imu",), f"{topic}: {problem}; estimating gravity from depth instead", warn=True)
        t0 = time.perf_counter()
        result = self.segmenter(frame)
        inference = time.perf_counter() - t0
        alpha = float(self._runtime["overlay_alpha"])
        images = render_outputs(frame.rgb, result.labels, result.confidence, self.label_set, wanted, alpha)
        for name, (array, encoding) in images.items():
            self.output_publishers[name].publish(image_from_array(array, encoding, color.header))
        if self._points_wanted():
            self._publish_points(frame, result, depth.header)
        self.stats.count("published")
        now = self.get_clock().now().nanoseconds
        self.stats.add("latency", (now - frame.stamp_ns) / 1e6)
        self.stats.add("node latency", (now - arrival_ns) / 1e6)
        self.stats.add("inference", inference * 1e3)
        self.stats.add("overhead", (time.perf_counter() - start - inference) * 1e3)

    def _decode(self, color: Any, depth: Any) -> tuple[Any, Any] | None:
        """Decode compressed inputs (compressed.py); None (reported once per topic) where the data is malformed."""
        if not (is_compressed(color) or is_compressed(depth)):
            return color, depth
        t0 = time.perf_counter()
        try:
            decoded = decode_inputs(color, depth)
        except CompressedImageError as exc:
            self.stats.count("rejected")
            role = getattr(exc, "role", "color")
            topic = self.resolve_topic_name(dict(zip(("color", "depth"), self._input_topics()))[role][1])
            self._report_once(("compressed", role), f"{topic}: {exc}; skipping these messages")
            return None
        self.stats.add("decode", (time.perf_counter() - t0) * 1e3)
        return decoded

    def _points_wanted(self) -> bool:
        """Whether ~/points is enabled and subscribed (or ``publish_all``)."""
        if not self._runtime["publish_points"]:
            return False
        return bool(self._runtime["publish_all"]) or self._points_pub.get_subscription_count() > 0

    def _publish_points(self, frame: Any, result: Any, header: Any) -> None:
        """Publish the semantic cloud of a segmented frame (points.py) with the depth image's header."""
        t0 = time.perf_counter()
        cloud = semantic_cloud(
            frame.depth,
            frame.intrinsics,
            frame.rgb,
            result.labels,
            result.confidence,
            stride=int(self._runtime["points_stride"]),
            organized=bool(self._runtime["points_organized"]),
            depth_range=self.depth_range_m,
        )
        self._points_pub.publish(point_cloud_message(cloud, header))
        self.stats.add("points", (time.perf_counter() - t0) * 1e3)

    def _check_depth(self, frame: Any) -> None:
        """Measure the frame's valid-depth fraction; log once when an outage starts and once when it ends."""
        valid = valid_depth_fraction(frame, *self.depth_range_m)
        self._valid_depth = valid
        threshold = float(self._runtime["min_valid_depth"])
        if valid < threshold and not self._depth_out:
            self._depth_out = True
            self.stats.count("depth outages")
            self._log.warning(
                f"depth outage: {100 * valid:.0f} % of the frame has valid depth (min_valid_depth "
                f"{100 * threshold:.0f} %): segmentation now rests mostly on colour"
            )
        elif valid >= threshold and self._depth_out:
            self._depth_out = False
            self._log.info(f"depth is back: {100 * valid:.0f} % of the frame has valid depth")

    # -- reporting -------------------------------------------------------------------------------------------------
    def _report_once(self, key: Any, text: str, warn: bool = False) -> None:
        """Log ``text`` the first time ``key`` occurs; keep it as the current problem for diagnostics."""
        with self._cond:
            first = key not in self._reported
            self._reported.add(key)
            self._problem = text
        if first:
            (self._log.warning if warn else self._log.error)(text)

    def _watchdog(self) -> None:
        """Warn while images arrive but CameraInfo or synchronised sets do not."""
        snap_counts = {name: self.stats.total(name) for name in (*_INPUTS, "synchronised")}
        last, self._watch_counts = self._watch_counts, snap_counts
        new = {k: v - last.get(k, 0) for k, v in snap_counts.items()}
        images = new["color"] > 0 and new["depth"] > 0
        timeout = self.params["camera_info_timeout"]
        if images and self._sync_info and snap_counts["camera_info"] == 0:
            text = (
                f"no CameraInfo on {self.resolve_topic_name(INFO_TOPIC)} for {timeout:g} s while colour and depth "
                "arrive: nothing is published until it arrives (remap depth/camera_info, or set "
                "fallback_intrinsics to [fx, fy, cx, cy])"
            )
        elif images and new["camera_info" if self._sync_info else "color"] > 0 and new["synchronised"] == 0:
            text = (
                f"colour and depth arrive but no set was synchronised in {timeout:g} s: their stamps (or CameraInfo's) "
                f"differ by more than slop ({self.params['slop']} s) or queue_size is too small"
            )
        else:
            return
        self._problem = text
        self._log.warning(text)

    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        totals, rates = snap["totals"], snap["rates_hz"]
        values: dict[str, Any] = {
            "model": model_name(self.segmenter),
            "device": self.segmenter.device,
            "backend": getattr(self.segmenter, "backend_name", "?"),
            "model input": self._input_size_text(),
            "label set": self.label_set.name,
            "checkpoint": self.params["checkpoint"],
            "sync backend": self.sync_backend,
        }
        for name in _INPUTS:
            values[f"{name} rate (Hz)"] = rates.get(name, 0.0)
        values["input rate (Hz)"] = rates.get("synchronised", 0.0)
        values["output rate (Hz)"] = rates.get("published", 0.0)
        values["latency p50 (ms)"] = snap["p50"].get("latency", float("nan"))
        values["latency p95 (ms)"] = snap["p95"].get("latency", float("nan"))
        values["input delay p50 (ms)"] = snap["p50"].get("input delay", float("nan"))
        values["node latency p95 (ms)"] = snap["p95"].get("node latency", float("nan"))
        values["inference p50 (ms)"] = snap["p50"].get("inference", float("nan"))
        values["conversion+publish p50 (ms)"] = snap["p50"].get("overhead", float("nan"))
        for stage in ("decode", "points"):  # compressed inputs and ~/points, where used
            if stage in snap["p50"]:
                values[f"{stage} p50 (ms)"] = snap["p50"][stage]
        for name in ("synchronised", "published", "dropped", "rejected", "idle", "errors"):
            values[f"{name} sets"] = totals.get(name, 0)
        values["dropped rate (Hz)"] = rates.get("dropped", 0.0)
        values["valid depth (%)"] = 100 * self._valid_depth
        values["depth outages"] = totals.get("depth outages", 0)
        if isinstance(self._sync, ApproximateTimeSynchronizer):  # message_filters does not count its drops
            values["unpaired messages pushed out (per input)"] = ", ".join(str(n) for n in self._sync.dropped)
        if self._problem:
            level, message = 1, self._problem
            self._problem = ""
        elif rates.get("synchronised", 0.0) == 0.0:
            level, message = 1, "no synchronised input"
        elif self._depth_out:
            level = 1
            message = f"depth outage: {100 * self._valid_depth:.0f} % valid depth (below min_valid_depth)"
        else:
            level, message = 0, "segmenting"
        self._diag_pub.publish(
            diagnostic_array(
                self.get_clock().now().to_msg(),
                f"{self.get_fully_qualified_name()}: segmentation",
                f"{model_name(self.segmenter)}@{self.segmenter.device}",
                level,
                message,
                values,
            )
        )

    # -- shutdown --------------------------------------------------------------------------------------------------
    def destroy_node(self) -> None:
        """Stop the worker thread (after the frame in progress), then destroy the node."""
        self._stop_worker()
        logging.getLogger("rgbd_seg_ros").removeHandler(self._library_log)
        super().destroy_node()

    def _stop_worker(self) -> None:
        """Stop the worker thread after the frame in progress; drop a waiting set."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        with self._cond:
            self._pending = None


#: Python module → what to ``pip install`` for it (the package's dependencies without a rosdep key, and the rest).
PIP_NAMES: dict[str, str] = {
    "safetensors": "safetensors",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
    "rosbags": "rosbags",
    "torch": "torch==2.14.1",
    "torchvision": "torchvision==0.29.1",
    "cv2": "'opencv-python-headless<5'",
    "yaml": "pyyaml",
    "PIL": "pillow",
}


def missing_dependency(exc: ImportError) -> str:
    """One line for a missing Python package: which one and what to ``pip install``."""
    module = (exc.name or str(exc)).split(".")[0]
    pip_name = PIP_NAMES.get(module, module)
    return (
        f"missing Python package {module!r} ({exc}): install it with `pip install {pip_name}` into the Python that "
        "runs the node (it has no rosdep key; see the README's ROS 2 steps)"
    )


def run(node_class: type[Node], args: list[str] | None = None) -> int:
    """Create ``node_class()`` and spin it until shutdown; 1 on a start-up error or missing package (one line)."""
    tune_allocator()
    rclpy.init(args=args)
    try:
        node = node_class()
    except (StartupError, ImportError) as exc:
        text = missing_dependency(exc) if isinstance(exc, ImportError) else str(exc)
        rclpy.logging.get_logger(NODE_NAME).fatal(text)
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args: list[str] | None = None) -> int:
    """Console script ``rgbd_seg_node``: run the node until shutdown; 1 on a start-up error (logged once)."""
    return run(SegmentationNode, args)


if __name__ == "__main__":
    sys.exit(main())
