"""Compressed camera streams (image_transport's ``compressed`` and ``compressedDepth``): decoding, bags, replay, node.

Oracles: compressedDepth messages are assembled here byte by byte (12-byte header packed with ``struct``, PNG from
``cv2.imencode``), so the decoder is checked against the format, not against its own encoder; JPEG colour is
compared with OpenCV's own decoding of the same bytes (what image_transport's subscriber does).
"""

from __future__ import annotations

import struct
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from rgbd_seg_ros.bag import (
    COLOR_TOPIC,
    DEPTH_TOPIC,
    BagReader,
    BagWriter,
    InputTopics,
    SyncedSet,
    dataset_samples,
    frame_of,
    read_synchronized,
    write_dataset_bag,
)
from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.ros.compressed import (
    COMPRESSED_IMAGE_TYPE,
    CompressedImageError,
    decode_color,
    decode_depth,
    decode_inputs,
    encode_color,
    encode_depth,
    message_encoding,
    transport_topic,
)
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer

RNG = np.random.default_rng(7)


def png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def depth_packet(image: np.ndarray, quant_a: float = 0.0, quant_b: float = 0.0, kind: int = 0) -> bytes:
    """compressedDepth's layout: int32 compressionFormat, float32 depthQuantA, float32 depthQuantB, then a PNG."""
    return struct.pack("<iff", kind, quant_a, quant_b) + png(image)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """A colour image JPEG keeps close (gradients, not noise)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=2).astype(np.uint8)


# -- decoding -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt", ["16UC1; compressedDepth png", "16UC1; compressedDepth", "16UC1", "mono16; compressedDepth"]
)
def test_compressed_depth_16uc1_decodes_to_the_exact_millimetres(fmt):
    mm = RNG.integers(0, 12000, (30, 40)).astype(np.uint16)
    mm[RNG.random(mm.shape) < 0.1] = 0
    pixels, encoding = decode_depth(depth_packet(mm), fmt)
    assert encoding == "16UC1" and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, mm)


def test_compressed_depth_32fc1_is_quantised_inverse_depth():
    q = RNG.integers(1, 65535, (20, 30)).astype(np.uint16)
    q[RNG.random(q.shape) < 0.1] = 0
    quant_a, quant_b = 10100.0, -9.5  # what image_transport writes for depth_quantization 100, depth_max ~10 m
    metres, encoding = decode_depth(depth_packet(q, quant_a, quant_b), "32FC1; compressedDepth png")
    assert encoding == "32FC1" and metres.dtype == np.float32
    expected = np.float32(quant_a) / (q.astype(np.float32) - np.float32(quant_b))  # float32, as the C++ plugin
    np.testing.assert_array_equal(np.isnan(metres), q == 0)
    np.testing.assert_array_equal(metres[q > 0], expected[q > 0])


def test_32fc1_round_trip_stays_within_the_inverse_depth_quantisation():
    depth = RNG.uniform(0.3, 12.0, (40, 50)).astype(np.float32)
    depth[0, :5] = np.nan
    fmt, data = encode_depth(depth)  # depth_max 10 m, depth_quantization 100 (image_transport's defaults)
    assert fmt == "32FC1; compressedDepth png"
    decoded, _ = decode_depth(data, fmt)
    kept = np.isfinite(depth) & (depth < 10.0)
    assert np.isnan(decoded[~kept]).all()  # invalid and beyond depth_max → no measurement
    # One quantisation step of q = A/d + B is Δd ≈ d²/A (A = 100 · 101): the error bound of the format.
    bound = depth[kept] ** 2 / 10100.0 + 1e-5
    assert np.all(np.abs(decoded[kept] - depth[kept]) <= bound)


def test_16uc1_encoding_drops_depth_beyond_depth_max_like_image_transport():
    mm = np.array([[0, 500, 10000, 10001, 65000]], np.uint16)
    fmt, data = encode_depth(mm, depth_max=10.0)
    decoded, _ = decode_depth(data, fmt)
    np.testing.assert_array_equal(decoded, [[0, 500, 10000, 0, 0]])


def test_jpeg_colour_decodes_as_opencv_decodes_the_same_bytes():
    rgb = smooth_rgb()
    fmt, data = encode_color(rgb, "jpeg", quality=90)
    assert fmt == "rgb8; jpeg compressed bgr8"
    decoded = decode_color(data, fmt)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]  # BGR → RGB
    np.testing.assert_array_equal(decoded, reference)
    assert np.abs(decoded.astype(int) - rgb).mean() < 3  # and it is the image that was sent


def test_png_colour_is_lossless_and_channel_order_follows_the_format():
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    fmt, data = encode_color(rgb, "png")
    np.testing.assert_array_equal(decode_color(data, fmt), rgb)
    stored_rgb = png(rgb)  # channels written in R, G, B order where OpenCV expects B, G, R
    np.testing.assert_array_equal(decode_color(stored_rgb, "rgb8; png compressed rgb8"), rgb)
    np.testing.assert_array_equal(decode_color(png(rgb[:, :, ::-1].copy()), "png"), rgb)  # old format: BGR
    grey = rgb[:, :, 0].copy()
    np.testing.assert_array_equal(decode_color(png(grey), "mono8; png compressed "), np.repeat(grey[:, :, None], 3, 2))


def test_encodings_declared_by_compressed_formats_and_transport_topics():
    msg = type("CompressedImage", (), {"format": "rgb8; jpeg compressed bgr8", "header": None, "data": b""})()
    assert message_encoding(msg) == "rgb8"
    msg.format = "jpeg"  # old publishers
    assert message_encoding(msg) == "bgr8"
    msg.format = "32FC1; compressedDepth png"
    assert message_encoding(msg) == "32FC1"
    assert transport_topic("/cam/color/image_raw", "color", "compressed") == "/cam/color/image_raw/compressed"
    assert transport_topic("depth/image", "depth", "compressed") == "depth/image/compressedDepth"
    assert transport_topic("depth/image", "depth", "raw") == "depth/image"
    with pytest.raises(ValueError, match="theora"):
        transport_topic("depth/image", "depth", "theora")


MM = RNG.integers(1, 5000, (12, 16)).astype(np.uint16)
GOOD = depth_packet(MM)


@pytest.mark.parametrize(
    ("data", "fmt", "match"),
    [
        (GOOD[: len(GOOD) // 2], "16UC1; compressedDepth png", "cannot decode"),  # truncated PNG
        (b"\x00" * 12 + b"not a png at all", "16UC1; compressedDepth png", "no PNG after the 12-byte header"),
        (GOOD[12:], "16UC1; compressedDepth png", "no PNG after the 12-byte header"),  # header missing
        (GOOD[:7], "16UC1; compressedDepth png", "12-byte header"),
        (GOOD, "16UC1; compressedDepth rvl", "only PNG"),
        (GOOD, "16UC1; theora", "not compressedDepth"),
        (GOOD, "rgb8; compressedDepth png", "not 16UC1 or 32FC1"),
        (depth_packet(MM.astype(np.uint8)), "16UC1; compressedDepth png", "16-bit"),
        (depth_packet(MM, 0.0, 0.0), "32FC1; compressedDepth png", "not a 32FC1 inverse-depth"),
    ],
)
def test_malformed_compressed_depth_raises_one_clear_error(data, fmt, match):
    with pytest.raises(CompressedImageError, match=match):
        decode_depth(data, fmt)


@pytest.mark.parametrize(("data", "match"), [(b"", "no data"), (b"\xff\xd8\xff garbage", "cannot decode")])
def test_malformed_compressed_colour_raises_one_clear_error(data, match):
    with pytest.raises(CompressedImageError, match=match):
        decode_color(data, "rgb8; jpeg compressed bgr8")


def test_decode_inputs_names_the_input_that_failed():
    header = object()
    color = type("CompressedImage", (), {})()
    color.header, color.format, color.data = header, *encode_color(smooth_rgb(), "png")
    depth = type("CompressedImage", (), {})()
    depth.header, depth.format, depth.data = header, "16UC1; compressedDepth png", GOOD[:20]
    with pytest.raises(CompressedImageError) as info:
        decode_inputs(color, depth)
    assert info.value.role == "depth"


# -- bags and replay ---------------------------------------------------------------------------------------------
def _frames(bag, topics=None):
    """Every synchronised set of a bag as (frame, synced) through the replay's reading path."""
    with BagReader(bag) as reader:
        from rgbd_seg_ros.bag import resolve_input_topics

        chosen = resolve_input_topics(reader, topics or InputTopics())
        sync = ApproximateTimeSynchronizer(3, 10, 0.02)
        return [
            (frame_of(item)[0], item) for item in read_synchronized(reader, chosen, sync) if isinstance(item, SyncedSet)
        ]


