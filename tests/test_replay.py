"""Replay evaluation: the node's drop policy, accuracy equal to direct evaluation, outputs, interruption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore

from rgbd_seg_ros.bag import COLOR_TOPIC, OUTPUT_TOPICS, BagError, dataset_samples, write_dataset_bag
from rgbd_seg_ros.cli import main
from rgbd_seg_ros.frames import RGBDFrame, depth_to_metres
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.replay import LiveScheduler, ReplayOptions, replay
from rgbd_seg_ros.synthetic import SceneGenerator

ROOT = Path(__file__).resolve().parents[1]
TYPES = get_typestore(Stores.ROS2_JAZZY)

FAKE_SEGMENTER = '''
import time
from types import SimpleNamespace

import numpy as np

from rgbd_seg_ros.labels import get_label_set


class FakeSegmenter:
    """Walls where depth is beyond 3 m or missing, floor elsewhere; sleeps ``delay`` s per frame."""

    label_set = get_label_set("synthetic")
    model_name = "fake"
    device = "cpu"

    def __init__(self, delay=0.0):
        self.delay, self.calls = delay, 0

    def __call__(self, frame):
        self.calls += 1
        time.sleep(self.delay)
        labels = np.where(np.isnan(frame.depth) | (frame.depth > 3), 0, 1).astype(np.uint8)
        confidence = np.full(labels.shape, 0.5, np.float32)
        return SimpleNamespace(labels=labels, confidence=confidence, timings={"model": 1.0, "total": 1.0})
'''
_namespace: dict = {}
exec(FAKE_SEGMENTER, _namespace)  # the same class in-process and in the interrupted subprocess
FakeSegmenter = _namespace["FakeSegmenter"]


def read_all(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append(TYPES.deserialize_cdr(raw, conn.msgtype))
    return out


def stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def synthetic_bag(path: Path, frames: int, size=(30, 40), fps: float = 30.0, storage: str = "mcap") -> Path:
    from rgbd_seg_ros.bag import StreamTiming

    write_dataset_bag(path, dataset_samples("synthetic", frames, size=size), storage, StreamTiming(fps=fps))
    return path


# -- the live node's worker policy --------------------------------------------------------------------------------
def test_live_scheduler_keeps_only_the_newest_waiting_set():
    processed = []
    scheduler = LiveScheduler(lambda item: processed.append(item) or 0.25)
    for i in range(8):  # a 10 Hz camera, a model taking 0.25 s
        scheduler.offer(i, 0.1 * i)
    scheduler.finish()
    # 0 runs 0–0.25. 1 waits and is replaced by 2 (drop), which runs 0.25–0.5. 3 is replaced by 4, which runs
    # 0.5–0.75 (the worker is free when 5 arrives at 0.5, so 4 starts first and 5 waits). 6 replaces 5, 7 replaces 6,
    # and 7 runs 0.75–1.0 when the stream ends.
    assert processed == [0, 2, 4, 7]
    assert scheduler.dropped == 4
    starts = [start for _, start, _ in scheduler.timeline]
    assert starts == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_live_scheduler_drops_nothing_when_the_model_keeps_up():
    scheduler = LiveScheduler(lambda item: 0.05)
    for i in range(5):
        scheduler.offer(i, 0.1 * i)
    assert scheduler.dropped == 0 and [a for a, _, _ in scheduler.timeline] == [a for _, a, _ in scheduler.timeline]


# -- replay with a stand-in model (no torch) ------------------------------------------------------------------------
def test_realtime_replay_drops_sets_that_arrive_while_the_model_is_busy(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=8, fps=100.0)  # a set every 10 ms, the model takes ≥ 30 ms
    result = replay(bag, FakeSegmenter(delay=0.03), tmp_path / "out", ReplayOptions(realtime=1.0, progress=False))
    r = result.report
    assert r["synchronized"] == 8 and r["dropped"] > 0
    assert r["processed"] + r["dropped"] == r["synchronized"]
    assert r["end_to_end_ms"]["max"] >= r["latency_ms"]["max"]  # waiting adds to processing time
    labels = read_all(tmp_path / "out" / "output.mcap")[OUTPUT_TOPICS["labels"]]
    assert len(labels) == r["processed"]
    offline = replay(bag, FakeSegmenter(delay=0.03), tmp_path / "offline", ReplayOptions(progress=False)).report
    assert offline["dropped"] == 0 and offline["processed"] == 8


def test_ground_truth_is_matched_by_stamp_and_mapped_to_train_ids(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=3, storage="sqlite3")
    report = replay(bag, FakeSegmenter(), tmp_path / "out", ReplayOptions(progress=False)).report
    gen = SceneGenerator(30, 40, seed=0)
    cm = ConfusionMatrix(40)
    for i in range(3):
        scene = gen.sample(i)
        mm = np.where(np.isnan(scene.frame.depth), 0, np.round(scene.frame.depth.astype(np.float64) * 1000))
        depth = depth_to_metres(mm.astype(np.uint16))
        truth = np.where(scene.labels == 0, 255, scene.labels.astype(np.int64) - 1)  # NYU 0 → ignore, k → k − 1
        cm.update(np.where(np.isnan(depth) | (depth > 3), 0, 1), truth)
    metrics = report["metrics"]
    assert metrics["frames"] == 3 and metrics["frames_without_labels"] == 0
    np.testing.assert_array_equal(np.array(metrics["confusion_matrix"]), cm.matrix)
    assert metrics["miou"] == pytest.approx(cm.miou())
    none = replay(bag, FakeSegmenter(), tmp_path / "none", ReplayOptions(label_topic="", progress=False)).report
    assert none["metrics"] is None and none["processed"] == 3


def test_a_bag_corrupt_part_way_still_leaves_the_outputs_of_the_sets_before(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=3)
    broken = tmp_path / "broken"
    with Reader(bag) as reader, Writer(broken, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=TYPES) for c in reader.connections}
        colour = next(c for c in reader.connections if c.topic == COLOR_TOPIC)
        last = None
        for conn, t, raw in reader.messages():
            writer.write(conns[conn.id], t, raw)
            last = t
        writer.write(conns[colour.id], last + 1, b"\x00\x01\x00\x00\xff\xff")  # a truncated colour message
    with pytest.raises(BagError, match="cover the 3 sets before it"):
        replay(broken, FakeSegmenter(), tmp_path / "out", ReplayOptions(progress=False))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["processed"] == 3 and "truncated or corrupt" in report["error"]
    assert len(read_all(tmp_path / "out" / "output.mcap")[OUTPUT_TOPICS["labels"]]) == 3


def test_sigint_stops_the_replay_with_a_readable_bag_and_a_report(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=20)
    out = tmp_path / "out"
    script = FAKE_SEGMENTER + textwrap.dedent(f"""
        import sys
        from rgbd_seg_ros.replay import ReplayOptions, replay

        class Announcing(FakeSegmenter):
            def __call__(self, frame):
                if self.calls == 1:
                    print("running", flush=True)
                return super().__call__(frame)

        result = replay({str(bag)!r}, Announcing(delay=0.2), {str(out)!r}, ReplayOptions(progress=False))
        sys.exit(130 if result.interrupted else 0)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout.readline().strip() == "running"  # the second set is being segmented
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and 2 <= report["processed"] < 20
    outputs = read_all(out / "output.mcap")
    for topic in OUTPUT_TOPICS.values():
        assert len(outputs[topic]) == report["processed"]
    assert (out / "report.html").is_file()


