"""The segmentation node with the real rclpy wheels (DDS on loopback) and a stand-in segmenter.

Covers the issue's node checks that do not need a trained model: outputs with the colour header, encodings
and sizes; approximate-time pairing (and its absence beyond slop); QoS; 16UC1 = 32FC1; wrong encodings
reported once; drops under a slow model; depth resizing; missing CameraInfo; lazy publishing and run-time
parameters. ``test_node_e2e.py`` repeats the essentials with a real SGNet checkpoint.
"""

import itertools
import sys
import time
import types

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from ros_harness import (
    DEPTH_OFFSET_NS,
    PERIOD_NS,
    DepthSegmenter,
    Recorder,
    RosHarness,
    color_msg,
    depth_msg,
    domain_id,
    info_msg,
    make_scene,
    stamp_ns,
    wait_for,
    wait_matched,
)
from sensor_msgs.msg import CameraInfo, Image

from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.labels import LabelSet, colorize, get_label_set
from rgbd_seg_ros.ros.convert import image_to_array
from rgbd_seg_ros.ros.node import StartupError

T0 = 1_700_000_000_000_000_000  # a realistic wall-clock stamp (ns)


@pytest.fixture
def ros():
    harness = RosHarness(domain_id(1))
    yield harness
    harness.shutdown()


class Inputs:
    """Publishers of colour, depth and CameraInfo on the harness I/O node."""

    def __init__(self, ros, reliable=False):
        self.color = ros.publisher(Image, "color/image", reliable)
        self.depth = ros.publisher(Image, "depth/image", reliable)
        self.info = ros.publisher(CameraInfo, "depth/camera_info", reliable)

    def send(
        self, rgb, depth, k, t_ns, depth_offset=DEPTH_OFFSET_NS, encoding="16UC1", color_encoding="rgb8", info=True
    ):
        td = t_ns + depth_offset
        self.color.publish(color_msg(rgb, t_ns, encoding=color_encoding))
        self.depth.publish(depth_msg(depth, td, encoding))
        if info:
            self.info.publish(info_msg(k, td))


def outputs(ros, names=("labels", "color", "overlay", "confidence")):
    return {name: ros.collect(Image, f"rgbd_seg/{name}") for name in names}


def ready(node, inputs, names=("labels", "color", "overlay", "confidence"), info=True):
    """Wait until the node's subscriptions and the test's output subscriptions are matched."""
    wait_matched(inputs.color, inputs.depth, *([inputs.info] if info else []))
    wait_matched(*(node.output_publishers[n] for n in names))


def expected_bands(depth_m):
    """The stand-in's labels for depth as a 16UC1 stream carries it (mm-rounded, NaN = void)."""
    return DepthSegmenter()(types.SimpleNamespace(depth=depth_m)).labels


def test_outputs_carry_the_colour_header_encodings_and_sizes(ros):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter())
    out = outputs(ros)
    inputs = Inputs(ros)
    ready(node, inputs)
    sent = [T0 + i * PERIOD_NS for i in range(4)]
    for t in sent:
        inputs.send(rgb, depth, k, t)
        time.sleep(0.03)
    assert wait_for(
        lambda: all(len(v) >= 1 for v in out.values()) and out["labels"][-1].header.stamp.nanosec == sent[-1] % 10**9
    )
    expected = {"labels": "mono8", "color": "rgb8", "overlay": "rgb8", "confidence": "32FC1"}
    for name, msgs in out.items():
        for msg in msgs:
            assert stamp_ns(msg) in sent  # the colour stamps, not the depth ones (3 ms later), never now()
            assert msg.header.frame_id == "color_optical"
            assert (msg.encoding, msg.width, msg.height) == (expected[name], 64, 48)
    labels = image_to_array(out["labels"][-1])
    np.testing.assert_array_equal(labels, expected_bands(depth))
    assert (labels == 255).any()  # depth holes → unlabeled
    np.testing.assert_array_equal(image_to_array(out["color"][-1]), colorize(labels, get_label_set("nyuv2-40")))
    np.testing.assert_array_equal(image_to_array(out["confidence"][-1]), np.full((48, 64), 0.75, np.float32))


