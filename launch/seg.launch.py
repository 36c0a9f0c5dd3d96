"""Launch rgbd_seg_node (and RViz on request) against a camera's colour, registered depth and CameraInfo topics.

    ros2 launch rgbd_seg_ros seg.launch.py checkpoint:=/path/sgnet.safetensors camera:=realsense use_rviz:=true

Arguments (``ros2 launch rgbd_seg_ros seg.launch.py --show-args``):

* ``checkpoint``, ``model``, ``device``: the node parameters of the same names (``model`` = expected model).
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

CameraInfo is ``<depth topic's folder>/camera_info`` for every preset.
"""

from __future__ import annotations

import os
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

ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("checkpoint", "", "Model checkpoint (.safetensors or .onnx); overrides params_file."),
    ("model", "", "Expected model name (e.g. sgnet); empty = the checkpoint's."),
    ("device", "auto", "auto | cpu | cuda | cuda:N"),
    ("params_file", "", "Node parameters YAML; empty = the package's config/seg.yaml."),
    ("camera", "generic", "Topic preset: " + " | ".join(CAMERA_PRESETS)),
    ("camera_namespace", "", "Namespace of the camera topics; empty = the preset's."),
    ("color_topic", "", "Colour image topic; empty = the preset's."),
    ("depth_topic", "", "Registered depth image topic (16UC1 mm or 32FC1 m); empty = the preset's."),
    ("camera_info_topic", "", "CameraInfo of the registered depth; empty = the preset's."),
    ("namespace", "", "Namespace of the node."),
    ("node_name", "rgbd_seg", "Name of the node."),
    ("use_rviz", "false", "Start RViz with config/seg.rviz."),
    ("rviz_config", "", "RViz config; empty = the package's config/seg.rviz with this launch's topics filled in."),
    ("log_level", "info", "Log level of the node."),
    (
        "fastdds_profile",
        "",
        "Fast DDS XML profile of the node; empty = $FASTDDS_DEFAULT_PROFILES_FILE, else the package's "
        "config/fastdds_large_images.xml; none = Fast DDS defaults.",
    ),
)
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3, 2


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
    return dict(zip(("color/image", "depth/image", "depth/camera_info"), (_join(namespace, t) for t in topics)))


def _rviz_config(template: str, outputs: str, color_topic: str) -> str:
    """A copy of ``template`` with its default topics replaced by this launch's; returns the copy's path."""
    with open(template, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("Value: /rgbd_seg/", f"Value: {outputs.rstrip('/')}/")
    text = text.replace("Value: /color/image\n", f"Value: {color_topic}\n")
    fd, path = tempfile.mkstemp(prefix="rgbd_seg_", suffix=".rviz")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def fastdds_environment(profile: str, share: str, environ: dict[str, str]) -> dict[str, str]:
    """Environment for the node's process: the Fast DDS profile of the ``fastdds_profile`` argument."""
    if profile.lower() == "none":
        return {}
    chosen = profile or next((environ[v] for v in PROFILE_VARIABLES if environ.get(v)), "")
    chosen = chosen or os.path.join(share, "config", "fastdds_large_images.xml")
    if not os.path.isfile(chosen):
        raise ValueError(f"fastdds_profile:={chosen!r} is not a file")
    return dict.fromkeys(PROFILE_VARIABLES, chosen)


def _launch_setup(context: LaunchContext) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    share = FindPackageShare(PACKAGE).perform(context)
    remaps = resolve_topics(
        arg("camera"), arg("camera_namespace"), arg("color_topic"), arg("depth_topic"), arg("camera_info_topic")
    )
    overrides = {"device": arg("device")}
    for name in ("checkpoint", "model"):
        if arg(name):
            overrides[name] = arg(name)
    params_file = arg("params_file") or os.path.join(share, "config", "seg.yaml")
    node_ns = "/" + arg("namespace").strip("/") if arg("namespace").strip("/") else ""
    actions = [
        Node(
            package=PACKAGE,
            executable="rgbd_seg_node",
            name=arg("node_name"),
            namespace=node_ns,
            parameters=[params_file, overrides],
            remappings=list(remaps.items()),
            arguments=["--ros-args", "--log-level", arg("log_level")],
            output="screen",
            emulate_tty=True,
            additional_env=fastdds_environment(arg("fastdds_profile"), share, dict(os.environ)),
        )
    ]
    if arg("use_rviz").lower() in ("true", "1", "yes"):
        config = arg("rviz_config") or _rviz_config(
            os.path.join(share, "config", "seg.rviz"), f"{node_ns}/{arg('node_name')}", remaps["color/image"]
        )
        actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", config], output="screen"))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)]
    )