# -- the real pipeline -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from rgbd_seg_ros.models import build_model
    from rgbd_seg_ros.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = build_model("sgnet", 40, backbone="resnet18")
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "sgnet_r18", {"label_set": "synthetic"})


def test_replay_equals_direct_evaluation_through_the_segmenter(tmp_path, checkpoint, capsys):
    from rgbd_seg_ros.pipeline import Segmenter

    bag = tmp_path / "bag"
    assert main(["make-bag", "--frames", "3", "--size", "48x64", "--out", str(bag)]) == 0
    out = tmp_path / "out"
    assert main(["replay", str(bag), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "overlays:" in printed

    # Direct: the same scenes, depth stored as the dataset stores it (16-bit mm), straight through the Segmenter.
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu")
    label_set = get_label_set("synthetic")
    cm = ConfusionMatrix(label_set.num_classes)
    gen = SceneGenerator(48, 64, seed=0)
    predictions = []
    for i in range(3):
        scene = gen.sample(i)
        mm = np.where(np.isnan(scene.frame.depth), 0, np.round(scene.frame.depth.astype(np.float64) * 1000))
        frame = RGBDFrame(scene.frame.rgb, depth_to_metres(mm.astype(np.uint16)), scene.frame.intrinsics)
        predictions.append(segmenter(frame).labels)
        cm.update(predictions[-1], label_set.to_train_ids(scene.labels))
    assert len(np.unique(np.concatenate([p.ravel() for p in predictions]))) > 1  # not a constant prediction

    report = json.loads((out / "report.json").read_text())
    assert report["synchronized"] == 3 and report["dropped"] == 0 and report["processed"] == 3
    assert set(report["latency_ms"]) >= {"p50", "p95", "max"} and report["latency_ms"]["max"] > 0
    np.testing.assert_array_equal(np.array(report["metrics"]["confusion_matrix"]), cm.matrix)
    assert report["metrics"]["miou"] == pytest.approx(cm.miou(), abs=0)
    assert set(report["metrics"]) >= {"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou"}

    outputs = read_all(out / "output.mcap")
    colour_stamps = [stamp(m) for m in read_all(bag)[COLOR_TOPIC]]
    for name, encoding in (("labels", "mono8"), ("color", "rgb8"), ("overlay", "rgb8"), ("confidence", "32FC1")):
        msgs = outputs[OUTPUT_TOPICS[name]]
        assert [m.encoding for m in msgs] == [encoding] * 3
        assert [stamp(m) for m in msgs] == colour_stamps
    for msg, expected in zip(outputs[OUTPUT_TOPICS["labels"]], predictions):
        np.testing.assert_array_equal(np.frombuffer(msg.data.tobytes(), np.uint8).reshape(48, 64), expected)
    for name in ("report.html", "latency.png", "iou.png", "confusion.png", "overlays.png"):
        assert (out / name).stat().st_size > 0


def test_demo_writes_previews_a_bag_and_a_replay_report(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--frames",
        "2",
        "--size",
        "48x64",
        "--replay-frames",
        "2",
        "--replay-size",
        "48x64",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "random-weight" in printed or "trained checkpoint" in printed
    assert str(out / "replay" / "report.html") in printed
    assert len(list(out.glob("preview_*.png"))) == 2
    report = json.loads((out / "replay" / "report.json").read_text())
    assert report["processed"] == 2 and report["metrics"]["frames"] == 2
    assert len(list((out / "replay" / "overlays").glob("*.png"))) == 2