def test_pairs_further_apart_than_slop_produce_nothing(ros):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter(), slop=0.02, publish_all=True, camera_info_timeout=0.2)
    log = node._log = Recorder()
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    for i in range(5):  # sets 200 ms apart, depth 50 ms after colour: no colour within 20 ms of any depth
        inputs.send(rgb, depth, k, T0 + i * 200_000_000, depth_offset=50_000_000)
    assert wait_for(lambda: node.stats.total("color") == 5 and node.stats.total("depth") == 5)
    time.sleep(0.3)
    assert out["labels"] == [] and node.stats.total("synchronised") == 0
    assert wait_for(lambda: log.count("warning", "no set was synchronised") >= 1)
    inputs.send(rgb, depth, k, T0 + 10 * 200_000_000, depth_offset=19_000_000)  # control: within slop
    assert wait_for(lambda: len(out["labels"]) == 1)


@pytest.mark.parametrize("reliable_publisher", [False, True])
def test_default_sensor_qos_receives_best_effort_and_reliable_publishers(ros, reliable_publisher):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter())
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros, reliable=reliable_publisher)
    ready(node, inputs, ("labels",))
    inputs.send(rgb, depth, k, T0)
    assert wait_for(lambda: len(out["labels"]) == 1)


def test_reliable_input_qos_does_not_match_a_best_effort_camera(ros):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter(), input_qos="reliable", publish_all=True)
    best_effort = Inputs(ros, reliable=False)
    # Positive control: the same node does hear a reliable camera on the same topics.
    reliable = Inputs(ros, reliable=True)
    wait_matched(reliable.color, reliable.depth)
    reliable.send(rgb, depth, k, T0)
    assert wait_for(lambda: node.stats.total("color") == 1)
    assert best_effort.color.get_subscription_count() == 0  # incompatible QoS: never matched
    best_effort.send(rgb, depth, k, T0 + PERIOD_NS)
    time.sleep(0.3)
    assert node.stats.total("color") == 1


def test_16uc1_and_32fc1_depth_give_the_same_labels(ros):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter())
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    inputs.send(rgb, depth, k, T0, encoding="16UC1")
    assert wait_for(lambda: len(out["labels"]) == 1)
    inputs.send(rgb, depth, k, T0 + PERIOD_NS, encoding="32FC1")
    assert wait_for(lambda: len(out["labels"]) == 2)
    mm_labels, m_labels = (image_to_array(m) for m in out["labels"])
    assert len(np.unique(mm_labels)) > 3
    np.testing.assert_array_equal(mm_labels, m_labels)


@pytest.mark.parametrize(("which", "encoding"), [("colour", "yuv422"), ("depth", "8UC3")])
def test_wrong_encoding_is_reported_once_and_the_node_keeps_running(ros, which, encoding):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter())
    log = node._log = Recorder()
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    for i in range(3):
        t = T0 + i * PERIOD_NS
        if which == "colour":
            inputs.send(rgb, depth, k, t, color_encoding=encoding)
        else:
            inputs.color.publish(color_msg(rgb, t))
            bad = depth_msg(depth, t + DEPTH_OFFSET_NS)
            bad.encoding = encoding
            inputs.depth.publish(bad)
            inputs.info.publish(info_msg(k, t + DEPTH_OFFSET_NS))
    assert wait_for(lambda: node.stats.total("rejected") == 3)
    inputs.send(rgb, depth, k, T0 + 3 * PERIOD_NS)
    assert wait_for(lambda: len(out["labels"]) == 1)
    assert log.count("error", encoding) == 1


