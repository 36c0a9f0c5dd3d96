"""Replay evaluation: the node's drop policy, accuracy equal to direct evaluation, outputs, interruption,
rejected sets, output folders that hold another run."""

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

from rgbd_seg_ros.bag import (
    COLOR_TOPIC,
    DEPTH_INFO_TOPIC,
    DEPTH_TOPIC,
    OUTPUT_TOPICS,
    BagWriter,
    dataset_samples,
    write_dataset_bag,
)
from rgbd_seg_ros.cli import main
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.replay import REPLAY_FILES, LiveScheduler, ReplayIncomplete, ReplayOptions, format_summary, replay
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


T0 = 1_700_000_000_000_000_000


def camera_bag(path: Path, depth_sizes: list[tuple[int, int]], color_size=(30, 40)) -> Path:
    """One set per entry: a grey colour image of ``color_size`` and 1 m depth (+ CameraInfo) of that (H, W)."""
    with BagWriter(path) as writer:
        for i, (h, w) in enumerate(depth_sizes):
            stamp = T0 + i * 100_000_000
            writer.write_image(COLOR_TOPIC, np.full((*color_size, 3), 128, np.uint8), "rgb8", stamp, "cam")
            writer.write_image(DEPTH_TOPIC, np.full((h, w), 1000, np.uint16), "16UC1", stamp, "cam")
            writer.write_camera_info(DEPTH_INFO_TOPIC, CameraIntrinsics(w, w, w / 2, h / 2, w, h), stamp, "cam")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    assert r.synchronized == 8 and r.dropped > 0
    assert r.processed + r.dropped == r.synchronized
    assert r.end_to_end_ms.max >= r.latency_ms.max  # waiting adds to processing time
    labels = read_all(tmp_path / "out" / "output.mcap")[OUTPUT_TOPICS["labels"]]
    assert len(labels) == r.processed
    offline = replay(bag, FakeSegmenter(delay=0.03), tmp_path / "offline", ReplayOptions(progress=False)).report
    assert offline.dropped == 0 and offline.processed == 8


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
    metrics = report.metrics
    assert metrics.frames == 3 and metrics.frames_without_labels == 0
    np.testing.assert_array_equal(np.array(metrics.confusion_matrix), cm.matrix)
    assert metrics.unit == "percent" and metrics.miou == pytest.approx(100 * cm.miou())  # percent (0–100)
    assert metrics.pixel_accuracy == pytest.approx(100 * cm.pixel_accuracy())
    none = replay(bag, FakeSegmenter(), tmp_path / "none", ReplayOptions(label_topic="", progress=False)).report
    assert none.metrics is None and none.processed == 3


def broken_bag(bag: Path, broken: Path) -> Path:
    """``bag`` with a truncated colour message appended: readable up to its last message."""
    with Reader(bag) as reader, Writer(broken, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=TYPES) for c in reader.connections}
        colour = next(c for c in reader.connections if c.topic == COLOR_TOPIC)
        last = None
        for conn, t, raw in reader.messages():
            writer.write(conns[conn.id], t, raw)
            last = t
        writer.write(conns[colour.id], last + 1, b"\x00\x01\x00\x00\xff\xff")  # a truncated colour message
    return broken


def test_a_bag_corrupt_part_way_still_leaves_the_outputs_of_the_sets_before(tmp_path):
    broken = broken_bag(synthetic_bag(tmp_path / "bag", frames=3), tmp_path / "broken")
    with pytest.raises(ReplayIncomplete, match="cover the 3 sets before it") as caught:
        replay(broken, FakeSegmenter(), tmp_path / "out", ReplayOptions(progress=False))
    assert caught.value.result.report.processed == 3
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
    assert report["metrics"]["miou"] == pytest.approx(100 * cm.miou(), rel=1e-12)  # percent
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


