"""The managed (lifecycle) node, ``~/label_info``, and the node's start-up and shutdown edges.

Transitions go through the node's own lifecycle services (``<node>/change_state``), as ``ros2 lifecycle set`` and
launch send them; outputs are watched from another node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import DurabilityPolicy, QoSProfile
from ros_harness import (
    DepthSegmenter,
    RosHarness,
    color_msg,
    depth_msg,
    domain_id,
    info_msg,
    make_scene,
    wait_for,
    wait_matched,
)
from sensor_msgs.msg import CameraInfo, Image

from rgbd_seg_ros.ros.label_info import label_info_type
from rgbd_seg_ros.ros.lifecycle_node import ManagedSegmentationNode
from rgbd_seg_ros.ros.node import StartupError

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000_000_000


@pytest.fixture
def ros():
    harness = RosHarness(domain_id(33))
    yield harness
    harness.shutdown()


class Factory:
    """Segmenter factory: counts loads; ``fail`` makes the next load fail like a missing checkpoint."""

    def __init__(self):
        self.loads = 0
        self.fail = False
        self.segmenter = DepthSegmenter()

    def __call__(self, params):
        if self.fail:
            raise StartupError("cannot load checkpoint /missing.safetensors: no such file")
        self.loads += 1
        return self.segmenter


class Camera:
    """Publishes colour, depth and CameraInfo of one scene with rising stamps."""

    def __init__(self, ros):
        self.rgb, self.depth, self.k = make_scene()
        self.pubs = [
            ros.publisher(Image, "color/image"),
            ros.publisher(Image, "depth/image"),
            ros.publisher(CameraInfo, "depth/camera_info"),
        ]
        self.t = T0

    def send(self, n=1, period=0.05):
        for _ in range(n):
            self.t += 40_000_000
            td = self.t + 3_000_000
            msgs = (color_msg(self.rgb, self.t), depth_msg(self.depth, td), info_msg(self.k, td))
            for pub, msg in zip(self.pubs, msgs):
                pub.publish(msg)
            threading.Event().wait(period)


def start_managed(ros, factory):
    node = ManagedSegmentationNode(segmenter_factory=factory, namespace=ros.namespace, context=ros.context)
    ros.nodes.append(node)
    ros.executor.add_node(node)
    return node


def call(ros, srv_type, name, request):
    client = ros.io.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=5.0), f"no service {name}"
    future = client.call_async(request)
    assert wait_for(future.done, 15.0), f"{name} did not answer"
    ros.io.destroy_client(client)
    return future.result()


def transition(ros, node, transition_id):
    name = f"{node.get_fully_qualified_name()}/change_state"
    return call(ros, ChangeState, name, ChangeState.Request(transition=Transition(id=transition_id))).success


def state(ros, node):
    return call(ros, GetState, f"{node.get_fully_qualified_name()}/get_state", GetState.Request()).current_state.id


def test_outputs_appear_only_while_active_and_deactivate_keeps_the_model(ros):
    factory = Factory()
    node = start_managed(ros, factory)
    labels = ros.collect(Image, "rgbd_seg/labels")
    camera = Camera(ros)
    assert state(ros, node) == State.PRIMARY_STATE_UNCONFIGURED and factory.loads == 0
    assert camera.pubs[0].get_subscription_count() == 0  # unconfigured: no subscriptions

    assert transition(ros, node, Transition.TRANSITION_CONFIGURE)
    assert state(ros, node) == State.PRIMARY_STATE_INACTIVE and factory.loads == 1
    camera.send(3)
    assert camera.pubs[0].get_subscription_count() == 0 and not labels  # inactive: nothing in, nothing out

    assert transition(ros, node, Transition.TRANSITION_ACTIVATE)
    wait_matched(*camera.pubs)
    assert wait_for(lambda: node.output_publishers["labels"].get_subscription_count() > 0)
    camera.send(3)
    assert wait_for(lambda: labels, 10.0), "no output while active"

    assert transition(ros, node, Transition.TRANSITION_DEACTIVATE)
    assert wait_for(lambda: camera.pubs[0].get_subscription_count() == 0)
    seen = len(labels)
    camera.send(5)
    threading.Event().wait(0.3)
    assert len(labels) == seen, "published while inactive"
    assert node.segmenter is factory.segmenter  # deactivate keeps the model loaded

    assert transition(ros, node, Transition.TRANSITION_ACTIVATE)
    wait_matched(*camera.pubs)
    camera.send(3)
    assert wait_for(lambda: len(labels) > seen, 10.0), "no output after re-activation"
    assert factory.loads == 1  # no reload

    assert transition(ros, node, Transition.TRANSITION_DEACTIVATE)
    assert transition(ros, node, Transition.TRANSITION_CLEANUP)
    assert state(ros, node) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.segmenter is None and not node.output_publishers  # cleanup frees the model and the publishers
    assert transition(ros, node, Transition.TRANSITION_CONFIGURE) and factory.loads == 2


def test_a_failed_configure_leaves_the_node_unconfigured_with_the_reason(ros):
    factory = Factory()
    factory.fail = True
    node = start_managed(ros, factory)
    errors = []
    node._log = type(
        "Log", (), {"__getattr__": lambda s, lv: lambda t, **_: errors.append(t) if lv == "error" else None}
    )()
    assert not transition(ros, node, Transition.TRANSITION_CONFIGURE)
    assert state(ros, node) == State.PRIMARY_STATE_UNCONFIGURED
    assert "/missing.safetensors" in node.configure_error
    assert len(errors) == 1 and "/missing.safetensors" in errors[0] and "unconfigured" in errors[0]
    factory.fail = False  # e.g. after `ros2 param set ... checkpoint:=...`
    assert transition(ros, node, Transition.TRANSITION_CONFIGURE)
    assert node.configure_error == "" and state(ros, node) == State.PRIMARY_STATE_INACTIVE


def test_label_info_is_latched_for_late_subscribers(ros):
    segmenter = DepthSegmenter(label_set="synthetic")
    ros.start_node(segmenter)
    threading.Event().wait(0.3)  # published long before anyone subscribes
    msg_type, type_name = label_info_type()
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = []
    ros.io.create_subscription(msg_type, "rgbd_seg/label_info", got.append, latched)
    assert wait_for(lambda: got, 5.0), "late subscriber did not get ~/label_info"
    names = segmenter.label_set.class_names
    if type_name == "vision_msgs/LabelInfo":
        entries = [(c.class_id, c.class_name) for c in got[0].class_map]
    else:
        payload = json.loads(got[0].data)
        assert payload["label_set"] == segmenter.label_set.name and payload["unlabeled"] == 255
        entries = [(c["class_id"], c["class_name"]) for c in payload["class_map"]]
    assert entries[: len(names)] == list(enumerate(names))
    assert entries[len(names)] == (255, "unlabeled")


def test_label_info_is_vision_msgs_label_info_where_vision_msgs_is_installed(monkeypatch):
    """With vision_msgs importable (a ROS 2 install), the message is LabelInfo with one VisionClass per class."""
    import types

    from rgbd_seg_ros.labels import get_label_set
    from rgbd_seg_ros.ros.label_info import label_info_message

    class Message:  # the rosidl message interface label_info.py relies on
        _fields: tuple[str, ...] = ()

        def __init__(self, **kwargs):
            assert set(kwargs) <= set(self._fields), kwargs
            self.__dict__.update(kwargs)

        @classmethod
        def get_fields_and_field_types(cls):
            return dict.fromkeys(cls._fields, "")

    msg_module = types.ModuleType("vision_msgs.msg")
    msg_module.LabelInfo = type("LabelInfo", (Message,), {"_fields": ("header", "class_map", "threshold")})
    msg_module.VisionClass = type("VisionClass", (Message,), {"_fields": ("class_id", "class_name")})
    monkeypatch.setitem(sys.modules, "vision_msgs", types.ModuleType("vision_msgs"))
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", msg_module)
    msg_type, name = label_info_type()
    assert (msg_type, name) == (msg_module.LabelInfo, "vision_msgs/LabelInfo")
    label_set = get_label_set("nyuv2-40")
    msg = label_info_message(label_set, "header", msg_type)
    assert msg.header == "header" and msg.threshold == 0.0
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [
        *enumerate(label_set.class_names),
        (255, "unlabeled"),
    ]


def test_shutdown_while_a_frame_is_in_flight_is_quiet(ros):
    segmenter = DepthSegmenter(delay=1.0)
    node = ros.start_node(segmenter)
    lines = []
    node._log = type("Log", (), {"__getattr__": lambda s, lv: lambda t, **_: lines.append((lv, str(t)))})()
    labels = ros.collect(Image, "rgbd_seg/labels")
    camera = Camera(ros)
    wait_matched(*camera.pubs)
    assert wait_for(lambda: node.output_publishers["labels"].get_subscription_count() > 0)
    camera.send(1)
    assert wait_for(lambda: segmenter.frames, 10.0)  # the model is running on it
    import rclpy

    rclpy.try_shutdown(context=ros.context)  # what Ctrl-C does to the node's context
    node._worker.join(timeout=10.0)
    assert not node._worker.is_alive()
    assert not [text for level, text in lines if level in ("error", "fatal")], lines
    assert node.stats.total("errors") == 0 and not labels


def _run_node_script(body: str, *ros_args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1", ROS_DOMAIN_ID=str(domain_id(34)))
    return subprocess.run(
        [sys.executable, "-c", body, *ros_args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def test_a_missing_python_package_gives_the_one_line_fatal_message_with_the_pip_step():
    from rgbd_seg_ros import DEMO_CHECKPOINT, data_path

    body = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'safetensors':\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from rgbd_seg_ros.ros.node import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = _run_node_script(body, "--ros-args", "-p", f"checkpoint:={data_path(DEMO_CHECKPOINT)}", "-p", "device:=cpu")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    fatal = [line for line in output.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "pip install safetensors" in fatal[0], output
    assert "Traceback" not in output


def test_lifecycle_console_script_starts_unconfigured_without_loading():
    body = (
        "import sys, threading, rclpy\n"
        "from rgbd_seg_ros.ros import lifecycle_node\n"
        "threading.Timer(3.0, rclpy.try_shutdown).start()\n"  # stands in for Ctrl-C
        "sys.exit(lifecycle_node.main(sys.argv[1:]))\n"
    )
    proc = _run_node_script(body, "--ros-args", "-p", "checkpoint:=/nowhere/model.safetensors")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output  # no model is loaded before configure, so a bad path is not fatal yet
    assert "unconfigured" in output and "Traceback" not in output
    assert "rgbd_seg_lifecycle_node = rgbd_seg_ros.ros.lifecycle_node:main" in (ROOT / "setup.py").read_text()


def test_labels_of_the_plain_node_are_unchanged_by_the_managed_variant(ros):
    """The managed node is the plain node's code: an active one produces the plain node's labels."""
    factory = Factory()
    node = start_managed(ros, factory)
    assert transition(ros, node, Transition.TRANSITION_CONFIGURE)
    assert transition(ros, node, Transition.TRANSITION_ACTIVATE)
    labels = ros.collect(Image, "rgbd_seg/labels")
    camera = Camera(ros)
    wait_matched(*camera.pubs)
    assert wait_for(lambda: node.output_publishers["labels"].get_subscription_count() > 0)
    camera.send(2)
    assert wait_for(lambda: labels, 10.0)
    from rgbd_seg_ros.ros.convert import image_to_array

    bands = np.clip(np.nan_to_num(camera.depth, nan=0.0) // 0.5, 0, 39)
    expected = np.where(np.isnan(camera.depth), 255, bands).astype(np.uint8)
    np.testing.assert_array_equal(image_to_array(labels[-1]), expected)


# -- seg.launch.py: the bundled default checkpoint, managed:=true, the exit code -----------------------------------
from test_node_params import _launch_context, _Recorded, launch_module  # noqa: E402, F401 - the stubbed launch file


def test_launch_defaults_to_the_bundled_checkpoint_with_its_warning(launch_module, tmp_path, capsys):  # noqa: F811
    from rgbd_seg_ros import DEMO_CHECKPOINT

    assert Path(launch_module.BUNDLED_CHECKPOINT).name == DEMO_CHECKPOINT  # setup.py installs it to share/models
    setup_py = (ROOT / "setup.py").read_text()
    assert 'f"share/{PACKAGE}/models"' in setup_py and "data/*.safetensors" in setup_py
    (node,) = launch_module._launch_setup(_launch_context(launch_module))
    overrides = node.kwargs["parameters"][1]
    assert overrides["checkpoint"] == str(ROOT / "models" / DEMO_CHECKPOINT)  # share/ = the source tree here
    assert "synthetic rooms only" in capsys.readouterr().err
    own = tmp_path / "own.yaml"
    own.write_text("/**:\n  ros__parameters:\n    checkpoint: /robot/model.safetensors\n")
    (node,) = launch_module._launch_setup(_launch_context(launch_module, params_file=str(own)))
    assert "checkpoint" not in node.kwargs["parameters"][1]  # the params file's checkpoint is kept
    (node,) = launch_module._launch_setup(_launch_context(launch_module, checkpoint="/m.safetensors"))
    assert node.kwargs["parameters"][1]["checkpoint"] == "/m.safetensors"
    assert "synthetic" not in capsys.readouterr().err


def test_launch_fails_when_the_node_exits_with_an_error(launch_module):  # noqa: F811
    from types import SimpleNamespace

    (node,) = launch_module._launch_setup(_launch_context(launch_module, checkpoint="/m.safetensors"))
    on_exit = node.kwargs["on_exit"]
    running = SimpleNamespace(is_shutdown=False)
    with pytest.raises(RuntimeError, match="rgbd_seg_node-1 exited with code 1"):
        on_exit(SimpleNamespace(returncode=1, process_name="rgbd_seg_node-1"), running)
    (shutdown,) = on_exit(SimpleNamespace(returncode=0, process_name="rgbd_seg_node-1"), running)
    assert "exited (code 0)" in shutdown.kwargs["reason"]
    stopping = SimpleNamespace(is_shutdown=True)  # Ctrl-C on the launch: the node's signal exit is no error
    assert on_exit(SimpleNamespace(returncode=-2, process_name="rgbd_seg_node-1"), stopping)


def test_launch_managed_starts_the_lifecycle_node_and_drives_it_to_active(launch_module, monkeypatch):  # noqa: F811
    import types

    for name in ("launch.events", "launch_ros.event_handlers", "launch_ros.events", "launch_ros.events.lifecycle"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for module, attr in (
        ("launch_ros.event_handlers", "OnStateTransition"),
        ("launch_ros.events.lifecycle", "ChangeState"),
    ):
        monkeypatch.setattr(sys.modules[module], attr, _Recorded, raising=False)
    monkeypatch.setattr(
        sys.modules["launch.events"], "matches_action", lambda action: ("matches", action), raising=False
    )
    context = _launch_context(launch_module, checkpoint="/m.safetensors", managed="true")
    node, handler, configure = launch_module._launch_setup(context)
    assert node.kwargs["executable"] == "rgbd_seg_lifecycle_node" and node.kwargs["name"] == "rgbd_seg"
    assert configure.kwargs["event"].kwargs["transition_id"] == Transition.TRANSITION_CONFIGURE
    assert configure.kwargs["event"].kwargs["lifecycle_node_matcher"] == ("matches", node)
    activate = handler.args[0].kwargs
    assert (activate["start_state"], activate["goal_state"]) == ("configuring", "inactive")  # not after deactivate
    assert activate["entities"][0].kwargs["event"].kwargs["transition_id"] == Transition.TRANSITION_ACTIVATE
    (node,) = launch_module._launch_setup({**context, "autostart": "false"})
    assert node.kwargs["executable"] == "rgbd_seg_lifecycle_node"  # left unconfigured for a lifecycle manager