def _diagnostics(ros, node):
    name = f"{node.get_fully_qualified_name()}: segmentation"
    received = ros.collect(DiagnosticArray, "/diagnostics")
    return lambda: [dict((kv.key, kv.value) for kv in s.values) for m in received for s in m.status if s.name == name]


def test_slow_model_drops_old_sets_counts_them_and_publishes_the_newest(ros):
    rgb, depth, k = make_scene()
    model = DepthSegmenter(delay=0.12)
    node = ros.start_node(model, diagnostics_period=0.2)
    diagnostics = _diagnostics(ros, node)
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    sent = [T0 + i * PERIOD_NS for i in range(24)]
    for t in sent:
        inputs.send(rgb, depth, k, t)
        time.sleep(1 / 30)
    assert wait_for(lambda: out["labels"] and stamp_ns(out["labels"][-1]) == sent[-1], timeout=3.0)
    dropped = node.stats.total("dropped")
    assert dropped > 0 and len(out["labels"]) == len(model.frames) == node.stats.total("synchronised") - dropped
    assert wait_for(lambda: any(int(d["dropped sets"]) == dropped for d in diagnostics()), timeout=2.0)
    last = diagnostics()[-1]
    assert (last["model"], last["device"]) == ("depth-bands", "cpu")
    assert float(last["latency p95 (ms)"]) >= float(last["latency p50 (ms)"]) > 0


def test_depth_of_another_size_is_resized_with_the_intrinsics_and_warned_once(ros):
    rgb, _, _ = make_scene(48, 64)
    _, depth_small, k_small = make_scene(24, 32)
    model = DepthSegmenter()
    node = ros.start_node(model)
    log = node._log = Recorder()
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    for i in range(3):
        inputs.send(rgb, depth_small, k_small, T0 + i * PERIOD_NS)
        time.sleep(0.03)
    assert wait_for(lambda: len(out["labels"]) == 3)
    assert (out["labels"][0].width, out["labels"][0].height) == (64, 48)
    assert model.frames[0].intrinsics == k_small.scaled(64, 48)
    assert log.count("warning", "resampling depth") == 1


def test_missing_camera_info_warns_and_publishes_nothing(ros):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter(), camera_info_timeout=0.2, publish_all=True)
    log = node._log = Recorder()
    inputs = Inputs(ros)
    wait_matched(inputs.color, inputs.depth)
    for i in range(12):
        inputs.send(rgb, depth, k, T0 + i * PERIOD_NS, info=False)
        time.sleep(0.03)
    assert wait_for(lambda: log.count("warning", "no CameraInfo on") >= 1)
    warnings = [text for level, text in list(log.lines) if level == "warning" and "no CameraInfo on" in text]
    assert node.resolve_topic_name("depth/camera_info") in warnings[0]
    assert node.stats.total("published") == 0


def test_fallback_intrinsics_are_used_until_camera_info_arrives(ros):
    rgb, depth, k = make_scene()
    model = DepthSegmenter()
    node = ros.start_node(model, fallback_intrinsics=[100.0, 101.0, 31.5, 23.5], publish_all=True)
    inputs = Inputs(ros)
    wait_matched(inputs.color, inputs.depth, inputs.info)
    inputs.send(rgb, depth, k, T0, info=False)
    assert wait_for(lambda: len(model.frames) == 1)
    assert model.frames[0].intrinsics == CameraIntrinsics(100.0, 101.0, 31.5, 23.5, 64, 48)
    inputs.info.publish(info_msg(k, T0))
    assert wait_for(lambda: node.stats.total("camera_info") == 1)
    inputs.send(rgb, depth, k, T0 + PERIOD_NS, info=False)
    assert wait_for(lambda: len(model.frames) == 2)
    assert model.frames[1].intrinsics == k