def test_demo_writes_previews_a_bag_and_a_replay_report_and_replaces_them_on_a_rerun(tmp_path, capsys):
    out = tmp_path / "demo"

    def demo(frames: int, replay_frames: int) -> int:
        sizes = ["--size", "48x64", "--replay-size", "48x64"]
        return main(["demo", "--out", str(out), "--frames", str(frames), "--replay-frames", str(replay_frames), *sizes])

    assert demo(3, 2) == 0
    printed = capsys.readouterr().out
    assert "random-weight" in printed or "trained checkpoint" in printed
    assert str(out / "replay" / "report.html") in printed
    assert len(list(out.glob("preview_*.png"))) == 3
    report = json.loads((out / "replay" / "report.json").read_text())
    assert report["processed"] == 2 and report["metrics"]["frames"] == 2
    assert len(list((out / "replay" / "overlays").glob("*.png"))) == 2
    # Positive control: every labelled pixel of the two replayed scenes was scored (recomputed from the scenes).
    gen, label_set = SceneGenerator(48, 64, seed=0), get_label_set("synthetic")
    labelled = sum(int((label_set.to_train_ids(gen.sample(i).labels) != 255).sum()) for i in range(2))
    assert labelled > 0 and np.array(report["metrics"]["confusion_matrix"]).sum() == labelled

    # A second demo in the same folder replaces its own files: no stale previews, overlays or report.
    assert demo(1, 1) == 0
    assert [p.name for p in out.glob("preview_*.png")] == ["preview_000.png"]
    report = json.loads((out / "replay" / "report.json").read_text())
    assert report["processed"] == 1 and len(list((out / "replay" / "overlays").glob("*.png"))) == 1
    assert not [p for p in (out / "replay").iterdir() if p.name.startswith(".")]  # no staging left behind


# -- rejected sets and output folders -------------------------------------------------------------------------------
def test_depth_of_another_aspect_ratio_rejects_every_set_and_says_why(tmp_path):
    bag = camera_bag(tmp_path / "bag", [(40, 40)] * 3)  # colour 30x40 (4:3), depth 40x40 (1:1)
    segmenter = FakeSegmenter()
    result = replay(bag, segmenter, tmp_path / "out", ReplayOptions(progress=False))
    r = result.report
    assert (r.synchronized, r.processed, r.rejected) == (3, 0, 3)
    ((reason, count),) = r.rejected_reasons.items()
    assert count == 3 and "another aspect ratio" in reason and "40x40" in reason
    summary = format_summary(result)
    assert f"3 × {reason}" in summary and "replayed 0 of 3" in summary
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Nothing was processed" in page and "3 × depth is 40x40" in page
    assert segmenter.calls == 0 and len(read_all(tmp_path / "out" / "output.mcap")) == 0


def test_partial_rejection_counts_each_reason_and_processes_the_rest(tmp_path):
    bag = camera_bag(tmp_path / "bag", [(30, 40), (40, 40), (15, 20), (40, 40)])  # half size is fine (4:3)
    r = replay(bag, FakeSegmenter(), tmp_path / "out", ReplayOptions(progress=False)).report
    assert (r.processed, r.rejected) == (2, 2) and list(r.rejected_reasons.values()) == [2]
    assert len(read_all(tmp_path / "out" / "output.mcap")[OUTPUT_TOPICS["labels"]]) == 2
    assert any(line.startswith("2 × depth is 40x40") for line in r.unprocessed_reasons())


