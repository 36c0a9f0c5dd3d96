"""Launch rgbd_seg_node (and RViz on request) against a camera's colour, registered depth and CameraInfo topics.

    ros2 launch rgbd_seg_ros seg.launch.py checkpoint:=/path/sgnet.safetensors camera:=realsense use_rviz:=true

Arguments (``ros2 launch rgbd_seg_ros seg.launch.py --show-args``):

* ``checkpoint``, ``model``, ``device``: the node parameters of the same names (``model`` = expected model).
  Without a checkpoint (argument or params file) the package's bundled one is used
  (``share/rgbd_seg_ros/models/sgnet_r18_synthetic.safetensors``), with a warning: it only knows synthetic rooms.
* ``managed``: ``true`` starts the lifecycle variant (``rgbd_seg_lifecycle_node``); with ``autostart`` (default
  ``true``) the launch configures and then activates it, else it waits ``unconfigured`` for a lifecycle manager.
* When the node exits, the launch shuts down; a node that exits with an error (a fatal start-up error: bad
  parameter, unloadable checkpoint, missing Python package) makes ``ros2 launch`` exit non-zero too.
* ``params_file``: node parameters (default: the package's ``config/seg.yaml``); the arguments above override it.
* ``camera``: topic preset, ``generic`` | ``realsense`` | ``azure_kinect`` | ``oak`` (list below), relative to
  ``camera_namespace`` (default: the preset's). ``color_topic``, ``depth_topic`` and ``camera_info_topic``
  override single topics (absolute, or relative to ``camera_namespace``).
* ``namespace``, ``node_name``: where the node lives (outputs are ``<namespace>/<node_name>/labels`` ...).
* ``use_rviz``, ``rviz_config``: start RViz showing the overlay, the colour mask and the input.
* ``log_level``: the node's log level.
* ``fastdds_profile``: Fast DDS XML profile of the node's process (``FASTDDS_DEFAULT_PROFILES_FILE``); default: the
  one already in the environment, else the package's ``config/fastdds_large_images.xml`` (a shared-memory
  segment large enough for camera images: without it a 640×480 image takes ~50 ms over loopback UDP instead of
  ~4 ms); ``none`` = Fast DDS's defaults. Give the camera driver the same file (see the README).

Presets (``camera:=``; depth must be registered to the colour camera):

* ``realsense`` (realsense2_camera ``rs_launch.py align_depth.enable:=true``): ``/camera/camera/color/image_raw``,
  ``/camera/camera/aligned_depth_to_color/image_raw`` and its ``camera_info``.
* ``azure_kinect`` (Azure_Kinect_ROS_Driver): ``/rgb/image_raw`` (bgra8), ``/depth_to_rgb/image_raw`` and its
  ``camera_info``.
* ``oak`` (depthai_ros_driver with the stereo depth aligned to the rgb camera): ``/oak/rgb/image_raw``,
  ``/oak/stereo/image_raw`` and its ``camera_info``.
* ``generic``: ``color/image``, ``depth/image``, ``depth/camera_info``.

CameraInfo is ``<depth topic's folder>/camera_info`` for every preset. Each camera preset also sets the node's
valid depth range (``min_depth_m``/``max_depth_m``, over the params file) to its sensor's documented range
(:data:`CAMERA_DEPTH_RANGES`); the launch arguments ``min_depth_m``/``max_depth_m`` override it, and ``generic``
keeps the params file's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription

PACKAGE = "rgbd_seg_ros"

#: preset → (camera namespace, colour topic, depth topic, CameraInfo topic), topics relative to the namespace.
CAMERA_PRESETS: dict[str, tuple[str, str, str, str]] = {
    "generic": ("", "color/image", "depth/image", "depth/camera_info"),
    "realsense": (
        "/camera/camera",
        "color/image_raw",
        "aligned_depth_to_color/image_raw",
        "aligned_depth_to_color/camera_info",
    ),
    "azure_kinect": ("", "rgb/image_raw", "depth_to_rgb/image_raw", "depth_to_rgb/camera_info"),
    "oak": ("/oak", "rgb/image_raw", "stereo/image_raw", "stereo/camera_info"),
}

#: preset → (min_depth_m, max_depth_m): depth the sensor measures, from its maker's documentation.
CAMERA_DEPTH_RANGES: dict[str, tuple[float, float]] = {
    # Intel RealSense D435/D435i datasheet (D400 series): Min-Z 0.195 m at 848×480, its best depth resolution
    # (0.28 m at 1280×720); maximum range about 10 m.
    "realsense": (0.2, 10.0),
    # Azure Kinect DK hardware specification, depth operating ranges: 0.25 m (WFOV) to 5.46 m (NFOV 2×2 binned).
    "azure_kinect": (0.25, 5.46),
    # Luxonis OAK-D (7.5 cm stereo baseline) product page: MinZ ~0.2 m (400P, extended disparity); ideal range
    # up to 12 m.
    "oak": (0.2, 12.0),
}

ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    (
        "checkpoint",
        "",
        "Model checkpoint (.safetensors or .onnx); overrides params_file; empty = the params file's, else the bundled "
        "synthetic-room checkpoint (a demo only).",
    ),
    ("model", "", "Expected model name (e.g. sgnet); empty = the checkpoint's."),
    ("device", "auto", "auto | cpu | cuda | cuda:N"),
    ("params_file", "", "Node parameters YAML; empty = the package's config/seg.yaml."),
    ("camera", "generic", "Topic preset: " + " | ".join(CAMERA_PRESETS)),
    ("camera_namespace", "", "Namespace of the camera topics; empty = the preset's."),
    ("color_topic", "", "Colour image topic; empty = the preset's."),
    ("depth_topic", "", "Registered depth image topic (16UC1 mm or 32FC1 m); empty = the preset's."),
    ("camera_info_topic", "", "CameraInfo of the registered depth; empty = the preset's."),
    ("min_depth_m", "", "Nearest valid depth (m); empty = the camera preset's (generic: the params file's)."),
    ("max_depth_m", "", "Farthest valid depth (m); empty = the camera preset's (generic: the params file's)."),
    ("namespace", "", "Namespace of the node."),
    ("node_name", "rgbd_seg", "Name of the node."),
    ("use_rviz", "false", "Start RViz with config/seg.rviz."),
    ("rviz_config", "", "RViz config; empty = the package's config/seg.rviz with this launch's topics filled in."),
    ("log_level", "info", "Log level of the node."),
    ("managed", "false", "true = the lifecycle (managed) node rgbd_seg_lifecycle_node instead of rgbd_seg_node."),
    ("autostart", "true", "With managed:=true: configure and activate it at launch (false = leave it unconfigured)."),
    (
        "fastdds_profile",
        "",
        "Fast DDS XML profile of the node; empty = $FASTDDS_DEFAULT_PROFILES_FILE, else the package's "
        "config/fastdds_large_images.xml; none = Fast DDS defaults.",
    ),
)
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3, 2
#: The checkpoint shipped with the package (setup.py installs it under share/<package>/models/).
BUNDLED_CHECKPOINT = os.path.join("models", "sgnet_r18_synthetic.safetensors")
BUNDLED_WARNING = (
    "no checkpoint given (checkpoint:= or the params file): using the bundled {path}, which was trained on "
    "synthetic rooms only and will not segment a real camera's images well; pass checkpoint:=/path/model.safetensors"
)


def _join(namespace: str, topic: str) -> str:
    if topic.startswith("/") or not namespace.strip("/"):
        return topic if topic.startswith("/") else "/" + topic
    return "/" + namespace.strip("/") + "/" + topic


def resolve_topics(camera: str, namespace: str, color: str, depth: str, info: str) -> dict[str, str]:
    """The node's input remappings (``color/image`` → …) for a preset and optional overrides."""
    if camera not in CAMERA_PRESETS:
        raise ValueError(f"camera:={camera!r} is not one of {', '.join(CAMERA_PRESETS)}")
    preset_ns, *preset = CAMERA_PRESETS[camera]
    namespace = namespace or preset_ns
    topics = [override or default for override, default in zip((color, depth, info), preset)]
    remaps = dict(zip(("color/image", "depth/image", "depth/camera_info"), (_join(namespace, t) for t in topics)))
    # image_transport's topics of the same images, for input_transport.color/depth: compressed (remapping a topic
    # does not remap the topics below it).
    remaps["color/image/compressed"] = remaps["color/image"] + "/compressed"
    remaps["depth/image/compressedDepth"] = remaps["depth/image"] + "/compressedDepth"
    return remaps


