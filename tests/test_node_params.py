"""The node's configuration: config/seg.yaml, parameter descriptors, launch file logic, RViz, exit codes."""

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")

from ros_harness import DepthSegmenter, RosHarness, domain_id

from rgbd_seg_ros.ros.params import PARAMS, RUNTIME_PARAMS

ROOT = Path(__file__).resolve().parents[1]
SEG_YAML = ROOT / "config" / "seg.yaml"


@pytest.fixture
def ros():
    harness = RosHarness(domain_id(2))
    yield harness
    harness.shutdown()


def test_seg_yaml_holds_exactly_the_declared_parameters_and_defaults():
    doc = yaml.safe_load(SEG_YAML.read_text())
    values = doc["/**"]["ros__parameters"]
    assert set(values) == {p.name for p in PARAMS}
    for spec in PARAMS:
        assert values[spec.name] == spec.default, spec.name
        assert type(values[spec.name]) is type(spec.default), spec.name  # 0.0 not 0: rcl types by the literal


def test_node_loads_seg_yaml_through_ros_args_and_declares_ranges(ros):
    node = ros.start_node(
        DepthSegmenter(), cli_args=["--ros-args", "--params-file", str(SEG_YAML), "-p", "queue_size:=7"]
    )
    assert node.get_parameter("queue_size").value == 7  # the command line wins over the file
    assert node.get_parameter("input_qos").value == "sensor_data"
    slop = node.describe_parameter("slop")
    assert slop.floating_point_range[0].from_value > 0 and slop.floating_point_range[0].to_value >= 1.0
    assert node.describe_parameter("queue_size").integer_range[0].from_value == 1
    assert "one of: auto, message_filters, builtin" in node.describe_parameter("sync_backend").additional_constraints
    for spec in PARAMS:
        text = node.describe_parameter(spec.name).description
        assert ("restart" in text) == (spec.name not in RUNTIME_PARAMS), spec.name