def test_outputs_are_computed_only_for_subscribers_unless_publish_all(ros):
    rgb, depth, k = make_scene()
    model = DepthSegmenter()
    node = ros.start_node(model)
    inputs = Inputs(ros)
    wait_matched(inputs.color, inputs.depth, inputs.info)
    inputs.send(rgb, depth, k, T0)
    assert wait_for(lambda: node.stats.total("idle") == 1)
    assert model.frames == []  # nobody listens: no inference
    assert node.set_parameters([Parameter("publish_all", value=True)])[0].successful
    inputs.send(rgb, depth, k, T0 + PERIOD_NS)
    assert wait_for(lambda: node.stats.total("published") == 1)
    # Only ~/labels is subscribed; switching it off at run time makes the node idle again.
    assert node.set_parameters([Parameter("publish_all", value=False)])[0].successful
    out = outputs(ros, ("labels",))
    wait_matched(node.output_publishers["labels"])
    inputs.send(rgb, depth, k, T0 + 2 * PERIOD_NS)
    assert wait_for(lambda: len(out["labels"]) == 1)
    assert node.set_parameters([Parameter("publish_labels", value=False)])[0].successful
    inputs.send(rgb, depth, k, T0 + 3 * PERIOD_NS)
    assert wait_for(lambda: node.stats.total("idle") == 2)
    assert len(out["labels"]) == 1


def test_overlay_alpha_changes_at_run_time(ros):
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter())
    out = outputs(ros, ("overlay", "labels"))
    inputs = Inputs(ros)
    ready(node, inputs, ("overlay", "labels"))
    for i, alpha in enumerate((0.0, 1.0)):
        assert node.set_parameters([Parameter("overlay_alpha", value=alpha)])[0].successful
        inputs.send(rgb, depth, k, T0 + i * PERIOD_NS)
        assert wait_for(lambda n=i + 1: len(out["overlay"]) == n and len(out["labels"]) == n)
    labels = image_to_array(out["labels"][-1])
    np.testing.assert_array_equal(image_to_array(out["overlay"][0]), rgb)
    full = image_to_array(out["overlay"][1])
    valid = labels != 255
    np.testing.assert_array_equal(full[valid], colorize(labels, get_label_set("nyuv2-40"))[valid])
    np.testing.assert_array_equal(full[~valid], rgb[~valid])
    assert not node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0].successful


@pytest.mark.parametrize(("name", "value"), [("checkpoint", "/other.safetensors"), ("slop", 0.05), ("device", "cpu")])
def test_start_up_parameters_are_refused_at_run_time_with_a_restart_hint(ros, name, value):
    node = ros.start_node(DepthSegmenter())
    result = node.set_parameters([Parameter(name, value=value)])[0]
    assert not result.successful and "restart" in result.reason and name in result.reason


def test_labels_are_mono16_for_more_than_255_classes(ros):
    rgb, depth, k = make_scene()
    names = [f"class{i}" for i in range(300)]
    big = LabelSet("big", names, np.zeros((300, 3), np.uint8), ignore_index=65535)
    node = ros.start_node(DepthSegmenter(label_set=big))
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    inputs.send(rgb, depth, k, T0)
    assert wait_for(lambda: len(out["labels"]) == 1)
    assert out["labels"][0].encoding == "mono16"
    labels = image_to_array(out["labels"][0])
    assert labels.dtype == np.uint16 and (labels == 65535).any()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"device": "tpu"}, "device"),
        ({"sync_backend": "exact"}, "sync_backend"),
        ({"slop": 20.0}, "slop"),
        ({"input_size": [240]}, "input_size"),
        ({"model": "sgnet"}, "'depth-bands'"),
        ({"label_set": "nyuv2-13"}, "13"),
        ({"sync_backend": "message_filters"}, "message_filters is not installed"),
    ],
)
def test_bad_start_up_configuration_is_one_clear_error(ros, params, needle, monkeypatch):
    monkeypatch.setitem(sys.modules, "message_filters", None)  # makes the import fail
    with pytest.raises(StartupError, match=needle):
        ros.start_node(DepthSegmenter(), **params)


