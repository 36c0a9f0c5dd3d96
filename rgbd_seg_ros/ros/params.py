"""The node's parameters: one table (name, default, description, choices, range) → declared descriptors.

``config/seg.yaml`` holds the same defaults (a test keeps the two equal). Parameters marked ``runtime`` may
change while the node runs (publishing flags, overlay alpha); every other one is fixed at start-up: the node
refuses a change with a reason that says to restart it. They are not declared ``read_only`` because rclpy
then answers only "Trying to set a read-only parameter", which does not say why or what to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from rgbd_seg_ros.ros.compressed import TRANSPORTS
from rgbd_seg_ros.ros.imu import camera_from_imu_matrix
from rgbd_seg_ros.settings import (
    BACKENDS,
    DEFAULT_DEPTH_RANGE_M,
    DEFAULT_MIN_VALID_DEPTH,
    DEFAULT_NUM_THREADS,
    DEPTH_FILLS,
)

__all__ = ["OUTPUTS", "PARAMS", "RUNTIME_PARAMS", "ParamSpec", "StartupError", "declare_parameters", "validate"]

#: Output topic (``~/<name>``) of each published image (``~/points`` and ``~/label_info`` are published beside them).
OUTPUTS: tuple[str, ...] = ("labels", "color", "overlay", "confidence")


class StartupError(RuntimeError):
    """A configuration the node cannot start with; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ``default`` fixes its type; ``bounds`` is an inclusive (low, high) range."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None
    runtime: bool = False


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "checkpoint", "", "Model file: a .safetensors checkpoint (with its .json metadata) or an exported .onnx."
    ),
    ParamSpec("model", "", "Expected model name (e.g. 'sgnet'); empty = the checkpoint's. A mismatch stops the node."),
    ParamSpec(
        "backbone", "", "Expected backbone (e.g. 'resnet50'); empty = the checkpoint's. A mismatch stops the node."
    ),
    ParamSpec(
        "label_set",
        "",
        "Label set naming and colouring the classes; empty = the checkpoint's. Must have the checkpoint's class count.",
    ),
    ParamSpec("device", "auto", "Inference device: auto (cuda if available), cpu, cuda or cuda:N."),
    ParamSpec(
        "precision", "auto", "auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.", ("auto", "fp32", "fp16", "bf16")
    ),
    ParamSpec(
        "backend",
        "auto",
        "Inference backend: auto (ONNX Runtime on the CPU, exported once to the ONNX cache; torch on CUDA, or "
        "ONNX Runtime's TensorRT provider where installed), torch or onnxruntime.",
        BACKENDS,
    ),
    ParamSpec(
        "input_size",
        [0, 0],
        "Model input [height, width] in pixels; [0, 0] = the size the checkpoint was trained (or exported) at, else "
        "the frame's. Another size than the checkpoint's logs a warning.",
    ),
    ParamSpec(
        "num_threads",
        DEFAULT_NUM_THREADS,
        "CPU intra-op threads for torch and ONNX Runtime; 0 = their defaults (one per core). The default was "
        "measured fastest on a shared 2-core CPU (benchmarks/threads.py).",
        bounds=(0, 256),
    ),
    ParamSpec(
        "onnx_cache", "", "Folder of the ONNX export cache; empty = $RGBD_SEG_CACHE or ~/.cache/rgbd_seg_ros/onnx."
    ),
    ParamSpec(
        "depth_fill",
        "",
        "Depth hole filling before encoding; empty = the checkpoint's training fill (else fast).",
        ("", *DEPTH_FILLS),
    ),
    ParamSpec(
        "min_depth_m",
        0.0,
        "Nearest valid depth (m); nearer depth is invalid before filling and encoding. 0 = the checkpoint's range, "
        f"else {DEFAULT_DEPTH_RANGE_M[0]} m (the launch presets set each camera's range).",
        bounds=(0.0, 1000.0),
    ),
    ParamSpec(
        "max_depth_m",
        0.0,
        "Farthest valid depth (m); farther depth (and 0 / 65535 / NaN / inf sentinels) is invalid. 0 = the "
        f"checkpoint's range, else {DEFAULT_DEPTH_RANGE_M[1]} m.",
        bounds=(0.0, 1000.0),
    ),
    ParamSpec(
        "min_valid_depth",
        DEFAULT_MIN_VALID_DEPTH,
        "Fraction of a frame's pixels with valid depth (in the depth range, before filling) below which depth counts "
        "as failed: one warning per outage (and one line when depth returns), /diagnostics at WARN meanwhile.",
        bounds=(0.0, 1.0),
        runtime=True,
    ),
    ParamSpec(
        "depth_scale",
        0.0,
        "Metres per depth unit; 0 = REP 118 units (16UC1 millimetres, 32FC1 metres).",
        bounds=(0.0, 100.0),
    ),
    ParamSpec(
        "imu_topic",
        "",
        "sensor_msgs/Imu topic whose accelerometer gives HHA's gravity (rotated by camera_from_imu); empty = none: "
        "gravity is estimated from each depth image, as it is while no reading is within 0.5 s of a frame.",
    ),
    ParamSpec(
        "camera_from_imu",
        [0.0, 0.0, 0.0, 1.0],
        "Rotation [x, y, z, w] from the IMU message's frame to the colour camera's optical frame (tf2_echo "
        "<colour optical frame> <IMU frame>); [0, 0, 0, 1] = the IMU's axes are the optical axes.",
    ),
    ParamSpec(
        "sync_backend",
        "auto",
        "Approximate-time synchroniser: message_filters, the package's builtin one (same policy), or auto "
        "(message_filters when installed).",
        ("auto", "message_filters", "builtin"),
    ),
    ParamSpec("queue_size", 10, "Messages kept per input while waiting for partners.", bounds=(1, 1000)),
    ParamSpec("slop", 0.02, "Largest stamp difference (s) within a synchronised set (exclusive).", bounds=(1e-6, 10.0)),
    ParamSpec(
        "input_qos",
        "sensor_data",
        "Subscription QoS: sensor_data (best effort; receives best-effort and reliable publishers) or reliable "
        "(receives nothing from a best-effort camera).",
        ("sensor_data", "reliable"),
    ),
    ParamSpec(
        "input_transport.color",
        "raw",
        "Colour input: raw (sensor_msgs/Image on color/image) or compressed (image_transport's CompressedImage on "
        "color/image/compressed, JPEG or PNG, decoded on the worker thread).",
        TRANSPORTS,
    ),
    ParamSpec(
        "input_transport.depth",
        "raw",
        "Depth input: raw (sensor_msgs/Image on depth/image) or compressed (image_transport's compressedDepth on "
        "depth/image/compressedDepth: 16UC1 PNG or 32FC1 quantised inverse depth).",
        TRANSPORTS,
    ),
    ParamSpec(
        "camera_info_timeout",
        5.0,
        "Seconds without CameraInfo (or without synchronised sets) while images arrive before a warning.",
        bounds=(0.1, 3600.0),
    ),
    ParamSpec(
        "fallback_intrinsics",
        [0.0, 0.0, 0.0, 0.0],
        "[fx, fy, cx, cy] in colour-image pixels used while no CameraInfo has arrived; all 0 = none: then colour, "
        "depth and CameraInfo are synchronised together and nothing is published without CameraInfo.",
    ),
    ParamSpec(
        "publish_labels", True, "Publish ~/labels (mono8 train ids, 255 = unlabeled; mono16 above 255).", runtime=True
    ),
    ParamSpec("publish_color", True, "Publish ~/color (rgb8 palette image).", runtime=True),
    ParamSpec("publish_overlay", True, "Publish ~/overlay (rgb8 palette blended over the input).", runtime=True),
    ParamSpec(
        "publish_confidence", True, "Publish ~/confidence (32FC1 probability of the chosen class).", runtime=True
    ),
    ParamSpec(
        "publish_points",
        True,
        "Publish ~/points (PointCloud2: x y z, rgb, label, confidence per depth pixel, the depth image's header); "
        "computed only while subscribed (or publish_all).",
        runtime=True,
    ),
    ParamSpec("points_stride", 1, "~/points uses every N-th pixel of every N-th row.", bounds=(1, 64), runtime=True),
    ParamSpec(
        "points_organized",
        False,
        "~/points keeps the (decimated) image grid, invalid depth as NaN points with is_dense false; otherwise "
        "invalid depth is left out.",
        runtime=True,
    ),
    ParamSpec(
        "publish_all",
        False,
        "Publish every enabled output even without subscribers (otherwise only subscribed ones; none = no inference).",
        runtime=True,
    ),
    ParamSpec("overlay_alpha", 0.5, "Weight of the palette colour in ~/overlay.", bounds=(0.0, 1.0), runtime=True),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", bounds=(0.05, 60.0)),
)

