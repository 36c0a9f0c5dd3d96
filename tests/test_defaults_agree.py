"""With default options, every entry point runs the bundled checkpoint the same way (issue 15: one rule).

The checkpoint records the size it was trained at (120×160). The same two synthetic test rooms go through
`training/evaluate.py` (a dataset folder), `rgbd-seg replay` (a rosbag2 of those frames), `Segmenter.from_checkpoint`
and the ROS node, each with no options: the confusion matrices of evaluate and replay are equal, both equal the one
computed here from `Segmenter.from_checkpoint`'s labels, and the node publishes those labels.
"""

import json

import numpy as np
import pytest
from entry_points import rgbd_seg, run, script

from rgbd_seg_ros import data_path
from rgbd_seg_ros.bag import train_to_dataset_ids, write_dataset_bag
from rgbd_seg_ros.datasets import build_dataset
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.synthetic import write_dataset

CHECKPOINT = data_path("sgnet_r18_synthetic.safetensors")
SIZE = (240, 320)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """Two synthetic test rooms as a dataset folder and as a camera recording of the same frames."""
    base = tmp_path_factory.mktemp("agree")
    root = write_dataset(base / "rooms", n_train=1, n_test=2, size=SIZE, seed=7)
    dataset = build_dataset("synthetic", root, "test")
    label_set = get_label_set("synthetic")
    write_dataset_bag(base / "bag", ((s.frame, train_to_dataset_ids(s.labels, label_set)) for s in dataset))
    return base, root, dataset


@pytest.fixture(scope="module")
def library(rooms):
    """The library path with default options: its labels per frame and their confusion matrix."""
    _, _, dataset = rooms
    segmenter = Segmenter.from_checkpoint(CHECKPOINT)
    assert segmenter.input_size == (120, 160), "the checkpoint's stored size must be the default"
    matrix = ConfusionMatrix(segmenter.label_set.num_classes)
    labels = []
    for sample in dataset:
        predicted = segmenter(sample.frame).labels
        matrix.update(predicted, sample.labels)
        labels.append(predicted)
    return labels, np.asarray(matrix.matrix)


def test_evaluate_and_replay_agree_with_the_library(rooms, library):
    base, root, _ = rooms
    _, matrix = library
    evaluated = run(script("training/evaluate.py", "--checkpoint", str(CHECKPOINT), "--dataset", "synthetic",
                           "--root", str(root), "--out", str(base / "eval")))  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    replayed = run(rgbd_seg("replay", str(base / "bag"), "--checkpoint", str(CHECKPOINT), "--out", str(base / "rep")))
    assert replayed.returncode == 0, replayed.stderr
    metrics = json.loads((base / "eval" / "metrics.json").read_text())
    report = json.loads((base / "rep" / "report.json").read_text())
    np.testing.assert_array_equal(np.asarray(metrics["confusion_matrix"]), matrix)
    np.testing.assert_array_equal(np.asarray(report["metrics"]["confusion_matrix"]), matrix)
    assert metrics["miou"] == pytest.approx(report["metrics"]["miou"])
    assert metrics["protocol"]["input_size"] == [120, 160]


def test_node_publishes_the_library_labels(rooms, library):
    pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
    from ros_harness import RosHarness, domain_id, info_msg, wait_for, wait_matched
    from sensor_msgs.msg import CameraInfo, Image

    from rgbd_seg_ros.frames import metres_to_millimetres_u16
    from rgbd_seg_ros.ros.convert import image_from_array, image_to_array

    _, _, dataset = rooms
    expected, _ = library
    frame = dataset[0].frame
    ros = RosHarness(domain_id(5))
    try:
        node = ros.start_node(None, checkpoint=str(CHECKPOINT))
        assert node.segmenter.input_size == (120, 160)
        labels = ros.collect(Image, "rgbd_seg/labels")
        pubs = [ros.publisher(Image, "color/image"), ros.publisher(Image, "depth/image"),
                ros.publisher(CameraInfo, "depth/camera_info")]  # fmt: skip
        wait_matched(*pubs, node.output_publishers["labels"])
        stamp = 1_700_000_000_000_000_000
        color = image_from_array(frame.rgb, "rgb8")
        depth = image_from_array(metres_to_millimetres_u16(frame.depth), "16UC1")
        for msg in (color, depth):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        pubs[0].publish(color)
        pubs[1].publish(depth)
        pubs[2].publish(info_msg(frame.intrinsics, stamp, "camera"))
        assert wait_for(lambda: len(labels) == 1, timeout=60)
        np.testing.assert_array_equal(image_to_array(labels[0]), expected[0])
    finally:
        ros.shutdown()