class FakeMessageFilters(types.ModuleType):
    """A minimal ``message_filters`` (Subscriber, ApproximateTimeSynchronizer) to check the node's wiring."""

    def __init__(self):
        super().__init__("message_filters")
        fake = self
        fake.subscribers = []

        class Subscriber:
            def __init__(self, node, msg_type, topic, qos_profile=10):
                self.qos, self.callbacks = qos_profile, []
                node.create_subscription(msg_type, topic, self._deliver, qos_profile)
                fake.subscribers.append(self)

            def registerCallback(self, cb, *args):
                self.callbacks.append((cb, args))

            def _deliver(self, msg):
                for cb, args in self.callbacks:
                    cb(msg, *args)

        class ApproximateTimeSynchronizer:
            """Brute force, written apart from ``rgbd_seg_ros.sync``: on every arrival, the combination (one message
            per input) of smallest stamp spread below ``slop`` is emitted, and it and everything older dropped."""

            def __init__(self, fs, queue_size, slop):
                self.queues = [[] for _ in fs]
                self.queue_size, self.slop_ns, self.callbacks = queue_size, int(slop * 1e9), []
                for i, f in enumerate(fs):
                    f.registerCallback(lambda msg, i=i: self._add(i, msg))

            def registerCallback(self, cb):
                self.callbacks.append(cb)

            def _add(self, i, msg):
                self.queues[i] = [*self.queues[i], msg][-self.queue_size :]
                stamp = lambda m: m.header.stamp.sec * 10**9 + m.header.stamp.nanosec  # noqa: E731
                spread = lambda combo: max(map(stamp, combo)) - min(map(stamp, combo))  # noqa: E731
                combos = [c for c in itertools.product(*self.queues) if spread(c) < self.slop_ns]
                if not combos:
                    return
                best = min(combos, key=spread)
                self.queues = [[m for m in q if stamp(m) > stamp(b)] for q, b in zip(self.queues, best)]
                for cb in self.callbacks:
                    cb(*best)

        self.Subscriber = Subscriber
        self.ApproximateTimeSynchronizer = ApproximateTimeSynchronizer


def test_auto_sync_backend_uses_message_filters_when_installed(ros, monkeypatch):
    fake = FakeMessageFilters()
    monkeypatch.setitem(sys.modules, "message_filters", fake)
    rgb, depth, k = make_scene()
    node = ros.start_node(DepthSegmenter())
    assert node.sync_backend == "message_filters"
    assert len(fake.subscribers) == 3
    assert all(s.qos.reliability.name == "BEST_EFFORT" for s in fake.subscribers)  # not message_filters' default 10
    out = outputs(ros, ("labels",))
    inputs = Inputs(ros)
    ready(node, inputs, ("labels",))
    inputs.send(rgb, depth, k, T0)
    assert wait_for(lambda: len(out["labels"]) == 1)
    assert node.stats.total("color") == 1  # per-input counters still run


def test_builtin_backend_is_used_without_message_filters(ros, monkeypatch):
    monkeypatch.setitem(sys.modules, "message_filters", None)
    node = ros.start_node(DepthSegmenter())
    assert node.sync_backend == "builtin"


def test_library_warnings_reach_the_node_log(ros):
    """Warnings of the library (e.g. another input size than the checkpoint's) go to the node's ROS logger."""
    import logging

    node = ros.start_node(DepthSegmenter())
    log = node._log = Recorder()
    logging.getLogger("rgbd_seg_ros.settings").warning("running m at input size 240x320, but it was trained at 120x160")
    logging.getLogger("rgbd_seg_ros").info("exporting m at 120x160 to ONNX")
    logging.getLogger("elsewhere").warning("not ours")
    assert log.count("warning", "trained at 120x160") == 1
    assert log.count("info", "exporting m") == 1
    assert not any("not ours" in text for _, text in log.lines)