def test_make_bag_compressed_writes_image_transport_topics_that_replay_decodes(tmp_path):
    raw, compressed = tmp_path / "raw.mcap", tmp_path / "compressed.mcap"
    write_dataset_bag(raw, dataset_samples("synthetic", frames=3, size=(48, 64)))
    counts = write_dataset_bag(compressed, dataset_samples("synthetic", frames=3, size=(48, 64)), compressed=True)
    assert counts[COLOR_TOPIC + "/compressed"] == counts[DEPTH_TOPIC + "/compressedDepth"] == 3
    with BagReader(compressed) as reader:
        assert reader.topics[COLOR_TOPIC + "/compressed"].msgtype == "sensor_msgs/msg/CompressedImage"
        assert COLOR_TOPIC not in reader.topics and DEPTH_TOPIC not in reader.topics
    raw_frames, compressed_frames = _frames(raw), _frames(compressed)
    assert len(raw_frames) == len(compressed_frames) == 3
    for (a, _), (b, synced) in zip(raw_frames, compressed_frames):
        np.testing.assert_array_equal(np.isnan(a.depth), np.isnan(b.depth))  # PNG depth: lossless
        np.testing.assert_array_equal(a.depth[~np.isnan(a.depth)], b.depth[~np.isnan(b.depth)])
        jpeg = np.frombuffer(bytes(synced.color.data), np.uint8)
        np.testing.assert_array_equal(b.rgb, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])
        assert (a.stamp_ns, a.frame_id) == (b.stamp_ns, b.frame_id)


