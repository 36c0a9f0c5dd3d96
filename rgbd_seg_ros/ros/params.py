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

__all__ = ["OUTPUTS", "PARAMS", "RUNTIME_PARAMS", "ParamSpec", "StartupError", "declare_parameters", "validate"]

#: Output topic (``~/<name>``) of each published image.
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
        "backend", "torch", "Inference backend; onnxruntime needs an .onnx checkpoint.", ("torch", "onnxruntime")
    ),
    ParamSpec(
        "input_size", [0, 0], "Model input [height, width] in pixels; [0, 0] = the frame's (or the export's) size."
    ),
    ParamSpec("depth_fill", "fast", "Depth hole filling before encoding.", ("fast", "colorization", "none")),
    ParamSpec(
        "depth_scale",
        0.0,
        "Metres per depth unit; 0 = REP 118 units (16UC1 millimetres, 32FC1 metres).",
        bounds=(0.0, 100.0),
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
    intr = [float(v) for v in values["fallback_intrinsics"]]
    if len(intr) != 4 or (any(intr) and not (intr[0] > 0 and intr[1] > 0)):
        raise StartupError(f"parameter 'fallback_intrinsics' is {intr}; expected [fx, fy, cx, cy] with fx, fy > 0")