def depth_range(camera: str, min_depth: str, max_depth: str) -> dict[str, float]:
    """The node's ``min_depth_m``/``max_depth_m`` overrides: the launch arguments, else the camera preset's range."""
    preset = CAMERA_DEPTH_RANGES.get(camera)
    out: dict[str, float] = dict(zip(("min_depth_m", "max_depth_m"), preset)) if preset else {}
    for name, text in (("min_depth_m", min_depth), ("max_depth_m", max_depth)):
        if text.strip():
            try:
                out[name] = float(text)
            except ValueError:
                raise ValueError(f"{name}:={text!r} is not a number of metres") from None
    return out


def _rviz_config(template: str, outputs: str, color_topic: str) -> str:
    """A copy of ``template`` with its default topics replaced by this launch's; returns the copy's path.

    The copy lives in the temporary folder while the launch runs (RViz reads it at start) and is removed when the
    launch process exits.
    """
    with open(template, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("Value: /rgbd_seg/", f"Value: {outputs.rstrip('/')}/")
    text = text.replace("Value: /color/image\n", f"Value: {color_topic}\n")
    fd, path = tempfile.mkstemp(prefix="rgbd_seg_", suffix=".rviz")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fastdds_environment(profile: str, share: str, environ: dict[str, str]) -> dict[str, str]:
    """Environment for the node's process: the Fast DDS profile of the ``fastdds_profile`` argument."""
    if profile.lower() == "none":
        return {}
    chosen = profile or next((environ[v] for v in PROFILE_VARIABLES if environ.get(v)), "")
    chosen = chosen or os.path.join(share, "config", "fastdds_large_images.xml")
    if not os.path.isfile(chosen):
        raise ValueError(f"fastdds_profile:={chosen!r} is not a file")
    return dict.fromkeys(PROFILE_VARIABLES, chosen)


def params_file_checkpoint(params_file: str) -> str:
    """The ``checkpoint`` a node parameters YAML sets (any node key), or ``""``."""
    import yaml

    try:
        with open(params_file, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return ""  # the node reports an unreadable params file itself
    nodes = doc.values() if isinstance(doc, dict) else []
    values = [v.get("ros__parameters") for v in nodes if isinstance(v, dict)]
    return next((str(v["checkpoint"]) for v in values if isinstance(v, dict) and v.get("checkpoint")), "")


def default_checkpoint(checkpoint: str, params_file: str, share: str) -> tuple[str, str]:
    """``(checkpoint override or "", warning or "")``: the bundled checkpoint when neither argument nor file has one."""
    if checkpoint or params_file_checkpoint(params_file):
        return checkpoint, ""
    path = os.path.join(share, BUNDLED_CHECKPOINT)
    return path, BUNDLED_WARNING.format(path=path)


def _warn(text: str) -> None:
    try:
        from launch.logging import get_logger

        get_logger("seg.launch.py").warning(text)
    except ImportError:
        print(f"[WARNING] [seg.launch.py]: {text}", file=sys.stderr)


def on_node_exit(event, context) -> list:
    """The node's ``on_exit``: shut the launch down; a non-zero exit outside a shutdown fails the launch (exit 1)."""
    from launch.actions import Shutdown

    code = event.returncode
    if code != 0 and not context.is_shutdown:
        # An exception in an event handler is how `ros2 launch` learns to return non-zero (LaunchService.run).
        raise RuntimeError(
            f"{event.process_name} exited with code {code} (its FATAL line above says why): stopping the launch"
        )
    return [Shutdown(reason=f"{event.process_name} exited (code {code})")]


def _autostart(node) -> list:
    """Events that configure a launched lifecycle node and activate it once it is inactive."""
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.events import matches_action
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    def change(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    activate = OnStateTransition(
        target_lifecycle_node=node,
        start_state="configuring",
        goal_state="inactive",
        entities=[change(Transition.TRANSITION_ACTIVATE)],
    )
    return [RegisterEventHandler(activate), change(Transition.TRANSITION_CONFIGURE)]


def _launch_setup(context: LaunchContext) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    share = FindPackageShare(PACKAGE).perform(context)
    remaps = resolve_topics(
        arg("camera"), arg("camera_namespace"), arg("color_topic"), arg("depth_topic"), arg("camera_info_topic")
    )
    overrides = {"device": arg("device"), **depth_range(arg("camera"), arg("min_depth_m"), arg("max_depth_m"))}
    params_file = arg("params_file") or os.path.join(share, "config", "seg.yaml")
    checkpoint, warning = default_checkpoint(arg("checkpoint"), params_file, share)
    if warning:
        _warn(warning)
    for name, value in (("checkpoint", checkpoint), ("model", arg("model"))):
        if value:
            overrides[name] = value
    node_ns = "/" + arg("namespace").strip("/") if arg("namespace").strip("/") else ""
    node_options = dict(
        package=PACKAGE,
        name=arg("node_name"),
        namespace=node_ns,
        parameters=[params_file, overrides],
        remappings=list(remaps.items()),
        arguments=["--ros-args", "--log-level", arg("log_level")],
        output="screen",
        emulate_tty=True,
        additional_env=fastdds_environment(arg("fastdds_profile"), share, dict(os.environ)),
        on_exit=on_node_exit,
    )
    if _true(arg("managed")):
        from launch_ros.actions import LifecycleNode

        node = LifecycleNode(executable="rgbd_seg_lifecycle_node", **node_options)
        actions = [node, *(_autostart(node) if _true(arg("autostart")) else [])]
    else:
        actions = [Node(executable="rgbd_seg_node", **node_options)]
    if _true(arg("use_rviz")):
        config = arg("rviz_config") or _rviz_config(
            os.path.join(share, "config", "seg.rviz"), f"{node_ns}/{arg('node_name')}", remaps["color/image"]
        )
        actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", config], output="screen"))
    return actions


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)]
    )