RUNTIME_PARAMS: frozenset[str] = frozenset(p.name for p in PARAMS if p.runtime)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    description = spec.description if spec.runtime else f"{spec.description} Fixed at start-up (restart to change)."
    desc = ParameterDescriptor(name=spec.name, description=description)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.bounds is not None:
        low, high = spec.bounds
        if isinstance(spec.default, bool) or not isinstance(spec.default, (int, float)):
            raise TypeError(f"bounds need a numeric parameter: {spec.name}")
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    return desc


def declare_parameters(node: Node) -> dict[str, Any]:
    """Declare every parameter of :data:`PARAMS` on ``node``; return the validated start-up values.

    Raises:
        StartupError: a value of the wrong type, outside its range or not one of its choices.
    """
    values: dict[str, Any] = {}
    for spec in PARAMS:
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
        except Exception as exc:
            raise StartupError(f"parameter '{spec.name}': {exc}") from exc
    validate(values)
    return values


def validate(values: Mapping[str, Any]) -> None:
    """Check choices and the array parameters; raise :class:`StartupError` naming the parameter."""
    for spec in PARAMS:
        value = values[spec.name]
        if spec.choices and value not in spec.choices:
            raise StartupError(f"parameter '{spec.name}' is {value!r}; expected one of {', '.join(spec.choices)}")
    if not _DEVICE.match(str(values["device"])):
        raise StartupError(f"parameter 'device' is {values['device']!r}; expected auto, cpu, cuda or cuda:N")
    size = list(values["input_size"])
    if len(size) != 2 or any(v < 0 for v in size) or (0 in size and size != [0, 0]):
        raise StartupError(f"parameter 'input_size' is {size}; expected [height, width] > 0 or [0, 0]")
    if float(values["max_depth_m"]) and not float(values["min_depth_m"]) < float(values["max_depth_m"]):
        raise StartupError(
            f"parameters 'min_depth_m' ({values['min_depth_m']}) and 'max_depth_m' ({values['max_depth_m']}): the "
            "minimum must be below the maximum"
        )
    try:
        camera_from_imu_matrix(values["camera_from_imu"])
    except ValueError as exc:
        raise StartupError(f"parameter 'camera_from_imu': {exc}") from None
    intr = [float(v) for v in values["fallback_intrinsics"]]
    if len(intr) != 4 or (any(intr) and not (intr[0] > 0 and intr[1] > 0)):
        raise StartupError(f"parameter 'fallback_intrinsics' is {intr}; expected [fx, fy, cx, cy] with fx, fy > 0")