def test_make_bag_command_writes_compressed_topics(tmp_path, capsys):
    from rgbd_seg_ros.cli import main

    out = tmp_path / "cam.mcap"
    assert main(["make-bag", "--frames", "2", "--size", "24x32", "--out", str(out), "--compressed"]) == 0
    assert f"{DEPTH_TOPIC}/compressedDepth: 2 messages" in capsys.readouterr().out
    with BagReader(out) as reader:
        types = {t: i.msgtype for t, i in reader.topics.items()}
    assert types[COLOR_TOPIC + "/compressed"] == types[DEPTH_TOPIC + "/compressedDepth"] == COMPRESSED_IMAGE_TYPE
    assert len(_frames(out)) == 2


def test_topics_named_explicitly_may_be_compressed_ones(tmp_path):
    bag = tmp_path / "c.mcap"
    write_dataset_bag(bag, dataset_samples("synthetic", frames=2, size=(24, 32)), compressed=True)
    named = InputTopics(COLOR_TOPIC + "/compressed", DEPTH_TOPIC + "/compressedDepth")
    assert len(_frames(bag, named)) == 2


def test_replay_of_a_compressed_bag_skips_malformed_depth_and_counts_it(tmp_path):
    from rgbd_seg_ros.replay import ReplayOptions, replay

    bag = tmp_path / "bad.mcap"
    k = CameraIntrinsics.nyu_kinect(32, 24)
    rgb = smooth_rgb(24, 32)
    mm = np.full((24, 32), 2000, np.uint16)
    with BagWriter(bag) as writer:
        for i in range(4):
            t = 1_700_000_000_000_000_000 + i * 33_333_333
            writer.write_compressed_image(COLOR_TOPIC + "/compressed", *encode_color(rgb), t, "cam")
            fmt, data = encode_depth(mm)
            writer.write_compressed_image(
                DEPTH_TOPIC + "/compressedDepth", fmt, data[:40] if i == 1 else data, t, "cam"
            )
            writer.write_camera_info("/camera/depth/camera_info", k, t, "cam")
    report = replay(bag, NearFar(), tmp_path / "out", ReplayOptions(progress=False, label_topic="")).report
    assert report.processed == 3
    assert report.rejected == 1 and "compressedDepth" in next(iter(report.rejected_reasons))