def test_an_output_folder_with_another_run_is_refused_and_overwrite_replaces_exactly_its_files(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=3)
    out = tmp_path / "out"
    replay(bag, FakeSegmenter(), out, ReplayOptions(progress=False))  # with labels: iou.png, confusion.png, overlays
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert {"iou.png", "confusion.png", "overlays.png"} <= set(before)
    with pytest.raises(FileExistsError, match="--overwrite"):
        replay(bag, FakeSegmenter(), out, ReplayOptions(progress=False))
    assert snapshot(out) == before  # nothing touched

    result = replay(bag, FakeSegmenter(), out, ReplayOptions(label_topic="", samples=0, progress=False), overwrite=True)
    after = snapshot(out)
    assert after["notes.txt"] == b"mine"  # not the replay's: left alone
    assert not {"iou.png", "confusion.png", "overlays.png"} & set(after) and not (out / "overlays").exists()
    assert json.loads(after["report.json"])["metrics"] is None and result.report.metrics is None
    assert set(after) == {"notes.txt", "output.mcap", "report.json", "report.html", "latency.png"}
    assert set(REPLAY_FILES) >= set(after) - {"notes.txt"}
    assert all((out / name).stat().st_mode & 0o777 == 0o666 & ~_umask() for name in after)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_report_json_keeps_every_key_its_readers_use(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=2)
    result = replay(bag, FakeSegmenter(), tmp_path / "out", ReplayOptions(progress=False))
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == json.loads(json.dumps(result.report.to_json()))
    old_keys = (
        "bag storage model label_set device topics sync frames_per_topic synchronized unmatched queue_overflow "
        "rejected rejected_reasons processed dropped realtime_rate latency_ms end_to_end_ms throughput_fps "
        "wall_time_s interrupted error metrics outputs files"
    ).split()
    assert set(data) >= set(old_keys)
    assert set(data["latency_ms"]) >= {"p50", "p95", "max", "mean", "stages"}
    assert set(data["metrics"]) >= {"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "confusion_matrix"}
    assert data["score_unit"] == data["metrics"]["unit"] == "percent" and 0 <= data["metrics"]["miou"] <= 100


def test_replay_outputs_are_the_rendered_labels(tmp_path):
    bag = synthetic_bag(tmp_path / "bag", frames=1, size=(24, 32))
    replay(bag, FakeSegmenter(), tmp_path / "out", ReplayOptions(progress=False, overlay_alpha=0.25))
    out = read_all(tmp_path / "out" / "output.mcap")
    labels = np.frombuffer(out[OUTPUT_TOPICS["labels"]][0].data.tobytes(), np.uint8).reshape(24, 32)
    rgb = np.frombuffer(read_all(bag)[COLOR_TOPIC][0].data.tobytes(), np.uint8).reshape(24, 32, 3)
    palette = get_label_set("synthetic").palette
    colour = np.frombuffer(out[OUTPUT_TOPICS["color"]][0].data.tobytes(), np.uint8).reshape(24, 32, 3)
    np.testing.assert_array_equal(colour, palette[labels])
    blended = np.frombuffer(out[OUTPUT_TOPICS["overlay"]][0].data.tobytes(), np.uint8).reshape(24, 32, 3)
    expected = 0.75 * rgb.astype(np.float64) + 0.25 * palette[labels]
    assert np.abs(blended - expected).max() <= 1.0  # rounding
    assert set(np.unique(labels)) == {0, 1}  # the stand-in model's walls and floor: a non-trivial image


def test_exit_codes_of_replay_runs(tmp_path, checkpoint, capsys):
    """0 all processed, 1 some rejected or a bag corrupt part-way, 3 everything rejected; 2 for a second run into
    the same folder."""
    run = ["--checkpoint", str(checkpoint), "--backend", "torch", "--device", "cpu"]
    good = camera_bag(tmp_path / "good", [(30, 40)] * 2)
    mixed = camera_bag(tmp_path / "mixed", [(30, 40), (40, 40)])
    bad = camera_bag(tmp_path / "bad", [(40, 40)] * 2)
    assert main(["replay", str(good), "--out", str(tmp_path / "o0"), *run]) == 0
    assert main(["replay", str(mixed), "--out", str(tmp_path / "o1"), *run]) == 1
    assert "1 of 2 synchronised sets rejected" in capsys.readouterr().err
    assert main(["replay", str(bad), "--out", str(tmp_path / "o3"), *run]) == 3
    err = capsys.readouterr().err
    assert "error: nothing processed: 2 × depth is 40x40" in err
    assert main(["replay", str(good), "--out", str(tmp_path / "o0"), *run]) == 2
    assert "holds another replay run" in capsys.readouterr().err
    assert main(["replay", str(good), "--out", str(tmp_path / "o0"), "--overwrite", *run]) == 0
    broken = broken_bag(good, tmp_path / "broken")
    assert main(["replay", str(broken), "--out", str(tmp_path / "ob"), *run]) == 1
    captured = capsys.readouterr()
    assert "error: cannot read the bag" in captured.err and "cover the 2 sets before it" in captured.err
    assert "replayed 2 of 2" in captured.out and (tmp_path / "ob" / "report.html").is_file()