def _env(offset: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1", ROS_DOMAIN_ID=str(domain_id(offset)))
    return env


def test_console_script_entry_exits_non_zero_with_one_error_when_no_checkpoint_is_given():
    proc = subprocess.run(
        [sys.executable, "-m", "rgbd_seg_ros.ros.node", "--ros-args", "-p", "device:=cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(3),
        cwd=ROOT,
    )
    assert proc.returncode == 1
    fatal = [line for line in (proc.stdout + proc.stderr).splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "checkpoint" in fatal[0] and "Traceback" not in proc.stderr


def test_setup_py_declares_the_console_script():
    assert "rgbd_seg_node = rgbd_seg_ros.ros.node:main" in (ROOT / "setup.py").read_text()


class _Recorded:
    """Stand-in for a launch class: keeps its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Configuration(_Recorded):
    def perform(self, context):
        return context[self.args[0]]


class _PackageShare(_Recorded):
    def perform(self, context):
        return str(ROOT)  # the source tree has the share layout (config/, launch/)


def _any_launch_class(attr):
    """Module ``__getattr__`` of the stand-ins: any other launch class (Shutdown, LifecycleNode, ...) is recorded."""
    if attr.startswith("__"):
        raise AttributeError(attr)  # not a package: no __path__
    return _Recorded


@pytest.fixture
def launch_module(monkeypatch):
    """seg.launch.py imported with stand-ins for ``launch``/``launch_ros`` (not on PyPI): its own logic only."""
    classes = {"LaunchConfiguration": _Configuration, "FindPackageShare": _PackageShare}
    for name in ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions",
                 "launch_ros.substitutions"):  # fmt: skip
        stub = types.ModuleType(name)
        for attr in ("LaunchContext", "LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction",
                     "LaunchConfiguration", "Node", "FindPackageShare"):  # fmt: skip
            setattr(stub, attr, classes.get(attr, _Recorded))
        stub.__getattr__ = _any_launch_class
        monkeypatch.setitem(sys.modules, name, stub)
    spec = importlib.util.spec_from_file_location("seg_launch", ROOT / "launch" / "seg.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch_context(launch_module, **values):
    """Default argument values, overridden by ``values``."""
    context = {name: default for name, default, _ in launch_module.ARGUMENTS}
    context.update(values)
    return context


def test_launch_file_declares_the_documented_arguments(launch_module):
    declared = {a.args[0] for a in launch_module.generate_launch_description().args[0][:-1]}
    assert {"model", "checkpoint", "device", "camera", "camera_namespace", "color_topic", "depth_topic"} <= declared
    assert {"camera_info_topic", "params_file", "use_rviz", "namespace"} <= declared


def test_launch_camera_presets_remap_the_node_inputs(launch_module):
    resolve = launch_module.resolve_topics
    assert resolve("realsense", "", "", "", "") == {
        "color/image": "/camera/camera/color/image_raw",
        "depth/image": "/camera/camera/aligned_depth_to_color/image_raw",
        "depth/camera_info": "/camera/camera/aligned_depth_to_color/camera_info",
        "color/image/compressed": "/camera/camera/color/image_raw/compressed",
        "depth/image/compressedDepth": "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth",
    }
    assert resolve("azure_kinect", "/k4a", "", "", "")["depth/image"] == "/k4a/depth_to_rgb/image_raw"
    custom = resolve("generic", "/cam", "/abs/rgb", "depth", "")
    assert custom == {
        "color/image": "/abs/rgb",
        "depth/image": "/cam/depth",
        "depth/camera_info": "/cam/depth/camera_info",
        "color/image/compressed": "/abs/rgb/compressed",
        "depth/image/compressedDepth": "/cam/depth/compressedDepth",
    }
    with pytest.raises(ValueError, match="kinect2"):
        resolve("kinect2", "", "", "", "")


def test_rviz_config_shows_overlay_mask_and_input_with_the_launch_topics(launch_module, monkeypatch):
    at_exit = []
    monkeypatch.setattr(launch_module.atexit, "register", lambda fn, *args: at_exit.append((fn, args)))
    path = launch_module._rviz_config(str(ROOT / "config" / "seg.rviz"), "/robot/seg", "/cam/color/image_raw")
    try:
        displays = yaml.safe_load(Path(path).read_text())["Visualization Manager"]["Displays"]
    finally:
        # The launch process removes its temporary copy when it exits.
        ((cleanup, args),) = at_exit
        cleanup(*args)
    assert not Path(path).exists()
    topics = {d["Name"]: d["Topic"]["Value"] for d in displays}
    assert topics == {
        "Segmentation overlay": "/robot/seg/overlay",
        "Colour mask": "/robot/seg/color",
        "Input colour": "/cam/color/image_raw",
    }


def test_launch_starts_the_node_with_params_file_overrides_and_remaps(launch_module):
    context = _launch_context(launch_module, checkpoint="/m.safetensors", camera="realsense", namespace="robot")
    (node,) = launch_module._launch_setup(context)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"], kw["namespace"]) == (
        "rgbd_seg_ros", "rgbd_seg_node", "rgbd_seg", "/robot"
    )  # fmt: skip
    assert kw["parameters"] == [
        str(SEG_YAML),
        {"device": "auto", "checkpoint": "/m.safetensors", "min_depth_m": 0.2, "max_depth_m": 10.0},
    ]
    assert ("color/image", "/camera/camera/color/image_raw") in kw["remappings"]


def _node_parameters(launch_module, **values) -> dict:
    """The parameters the launch gives the node: the params file's (config/seg.yaml), then its overrides."""
    (node,) = launch_module._launch_setup(_launch_context(launch_module, **values))
    params_file, overrides = node.kwargs["parameters"]
    merged = dict(yaml.safe_load(Path(params_file).read_text())["/**"]["ros__parameters"])
    merged.update(overrides)
    return merged


def test_launch_camera_presets_set_their_sensor_depth_range(launch_module):
    ranges = launch_module.CAMERA_DEPTH_RANGES
    assert set(ranges) == set(launch_module.CAMERA_PRESETS) - {"generic"}  # every camera preset has its range
    bounds, declared = {p.name: p.bounds for p in PARAMS}, {p.name: p.default for p in PARAMS}
    defaults = _node_parameters(launch_module, camera="generic")  # no preset range: the params file's
    assert (defaults["min_depth_m"], defaults["max_depth_m"]) == (declared["min_depth_m"], declared["max_depth_m"])
    for camera, (near, far) in ranges.items():
        params = _node_parameters(launch_module, camera=camera)
        assert (params["min_depth_m"], params["max_depth_m"]) == (near, far), camera
        assert type(near) is float and type(far) is float  # rcl types parameters by the Python type
        assert bounds["min_depth_m"][0] <= near < far <= bounds["max_depth_m"][1], camera
    # The launch arguments win over the preset, one at a time.
    params = _node_parameters(launch_module, camera="azure_kinect", max_depth_m="3.5")
    assert (params["min_depth_m"], params["max_depth_m"]) == (ranges["azure_kinect"][0], 3.5)
    params = _node_parameters(launch_module, camera="generic", min_depth_m="0.4")
    assert (params["min_depth_m"], params["max_depth_m"]) == (0.4, defaults["max_depth_m"])
    with pytest.raises(ValueError, match="max_depth_m"):
        _node_parameters(launch_module, camera="oak", max_depth_m="far")


def test_launch_adds_rviz_only_on_request(launch_module):
    actions = launch_module._launch_setup(_launch_context(launch_module, use_rviz="true"))
    assert [a.kwargs["executable"] for a in actions] == ["rgbd_seg_node", "rviz2"]
    config = actions[1].kwargs["arguments"][1]
    try:
        assert "/rgbd_seg/overlay" in Path(config).read_text()
    finally:
        os.unlink(config)


def test_launch_gives_the_node_the_large_image_fastdds_profile_unless_told_otherwise(launch_module, tmp_path):
    shipped = str(ROOT / "config" / "fastdds_large_images.xml")
    env = launch_module.fastdds_environment
    assert set(env("", str(ROOT), {}).values()) == {shipped}
    own = tmp_path / "own.xml"
    own.write_text("<dds/>")
    assert set(env("", str(ROOT), {"FASTDDS_DEFAULT_PROFILES_FILE": str(own)}).values()) == {str(own)}
    assert set(env(str(own), str(ROOT), {}).values()) == {str(own)}
    assert env("none", str(ROOT), {"FASTDDS_DEFAULT_PROFILES_FILE": str(own)}) == {}
    with pytest.raises(ValueError, match=r"missing\.xml"):
        env(str(tmp_path / "missing.xml"), str(ROOT), {})
    (node,) = launch_module._launch_setup(_launch_context(launch_module))
    assert node.kwargs["additional_env"]["FASTDDS_DEFAULT_PROFILES_FILE"] in (shipped, os.environ.get(
        "FASTDDS_DEFAULT_PROFILES_FILE"))  # fmt: skip