class NearFar:
    """Stand-in segmenter: class 1 where depth is under 3 m, else 0."""

    label_set = get_label_set("synthetic")
    model_name, device = "near-far", "cpu"

    def __call__(self, frame):
        labels = np.where(frame.depth < 3, 1, 0).astype(np.uint8)
        confidence = np.ones(labels.shape, np.float32)
        return SimpleNamespace(labels=labels, confidence=confidence, timings={"total": 0.0})


# -- the node -----------------------------------------------------------------------------------------------------
@pytest.fixture
def ros():
    pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
    from ros_harness import RosHarness, domain_id

    harness = RosHarness(domain_id(31))
    yield harness
    harness.shutdown()


def _compressed_msg(fmt: str, data: bytes, t_ns: int, frame_id: str):
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


@pytest.mark.ros
def test_node_subscribes_to_compressed_topics_and_decodes_on_the_worker(ros):
    from ros_harness import DepthSegmenter, info_msg, make_scene, wait_for, wait_matched
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    rgb, depth, k = make_scene()
    segmenter = DepthSegmenter()
    node = ros.start_node(segmenter, **{"input_transport.color": "compressed", "input_transport.depth": "compressed"})
    log = []
    node._log = type("Log", (), {"__getattr__": lambda self, lv: lambda text, **_: log.append((lv, str(text)))})()
    color_pub = ros.publisher(CompressedImage, "color/image/compressed")
    depth_pub = ros.publisher(CompressedImage, "depth/image/compressedDepth")
    info_pub = ros.publisher(CameraInfo, "depth/camera_info")
    labels = ros.collect(Image, "rgbd_seg/labels")
    wait_matched(color_pub, depth_pub, info_pub)
    assert wait_for(lambda: node.output_publishers["labels"].get_subscription_count() > 0)
    mm = np.nan_to_num(np.round(depth * 1000), nan=0).astype(np.uint16)
    color_fmt, color_data = encode_color(rgb, "jpeg")
    depth_fmt, depth_data = encode_depth(mm)
    t0 = 1_700_000_000_000_000_000

    def send(t, depth_bytes=depth_data):
        color_pub.publish(_compressed_msg(color_fmt, color_data, t, "color_optical"))
        depth_pub.publish(_compressed_msg(depth_fmt, depth_bytes, t + 3_000_000, "depth_optical"))
        info_pub.publish(info_msg(k, t + 3_000_000))

    for i in range(2):  # a truncated compressedDepth: reported once, skipped, nothing published for it
        send(t0 + i * 40_000_000, depth_data[: len(depth_data) // 2])
        time.sleep(0.2)
    assert not labels
    send(t0 + 100_000_000)
    assert wait_for(lambda: labels, 10.0), "no output from compressed input"
    errors = [text for level, text in log if level == "error"]
    assert len(errors) == 1 and "compressedDepth" in errors[0] and "depth/image/compressedDepth" in errors[0]
    frame = segmenter.frames[-1]
    np.testing.assert_array_equal(frame.rgb, cv2.imdecode(np.frombuffer(color_data, np.uint8), 1)[:, :, ::-1])
    np.testing.assert_array_equal(np.isnan(frame.depth), mm == 0)  # compressedDepth PNG: exact millimetres
    np.testing.assert_allclose(frame.depth[mm > 0], mm[mm > 0] / 1000.0, rtol=0, atol=1e-6)
    msg = labels[-1]
    assert msg.header.frame_id == "color_optical" and msg.header.stamp.nanosec == 100_000_000 % 1_000_000_000
