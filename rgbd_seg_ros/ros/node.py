"""``rgbd_seg_node``: synchronised colour + depth (+ CameraInfo) in, semantic images out.

Inputs (relative, remappable): ``color/image`` (rgb8, bgr8, rgba8, bgra8, mono8), ``depth/image`` (16UC1 mm /
32FC1 m, REP 118; ``depth_scale`` overrides), ``depth/camera_info`` (of the registered depth). Outputs, each
with the colour image's header: ``~/labels`` (mono8, 255 = unlabeled; mono16 above 255 classes), ``~/color``
(rgb8), ``~/overlay`` (rgb8), ``~/confidence`` (32FC1); status on ``/diagnostics``.

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
* No enabled output with a subscriber (and ``publish_all`` off): the set is not segmented (counted as idle).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from rgbd_seg_ros.allocator import tune_allocator
from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.labels import LabelSet, colorize, get_label_set, overlay
from rgbd_seg_ros.ros.convert import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    image_from_array,
    intrinsics_from_info,
    stamp_to_ns,
    to_rgbd_frame,
)
from rgbd_seg_ros.ros.diagnostics import NodeStats, diagnostic_array
from rgbd_seg_ros.ros.params import OUTPUTS, RUNTIME_PARAMS, StartupError, declare_parameters
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer

__all__ = ["SegmentationNode", "StartupError", "load_segmenter", "main", "resolve_sync_backend"]

NODE_NAME = "rgbd_seg"
COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC = "color/image", "depth/image", "depth/camera_info"
_INPUTS = ("color", "depth", "camera_info")
_OUTPUT_QOS = QoSProfile(depth=5)  # reliable: matches reliable and best-effort subscribers

#: ``factory(parameters) -> segmenter``; the segmenter has ``label_set``, ``device``, ``model_name`` and
#: ``__call__(RGBDFrame) -> Segmentation``.
SegmenterFactory = Callable[[Mapping[str, Any]], Any]


def load_segmenter(params: Mapping[str, Any]) -> Any:
    """Load the :class:`~rgbd_seg_ros.pipeline.Segmenter` the parameters name; :class:`StartupError` if impossible."""
    path = str(params["checkpoint"])
    if not path:
        raise StartupError(
            "parameter 'checkpoint' is empty: pass a model file, e.g. --ros-args -p checkpoint:=/path/model.safetensors"
        )
    from rgbd_seg_ros.pipeline import Segmenter

    height, width = (int(v) for v in params["input_size"])
    try:
        return Segmenter.from_checkpoint(
            path,
            device=params["device"],
            precision=params["precision"],
            backend=params["backend"],
            input_size=(height, width) if height and width else None,
            depth_fill=params["depth_fill"],
        )
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
        self._cond = threading.Condition()
        self._pending: tuple[Any, Any, Any, int] | None = None  # colour, depth, CameraInfo, arrival ns
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._reported: set[Any] = set()
        self._problem = ""
        self._latest_info: Any = None
        self._watch_counts: dict[str, int] = {}
        self.stats = NodeStats()
        try:
            self._setup(segmenter_factory or load_segmenter)
        except BaseException:
            self.destroy_node()
            raise

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _setup(self, factory: SegmenterFactory) -> None:
        self.params = declare_parameters(self)
        self._runtime = {k: self.params[k] for k in RUNTIME_PARAMS}
        self.sync_backend, message_filters = resolve_sync_backend(self.params["sync_backend"])
        self.segmenter = factory(self.params)
        self.label_set = check_compatibility(self.segmenter, self.params)
        self._labels_encoding = "mono8" if self.label_set.label_dtype == np.uint8 else "mono16"
        fx, fy, cx, cy = (float(v) for v in self.params["fallback_intrinsics"])
        self._fallback = (fx, fy, cx, cy) if fx > 0 else None
        self._sync_info = self._fallback is None

        self.output_publishers = {name: self.create_publisher(Image, f"~/{name}", _OUTPUT_QOS) for name in OUTPUTS}
        self._diag_pub = self.create_publisher(self._diagnostic_type(), "/diagnostics", 10)
        qos = qos_profile_sensor_data
        if self.params["input_qos"] == "reliable":
            qos = QoSProfile(depth=qos_profile_sensor_data.depth, reliability=ReliabilityPolicy.RELIABLE)
        if message_filters is not None:
            self._subscribe_message_filters(message_filters, qos)
        else:
            self._subscribe_builtin(qos)
        if not self._sync_info:
            self.create_subscription(CameraInfo, INFO_TOPIC, self._on_info, qos)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._run, name="rgbd_seg_worker", daemon=True)
        self._worker.start()
        self.create_timer(float(self.params["diagnostics_period"]), self._publish_diagnostics)
        self.create_timer(float(self.params["camera_info_timeout"]), self._watchdog)
        inputs = [self.resolve_topic_name(t) for t in (COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC)]
        self._log.info(
            f"segmenting {inputs[0]} + {inputs[1]} (CameraInfo {inputs[2]}, "
            f"{'synchronised' if self._sync_info else 'newest, fallback intrinsics before'}) with "
            f"{model_name(self.segmenter)} on {self.segmenter.device}; sync {self.sync_backend} "
            f"(queue {self.params['queue_size']}, slop {self.params['slop']} s), QoS {self.params['input_qos']}; "
            f"outputs {', '.join(self.resolve_topic_name(f'~/{n}') for n in OUTPUTS)}"
        )

    @staticmethod
    def _diagnostic_type() -> Any:
        from diagnostic_msgs.msg import DiagnosticArray

        return DiagnosticArray

    def _subscribe_builtin(self, qos: QoSProfile) -> None:
        n = 3 if self._sync_info else 2
        self._sync = ApproximateTimeSynchronizer(n, int(self.params["queue_size"]), float(self.params["slop"]))
        self._sync.register_callback(self._on_synchronised)
        for index, (msg_type, topic) in enumerate(
            ((Image, COLOR_TOPIC), (Image, DEPTH_TOPIC), (CameraInfo, INFO_TOPIC))[:n]
        ):
            self.create_subscription(msg_type, topic, partial(self._on_input, index), qos)

    def _subscribe_message_filters(self, message_filters: Any, qos: QoSProfile) -> None:
        topics = ((Image, COLOR_TOPIC), (Image, DEPTH_TOPIC), (CameraInfo, INFO_TOPIC))[: 3 if self._sync_info else 2]
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
            if msg.encoding not in allowed:
                self.stats.count("rejected")
                self._report_once(
                    (name, msg.encoding),
                    f"{name} image encoding {msg.encoding!r} is not supported (use one of {', '.join(allowed)}); "
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
        if not wanted:
            self.stats.count("idle")
            return
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
        t0 = time.perf_counter()
        result = self.segmenter(frame)
        inference = time.perf_counter() - t0
        labels = np.asarray(result.labels).astype(self.label_set.label_dtype, copy=False)
        header = color.header
        for name in wanted:
            if name == "labels":
                msg = image_from_array(labels, self._labels_encoding, header)
            elif name == "color":
                msg = image_from_array(colorize(labels, self.label_set), "rgb8", header)
            elif name == "overlay":
                blended = overlay(frame.rgb, labels, self.label_set, float(self._runtime["overlay_alpha"]))
                msg = image_from_array(blended, "rgb8", header)
            else:
                msg = image_from_array(np.asarray(result.confidence, dtype=np.float32), "32FC1", header)
            self.output_publishers[name].publish(msg)
        self.stats.count("published")
        now = self.get_clock().now().nanoseconds
        self.stats.add("latency", (now - frame.stamp_ns) / 1e6)
        self.stats.add("node latency", (now - arrival_ns) / 1e6)
        self.stats.add("inference", inference * 1e3)
        self.stats.add("overhead", (time.perf_counter() - start - inference) * 1e3)

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
        for name in ("synchronised", "published", "dropped", "rejected", "idle", "errors"):
            values[f"{name} sets"] = totals.get(name, 0)
        values["dropped rate (Hz)"] = rates.get("dropped", 0.0)
        if isinstance(self._sync, ApproximateTimeSynchronizer):  # message_filters does not count its drops
            values["unpaired messages pushed out (per input)"] = ", ".join(str(n) for n in self._sync.dropped)
        if self._problem:
            level, message = 1, self._problem
            self._problem = ""
        elif rates.get("synchronised", 0.0) == 0.0:
            level, message = 1, "no synchronised input"
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
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script ``rgbd_seg_node``: run the node until shutdown; 1 on a start-up error (logged once)."""
    tune_allocator()
    rclpy.init(args=args)
    try:
        node = SegmentationNode()
    except StartupError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
