"""Depth outages at run time: the valid-depth fraction, the node's warnings and /diagnostics, the replay report."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, limit_depth_range, valid_depth_fraction

T0 = 1_700_000_000_000_000_000
PERIOD_NS = 33_333_333


def test_valid_depth_fraction_counts_what_the_depth_range_leaves_valid():
    depth = np.array([[np.nan, 0.05, 0.1, 1.0], [10.0, 10.5, np.inf, 3.0]], np.float32)
    frame = RGBDFrame(np.zeros((2, 4, 3), np.uint8), depth, CameraIntrinsics(1.0, 1.0, 1.5, 0.5, 4, 2))
    assert valid_depth_fraction(frame, 0.1, 10.0) == 4 / 8  # 0.1, 1.0, 10.0 and 3.0 m
    for lo, hi in ((0.1, 10.0), (0.5, 5.0), (0.0, 100.0)):
        kept = limit_depth_range(frame, lo, hi).depth
        assert valid_depth_fraction(frame, lo, hi) == np.isfinite(kept).mean()


# -- the node ----------------------------------------------------------------------------------------------------
@pytest.fixture
def ros():
    pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
    from ros_harness import RosHarness, domain_id

    harness = RosHarness(domain_id(23))
    yield harness
    harness.shutdown()


def test_node_warns_once_per_depth_outage_and_once_when_depth_returns(ros):
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_harness import (
        DepthSegmenter,
        Recorder,
        color_msg,
        depth_msg,
        info_msg,
        make_scene,
        wait_for,
        wait_matched,
    )
    from sensor_msgs.msg import CameraInfo, Image

    rgb, depth, k = make_scene()  # 5 % holes
    sparse = depth.copy()
    sparse[np.random.default_rng(1).random(depth.shape) < 0.9] = np.nan  # ~10 % valid: below the default 20 %
    node = ros.start_node(DepthSegmenter(), diagnostics_period=0.2, publish_all=True)
    log = node._log = Recorder()
    name = f"{node.get_fully_qualified_name()}: segmentation"
    received = ros.collect(DiagnosticArray, "/diagnostics")
    color = ros.publisher(Image, "color/image")
    depth_pub = ros.publisher(Image, "depth/image")
    info = ros.publisher(CameraInfo, "depth/camera_info")
    wait_matched(color, depth_pub, info)
    stamps = itertools.count()

    def status_since(start):
        return [s for m in received[start:] for s in m.status if s.name == name]

    def pump(depth_m, until, timeout=8.0):
        """Send sets at ~30 Hz until ``until()`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = T0 + next(stamps) * PERIOD_NS
            color.publish(color_msg(rgb, t))
            depth_pub.publish(depth_msg(depth_m, t + 3_000_000))
            info.publish(info_msg(k, t + 3_000_000))
            if until():
                return True
            time.sleep(1 / 30)
        return until()

    def level(status):
        return status.level[0] if isinstance(status.level, bytes) else int(status.level)

    def values(status):
        return {kv.key: kv.value for kv in status.values}

    expected = {
        "full": 100 * np.isfinite(depth).mean(),
        "sparse": 100 * np.isfinite(sparse).mean(),
    }
    assert expected["sparse"] < 20 < expected["full"]

    def healthy(start):
        return lambda: any(
            level(s) == 0 and abs(float(values(s)["valid depth (%)"]) - expected["full"]) < 0.01
            for s in status_since(start)
        )

    def outage(start):
        return lambda: any(
            level(s) == 1
            and "depth outage" in s.message
            and abs(float(values(s)["valid depth (%)"]) - expected["sparse"]) < 0.01
            for s in status_since(start)
        )

    assert pump(depth, healthy(0)), "no OK diagnostic with the full depth's valid fraction"
    assert log.count("warning", "depth outage") == 0

    for n in (1, 2):  # two outages: one warning each, one "back" line each
        start = len(received)
        assert pump(sparse, outage(start)), f"outage {n}: no WARN diagnostic"
        frames = node.stats.total("published")
        assert pump(sparse, lambda f=frames: node.stats.total("published") >= f + 3)  # it stays out
        assert log.count("warning", "depth outage") == n
        assert log.count("info", "depth is back") == n - 1
        start = len(received)
        assert pump(depth, healthy(start)), f"outage {n}: the diagnostic does not return to OK"
        assert wait_for(lambda n=n: log.count("info", "depth is back") == n)
        assert log.count("warning", "depth outage") == n
        assert int(values(status_since(start)[-1])["depth outages"]) == n


def test_min_valid_depth_changes_at_run_time(ros):
    from rclpy.parameter import Parameter
    from ros_harness import DepthSegmenter

    node = ros.start_node(DepthSegmenter())
    assert node.set_parameters([Parameter("min_valid_depth", value=0.5)])[0].successful
    assert not node.set_parameters([Parameter("min_valid_depth", value=1.5)])[0].successful


# -- the replay report -------------------------------------------------------------------------------------------
class BandSegmenter:
    """Stand-in segmenter (floor where depth is below 3 m, wall elsewhere) with the Segmenter's depth range."""

    model_name = "bands"
    device = "cpu"
    depth_range_m = (0.1, 10.0)

    def __init__(self):
        from rgbd_seg_ros.labels import get_label_set

        self.label_set = get_label_set("synthetic")

    def __call__(self, frame):
        from types import SimpleNamespace

        labels = np.where(np.isnan(frame.depth) | (frame.depth > 3), 0, 1).astype(np.uint8)
        return SimpleNamespace(labels=labels, confidence=np.full(labels.shape, 0.5, np.float32), timings={})


def test_replay_reports_valid_depth_per_set_and_the_outages(tmp_path):
    import json
    from dataclasses import replace

    from rgbd_seg_ros.bag import dataset_samples, write_dataset_bag
    from rgbd_seg_ros.replay import ReplayOptions, format_summary, replay

    samples = list(dataset_samples("synthetic", 6, size=(30, 40)))
    for i in (2, 3):  # the sensor dies for two frames
        frame, ids = samples[i]
        samples[i] = (replace(frame, depth=np.full_like(frame.depth, np.nan)), ids)
    expected = [np.isfinite(np.round(f.depth * 1000) / 1000).mean() for f, _ in samples]  # 16UC1 keeps mm
    write_dataset_bag(tmp_path / "bag", samples)

    result = replay(tmp_path / "bag", BandSegmenter(), tmp_path / "out", ReplayOptions(progress=False))
    depth = json.loads((tmp_path / "out" / "report.json").read_text())["valid_depth"]
    below = sum(e < 0.2 for e in expected)
    assert below >= 2 and depth["frames_below"] == below
    assert depth["min_percent"] == 0.0 and depth["min_valid_depth_percent"] == 20.0
    assert depth["valid_percent"]["p50"] == pytest.approx(100 * np.median(expected))
    assert depth["valid_percent"]["mean"] == pytest.approx(100 * np.mean(expected))
    assert f"{below} sets below min_valid_depth" in format_summary(result)
    assert "sets below min_valid_depth" in (tmp_path / "out" / "report.html").read_text()


def test_replay_command_passes_min_valid_depth_to_the_report(tmp_path):
    import json

    from rgbd_seg_ros import data_path
    from rgbd_seg_ros.bag import dataset_samples, write_dataset_bag
    from rgbd_seg_ros.cli import main

    write_dataset_bag(tmp_path / "bag", list(dataset_samples("synthetic", 2, size=(30, 40))))
    checkpoint = str(data_path("sgnet_r18_synthetic.safetensors"))
    common = ["replay", str(tmp_path / "bag"), "--checkpoint", checkpoint, "--backend", "torch"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--min-valid-depth", "1.0"]) == 0
    default = json.loads((tmp_path / "a" / "report.json").read_text())["valid_depth"]
    strict = json.loads((tmp_path / "b" / "report.json").read_text())["valid_depth"]
    assert default["min_valid_depth_percent"] == 20.0 and strict["min_valid_depth_percent"] == 100.0
    assert strict["frames_below"] == 2 > default["frames_below"]  # holes: no frame is 100 % valid
