"""The semantic point cloud (``~/points``): geometry against the intrinsics, the PointCloud2 layout, node and replay.

Oracles: each point is projected back through the pinhole model (u = fx·x/z + cx, v = fy·y/z + cy) and must land
on the pixel whose label, colour and confidence it carries; messages are decoded with a reader written here from
``fields`` / ``point_step`` alone (numpy structured dtypes, as ``sensor_msgs_py.point_cloud2`` does).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.ros.points import semantic_cloud

# sensor_msgs/PointField datatype → numpy type (the message definition's table)
POINTFIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def read_cloud(msg) -> np.ndarray:
    """A PointCloud2 → structured array (height × width), from its fields, point_step and endianness only."""
    order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype(
        {
            "names": [f.name for f in msg.fields],
            "formats": [order + POINTFIELD_TYPES[f.datatype] for f in msg.fields],
            "offsets": [f.offset for f in msg.fields],
            "itemsize": msg.point_step,
        }
    )
    assert msg.row_step == msg.point_step * msg.width
    data = bytes(msg.data)
    assert len(data) == msg.row_step * msg.height
    return np.frombuffer(data, dtype).reshape(msg.height, msg.width)


def scene(height=30, width=40, seed=0):
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.5, 6.0, (height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.15] = np.nan
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, 40, (height, width)).astype(np.uint8)
    labels[0, 0] = 255
    confidence = rng.random((height, width)).astype(np.float32)
    k = CameraIntrinsics(fx=52.0, fy=47.0, cx=17.3, cy=13.8, width=width, height=height)  # off-centre, fx ≠ fy
    return depth, rgb, labels, confidence, k


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1)


def check_points_land_on_their_pixels(points, depth, rgb, labels, confidence, k, stride):
    u = np.round(k.fx * points["x"] / points["z"] + k.cx).astype(int)
    v = np.round(k.fy * points["y"] / points["z"] + k.cy).astype(int)
    assert np.all(u % stride == 0) and np.all(v % stride == 0)  # only the decimated grid
    np.testing.assert_allclose(points["z"], depth[v, u], rtol=1e-6)
    np.testing.assert_array_equal(points["label"], labels[v, u])
    np.testing.assert_array_equal(unpack_rgb(points["rgb"]), rgb[v, u])
    np.testing.assert_array_equal(points["confidence"], confidence[v, u])
    return u, v


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_points_reproject_onto_their_pixels_and_carry_their_labels(stride):
    depth, rgb, labels, confidence, k = scene()
    cloud = semantic_cloud(depth, k, rgb, labels, confidence, stride=stride)
    assert cloud.height == 1 and cloud.is_dense
    points = cloud.points[0]
    grid = depth[::stride, ::stride]
    assert points.size == np.count_nonzero(np.isfinite(grid))  # every valid pixel of the grid, no invalid one
    u, v = check_points_land_on_their_pixels(points, depth, rgb, labels, confidence, k, stride)
    assert len(set(zip(u.tolist(), v.tolist()))) == points.size


def test_depth_range_and_organized_layout():
    depth, rgb, labels, confidence, k = scene(seed=1)
    ranged = semantic_cloud(depth, k, rgb, labels, confidence, depth_range=(1.0, 4.0)).points[0]
    assert ranged["z"].min() >= 1.0 and ranged["z"].max() <= 4.0
    assert ranged.size == np.count_nonzero((depth >= 1.0) & (depth <= 4.0))
    cloud = semantic_cloud(depth, k, rgb, labels, confidence, stride=2, organized=True)
    assert (cloud.height, cloud.width) == depth[::2, ::2].shape and not cloud.is_dense
    invalid = np.isnan(depth[::2, ::2])
    assert np.isnan(cloud.points["x"][invalid]).all() and np.isnan(cloud.points["z"][invalid]).all()
    np.testing.assert_array_equal(cloud.points["label"], labels[::2, ::2])  # grid kept: labels where they were
    valid_points = cloud.points[~invalid]
    check_points_land_on_their_pixels(valid_points, depth, rgb, labels, confidence, k, 2)
    dense = semantic_cloud(np.full_like(depth, 2.0), k, rgb, labels, confidence, organized=True)
    assert dense.is_dense


def test_inputs_of_another_size_are_refused():
    depth, rgb, labels, confidence, k = scene()
    with pytest.raises(ValueError, match="labels"):
        semantic_cloud(depth, k, rgb, labels[:-1], confidence)
    with pytest.raises(ValueError, match="stride"):
        semantic_cloud(depth, k, rgb, labels, confidence, stride=0)


def test_pointcloud2_fields_and_point_step_decode_with_an_independent_reader():
    pytest.importorskip("sensor_msgs", reason="needs the ROS 2 message wheels (pip install '.[ros]')")
    from std_msgs.msg import Header

    from rgbd_seg_ros.ros.points import point_cloud_message

    depth, rgb, labels, confidence, k = scene(seed=2)
    for organized in (False, True):
        cloud = semantic_cloud(depth, k, rgb, labels, confidence, stride=2, organized=organized)
        header = Header(frame_id="depth_optical")
        msg = point_cloud_message(cloud, header)
        assert msg.header.frame_id == "depth_optical" and msg.is_dense == cloud.is_dense
        assert [(f.name, f.datatype) for f in msg.fields] == [
            ("x", 7), ("y", 7), ("z", 7), ("rgb", 7), ("label", 4), ("confidence", 7)
        ]  # fmt: skip
        decoded = read_cloud(msg)
        assert decoded.shape == (cloud.height, cloud.width)
        for name in ("x", "y", "z", "rgb", "label", "confidence"):
            np.testing.assert_array_equal(decoded[name], cloud.points[name])


# -- replay ---------------------------------------------------------------------------------------------------------
class DepthBands:
    """Stand-in segmenter: label = depth band (0.5 m steps), 255 without depth; confidence = depth / 10."""

    def __init__(self):
        from rgbd_seg_ros.labels import get_label_set

        self.label_set = get_label_set("nyuv2-40")
        self.model_name, self.device = "bands", "cpu"

    def __call__(self, frame):
        labels = np.where(np.isnan(frame.depth), 255, np.clip(np.nan_to_num(frame.depth) // 0.5, 0, 39))
        confidence = (np.nan_to_num(frame.depth) / 10).astype(np.float32)
        return SimpleNamespace(labels=labels.astype(np.uint8), confidence=confidence, timings={"total": 0.0})


def test_replay_writes_the_point_cloud_with_the_depth_stamp(tmp_path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from rgbd_seg_ros.bag import POINTS_TOPIC, dataset_samples, write_dataset_bag
    from rgbd_seg_ros.replay import OUTPUT_BAG, ReplayOptions, replay

    bag = tmp_path / "in.mcap"
    write_dataset_bag(bag, dataset_samples("synthetic", frames=2, size=(24, 32)))
    options = ReplayOptions(progress=False, label_topic="", points_stride=2)
    replay(bag, DepthBands(), tmp_path / "out", options)
    store = get_typestore(Stores.ROS2_JAZZY)
    with Reader(bag) as reader:
        depth_stamps = [
            store.deserialize_cdr(raw, c.msgtype).header.stamp
            for c, _, raw in reader.messages([c for c in reader.connections if c.topic == "/camera/depth/image_raw"])
        ]
    with Reader(tmp_path / "out" / OUTPUT_BAG) as reader:
        conns = [c for c in reader.connections if c.topic == POINTS_TOPIC]
        assert conns and conns[0].msgtype == "sensor_msgs/msg/PointCloud2"
        clouds = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(conns)]
    assert len(clouds) == 2
    for msg in clouds:
        assert any((msg.header.stamp.sec, msg.header.stamp.nanosec) == (s.sec, s.nanosec) for s in depth_stamps)
        points = read_cloud(msg)[0]
        assert points.size > 0
        # DepthBands' label is the depth band: the cloud's labels agree with its own z.
        np.testing.assert_array_equal(points["label"], np.clip(points["z"] // 0.5, 0, 39).astype(np.uint16))


# -- the node ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def ros():
    pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
    from ros_harness import RosHarness, domain_id

    harness = RosHarness(domain_id(32))
    yield harness
    harness.shutdown()


@pytest.mark.ros
def test_node_publishes_points_only_while_subscribed_with_the_depth_header(ros):
    from ros_harness import DepthSegmenter, color_msg, depth_msg, info_msg, make_scene, wait_for, wait_matched
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    rgb, depth, k = make_scene(seed=3)
    segmenter = DepthSegmenter()
    node = ros.start_node(segmenter, points_stride=2)
    pubs = [
        ros.publisher(t, n)
        for t, n in ((Image, "color/image"), (Image, "depth/image"), (CameraInfo, "depth/camera_info"))
    ]
    wait_matched(*pubs)
    t0 = 1_700_000_000_000_000_000

    def send(t):
        for pub, msg in zip(pubs, (color_msg(rgb, t), depth_msg(depth, t + 3_000_000), info_msg(k, t + 3_000_000))):
            pub.publish(msg)

    send(t0)  # nobody listens to any output: the node does not segment
    assert not wait_for(lambda: segmenter.frames, 0.5)
    clouds = ros.collect(PointCloud2, "rgbd_seg/points")
    assert wait_for(lambda: node._points_pub.get_subscription_count() > 0)
    send(t0 + 50_000_000)
    assert wait_for(lambda: clouds, 10.0), "no ~/points"
    msg = clouds[-1]
    assert msg.header.frame_id == "depth_optical"  # the depth image's frame and stamp
    assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t0 + 53_000_000
    points = read_cloud(msg)[0]
    frame = segmenter.frames[-1]  # DepthSegmenter: labels are the depth bands of the frame it saw, confidence 0.75
    expected_labels = np.where(np.isnan(frame.depth), 255, np.clip(np.nan_to_num(frame.depth) // 0.5, 0, 39))
    confidence = np.full(frame.depth.shape, 0.75, np.float32)
    check_points_land_on_their_pixels(points, frame.depth, frame.rgb, expected_labels, confidence, frame.intrinsics, 2)
    assert points.size == np.count_nonzero(np.isfinite(frame.depth[::2, ::2]))
