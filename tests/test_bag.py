"""rosbag2 I/O without ROS: make-bag output, both storage formats, synchronisation as the node pairs, bad bags,
no half-written bags, 16-bit depth at its limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from rgbd_seg_ros.bag import (
    CAMERA_INFO_DELAY_NS,
    COLOR_INFO_TOPIC,
    COLOR_TOPIC,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SLOP,
    DEPTH_INFO_TOPIC,
    DEPTH_TOPIC,
    LABEL_TOPIC,
    BagReader,
    BagWriter,
    InputTopics,
    SyncedSet,
    image_message,
    read_synchronized,
    train_to_dataset_ids,
    write_dataset_bag,
)
from rgbd_seg_ros.cli import main
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres, metres_to_millimetres_u16
from rgbd_seg_ros.labels import available_label_sets, get_label_set
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer
from rgbd_seg_ros.synthetic import SceneGenerator

ROOT = Path(__file__).resolve().parents[1]
TYPES = get_typestore(Stores.ROS2_JAZZY)  # another distro's definitions than the package's: same wire format
MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def read_all(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic → [(bag timestamp, message)], read with rosbags directly."""
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, TYPES.deserialize_cdr(raw, conn.msgtype)))
    return out


def stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def pixels(msg, dtype, channels=1) -> np.ndarray:
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    assert msg.step == msg.width * channels * np.dtype(dtype).itemsize
    return np.frombuffer(msg.data.tobytes(), dtype=dtype).reshape(shape)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_bag_writes_a_camera_recording_with_ground_truth(tmp_path, storage):
    bag = tmp_path / "bag"
    rc = main(["make-bag", "--frames", "3", "--size", "30x40", "--fps", "10", "--out", str(bag), "--storage", storage])
    assert rc == 0
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == storage
    msgs = read_all(bag)
    assert {t: len(v) for t, v in msgs.items()} == {
        COLOR_TOPIC: 3,
        DEPTH_TOPIC: 3,
        COLOR_INFO_TOPIC: 3,
        DEPTH_INFO_TOPIC: 3,
        LABEL_TOPIC: 3,
    }
    gen = SceneGenerator(30, 40, seed=0)
    colour_stamps = [stamp(m) for _, m in msgs[COLOR_TOPIC]]
    assert np.diff(colour_stamps).tolist() == [100 * MS, 100 * MS]  # 10 fps
    for i, ((_, c), (_, d), (_, ci), (_, di), (_, lab)) in enumerate(
        zip(*(msgs[t] for t in (COLOR_TOPIC, DEPTH_TOPIC, COLOR_INFO_TOPIC, DEPTH_INFO_TOPIC, LABEL_TOPIC)))
    ):
        scene = gen.sample(i)
        assert (c.encoding, d.encoding, lab.encoding) == ("rgb8", "16UC1", "mono8")
        np.testing.assert_array_equal(pixels(c, np.uint8, 3), scene.frame.rgb)
        expected_mm = np.where(np.isnan(scene.frame.depth), 0, np.round(scene.frame.depth.astype(np.float64) * 1000))
        np.testing.assert_array_equal(pixels(d, np.uint16), expected_mm.astype(np.uint16))
        np.testing.assert_array_equal(pixels(lab, np.uint8), scene.labels)  # NYUv2-40 ids, 0 = unlabeled
        assert stamp(lab) == stamp(c) == stamp(ci) and stamp(di) == stamp(d)
        assert 0 < abs(stamp(d) - stamp(c)) <= 6 * MS  # jitter σ 3 ms, clipped at 2σ: always within the 20 ms slop
        k = scene.frame.intrinsics
        np.testing.assert_allclose(np.asarray(di.k).reshape(3, 3), k.matrix)
        assert (di.width, di.height) == (40, 30)
    for topic in (COLOR_TOPIC, DEPTH_TOPIC, LABEL_TOPIC):
        assert all(5 * MS <= t - stamp(m) <= 15 * MS for t, m in msgs[topic])  # received 5–15 ms after capture
    for image, info in ((COLOR_TOPIC, COLOR_INFO_TOPIC), (DEPTH_TOPIC, DEPTH_INFO_TOPIC)):
        assert [t for t, _ in msgs[info]] == [t + CAMERA_INFO_DELAY_NS for t, _ in msgs[image]]


def test_reader_opens_a_folder_its_storage_file_and_a_folder_without_metadata(tmp_path):
    bag = tmp_path / "bag"
    assert main(["make-bag", "--frames", "2", "--size", "24x32", "--out", str(bag)]) == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(bag / "bag.mcap", bare / "recording.mcap")
    results = []
    for path in (bag, bag / "bag.mcap", bare):
        with BagReader(path) as reader:
            assert reader.storage == "mcap"
            sync = ApproximateTimeSynchronizer(3, DEFAULT_QUEUE_SIZE, DEFAULT_SLOP)
            sets = [s.stamp_ns for s in read_synchronized(reader, InputTopics(), sync) if isinstance(s, SyncedSet)]
            results.append((dict(reader.topics), sets))
    assert results[0] == results[1] == results[2]
    assert len(results[0][1]) == 2


def test_single_file_writer_leaves_one_readable_file(tmp_path):
    path = tmp_path / "out" / "output.mcap"
    with BagWriter(path) as writer:
        writer.write_image("/x", np.zeros((2, 3), np.uint8), "mono8", 5, "f")
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["output.mcap"]
    assert [stamp(m) for _, m in read_all(path)["/x"]] == [5]


@pytest.mark.parametrize("name", ["folder", "single.mcap", "single.db3"])
def test_a_bag_that_fails_part_way_leaves_nothing_behind(tmp_path, name):
    def samples():
        frame = SceneGenerator(24, 32, seed=0).sample(0).frame
        yield frame, None
        yield frame, None
        raise OSError("the dataset disk went away")

    path = tmp_path / "out" / name
    with pytest.raises(OSError, match="went away"):
        write_dataset_bag(path, samples())
    assert list((tmp_path / "out").iterdir()) == []  # no bag, no staging folder
    counts = write_dataset_bag(path, (s for s in [(SceneGenerator(24, 32).sample(0).frame, None)]))
    assert counts[COLOR_TOPIC] == 1 and [p.name for p in (tmp_path / "out").iterdir()] == [name]


def test_a_bag_appears_at_its_path_only_when_it_is_closed(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path) as writer:
        writer.write_image("/x", np.zeros((2, 3), np.uint8), "mono8", 5, "f")
        assert not path.exists()
    assert sorted(p.name for p in path.iterdir()) == ["bag.mcap", "metadata.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_metres_to_millimetres_u16_writes_0_for_everything_it_cannot_store():
    metres = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 0.0004, 0.0006, 1.0, 1.2344, 65.534, 65.5344, 65.5346, 70.0])
    #                  invalid ...............................  <0.5 mm  1 mm    1 m   1234   largest ...  too far
    expected = [0, 0, 0, 0, 0, 0, 1, 1000, 1234, 65534, 65534, 0, 0]
    mm = metres_to_millimetres_u16(metres)
    assert mm.dtype == np.uint16 and mm.tolist() == expected
    back = depth_to_metres(mm[None])[0]  # every stored value reads back as itself, every 0 as invalid
    stored = mm > 0
    np.testing.assert_allclose(back[stored], metres[stored], atol=5e-4)
    assert np.isnan(back[~stored]).all()
    assert np.isnan(depth_to_metres(np.array([[65535]], np.uint16))).all()  # why 65535 is never written


def test_the_depth_cache_and_bags_store_depth_with_the_same_rule(tmp_path):
    import cv2

    from rgbd_seg_ros.datasets.cache import encode_product

    depth = np.array([[np.nan, 0.5, 65.5346], [1.0, 65.534, 80.0]], np.float32)
    png = cv2.imdecode(np.frombuffer(encode_product("depth_filled", depth), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, metres_to_millimetres_u16(depth))
    frame = RGBDFrame(np.zeros((2, 3, 3), np.uint8), depth, CameraIntrinsics(3, 3, 1, 1, 3, 2))
    write_dataset_bag(tmp_path / "bag", [(frame, None)])
    ((_, msg),) = read_all(tmp_path / "bag")[DEPTH_TOPIC]
    np.testing.assert_array_equal(pixels(msg, np.uint16), metres_to_millimetres_u16(depth))
    assert pixels(msg, np.uint16).tolist() == [[0, 500, 0], [1000, 65534, 0]]


def test_image_message_refuses_arrays_that_do_not_fit_the_encoding():
    image_message(np.zeros((2, 3), np.float32), "32FC1", 0, "f")
    with pytest.raises(ValueError, match="not a mono8 image"):
        image_message(np.zeros((2, 3), np.uint16), "mono8", 0, "f")
    with pytest.raises(ValueError, match="not a rgb8 image"):
        image_message(np.zeros((2, 3), np.uint8), "rgb8", 0, "f")


@pytest.mark.parametrize("name", available_label_sets())
def test_train_ids_go_back_to_dataset_ids_that_map_to_them(name):
    label_set = get_label_set(name)
    reachable = set(label_set.id_to_train)  # a set may have a class no dataset id maps to (a predicted "void")
    train = np.array([*range(label_set.num_classes), label_set.ignore_index], dtype=np.int64)
    back = label_set.to_train_ids(train_to_dataset_ids(train, label_set))
    expected = [t if t in reachable else label_set.ignore_index for t in train]
    np.testing.assert_array_equal(back, expected)
    assert sum(t in reachable for t in range(label_set.num_classes)) >= label_set.num_classes - 1


def test_replay_defaults_are_the_node_defaults():
    params = yaml.safe_load((ROOT / "config" / "seg.yaml").read_text())["/**"]["ros__parameters"]
    assert (params["queue_size"], params["slop"]) == (DEFAULT_QUEUE_SIZE, DEFAULT_SLOP)


# -- synchronisation ------------------------------------------------------------------------------------------
INTR = CameraIntrinsics(fx=5.0, fy=5.0, cx=2.5, cy=1.5, width=6, height=4)


def write_streams(path: Path, colour: list[tuple[float, float]], depth: list[tuple[float, float]], storage="mcap"):
    """Colour and depth (+ depth CameraInfo) messages given as (stamp ms, receive ms) after T0; 6×4 images.

    Each image's pixels hold its stamp in ms so that pairs can be identified after conversion.
    """
    events = [(r, "c", s) for s, r in colour] + [(r, "d", s) for s, r in depth]
    with BagWriter(path, storage) as w:
        for recv, kind, s in sorted(events):
            st, rt = T0 + round(s * MS), T0 + round(recv * MS)
            if kind == "c":
                w.write_image(COLOR_TOPIC, np.full((4, 6, 3), int(s) % 256, np.uint8), "rgb8", st, "cam", rt)
            else:
                w.write_image(DEPTH_TOPIC, np.full((4, 6), 1000 + int(s), np.uint16), "16UC1", st, "cam", rt)
                w.write_camera_info(DEPTH_INFO_TOPIC, INTR, st, "cam", rt + MS // 10)


def pairs(path: Path) -> tuple[list[tuple[float, float]], ApproximateTimeSynchronizer]:
    """(colour stamp ms, depth stamp ms) of every synchronised set, in emission order, and the synchroniser."""
    sync = ApproximateTimeSynchronizer(3, DEFAULT_QUEUE_SIZE, DEFAULT_SLOP)
    with BagReader(path) as reader:
        sets = [s for s in read_synchronized(reader, InputTopics(), sync) if isinstance(s, SyncedSet)]
    out = []
    for s in sets:
        d = s.depth.header.stamp.sec * 1_000_000_000 + s.depth.header.stamp.nanosec
        assert d == s.info.header.stamp.sec * 1_000_000_000 + s.info.header.stamp.nanosec
        out.append(((s.stamp_ns - T0) / MS, (d - T0) / MS))
    return out, sync


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_jittered_depth_pairs_with_its_own_colour_frame_within_the_slop(tmp_path, storage):
    # 20 fps: neighbours are 50 ms apart, so a depth offset below 20 ms can only pair with its own colour frame.
    offsets = [-12.0, 7.0, 0.0, 30.0, 11.5, -5.0]  # frame 3's depth is 30 ms late: 30 and 20 ms from colour frames
    colour = [(50.0 * i, 50.0 * i + 8) for i in range(6)]
    depth = [(50.0 * i + o, 50.0 * i + o + 10) for i, o in enumerate(offsets)]
    write_streams(tmp_path / "bag", colour, depth, storage)
    got, sync = pairs(tmp_path / "bag")
    expected = [(50.0 * i, 50.0 * i + o) for i, o in enumerate(offsets) if abs(o) < 20]
    assert sorted(got) == expected
    assert sync.unmatched == (1, 1, 1)  # 20 ms = slop exactly is not < slop: frame 3 never pairs


def test_a_missing_depth_frame_leaves_its_colour_frame_unmatched(tmp_path):
    colour = [(33.0 * i, 33.0 * i + 5) for i in range(6)]
    depth = [(33.0 * i + 2, 33.0 * i + 9) for i in range(6) if i != 2]
    write_streams(tmp_path / "bag", colour, depth)
    got, sync = pairs(tmp_path / "bag")
    assert got == [(33.0 * i, 33.0 * i + 2) for i in range(6) if i != 2]
    assert sync.unmatched == (1, 0, 0) and sync.matched == 5


def test_out_of_order_stamps_pair_by_stamp_not_by_arrival(tmp_path):
    # Received in order, but the driver stamped colour frames 2 and 3 (and depth frames 3 and 4) swapped.
    colour_stamps = [0.0, 50.0, 150.0, 100.0, 200.0, 250.0]
    depth_stamps = [1.0, 51.0, 101.0, 201.0, 151.0, 251.0]
    colour = [(s, 60.0 * i + 10) for i, s in enumerate(colour_stamps)]
    depth = [(s, 60.0 * i + 12) for i, s in enumerate(depth_stamps)]
    write_streams(tmp_path / "bag", colour, depth)
    got, sync = pairs(tmp_path / "bag")
    assert sorted(got) == [(s, s + 1) for s in sorted(colour_stamps)]
    assert sync.unmatched == (0, 0, 0)


def test_depth_at_half_the_colour_rate_pairs_with_the_nearest_colour_frame(tmp_path):
    period = 1000.0 / 30
    colour = [(period * i, period * i + 6) for i in range(30)]
    depth = [(period * i + 3, period * i + 11) for i in range(0, 30, 2)]  # 15 Hz, 3 ms after the even frames
    write_streams(tmp_path / "bag", colour, depth)
    got, sync = pairs(tmp_path / "bag")
    assert [c for c, _ in got] == pytest.approx([period * i for i in range(0, 30, 2)], abs=1e-6)
    assert all(d - c == pytest.approx(3.0, abs=1e-6) for c, d in got)
    assert sync.matched == 15 and sync.unmatched == (15, 0, 0)


def test_synchronised_sets_convert_to_frames_like_the_node(tmp_path):
    from rgbd_seg_ros.bag import frame_of

    write_streams(tmp_path / "bag", [(0.0, 5.0)], [(1.0, 6.0)])
    with BagReader(tmp_path / "bag") as reader:
        sync = ApproximateTimeSynchronizer(3, 10, 0.02)
        (synced,) = [s for s in read_synchronized(reader, InputTopics(), sync) if isinstance(s, SyncedSet)]
    frame, resized = frame_of(synced)
    assert not resized and frame.stamp_ns == T0 and frame.frame_id == "cam"
    np.testing.assert_allclose(frame.depth, 1.001)  # 1001 mm
    assert frame.intrinsics == INTR


# -- bad input --------------------------------------------------------------------------------------------------
def replay_error(capsys, bag, *extra) -> str:
    rc = main(["replay", str(bag), "--checkpoint", "unused.safetensors", "--out", "unused", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def good_bag(tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("bags") / "good"
    assert main(["make-bag", "--frames", "2", "--size", "24x32", "--out", str(bag)]) == 0
    return bag


def test_a_path_that_is_not_a_bag_is_refused(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "is not a rosbag2" in replay_error(capsys, text)
    assert "no .mcap or .db3 file" in replay_error(capsys, tmp_path)
    fake = tmp_path / "fake.mcap"
    fake.write_bytes(b"not an mcap file at all")
    assert "is not an MCAP file" in replay_error(capsys, fake)
    assert "no bag at" in replay_error(capsys, tmp_path / "missing")


def test_truncated_and_corrupt_bags_are_refused(tmp_path, capsys, good_bag):
    data = (good_bag / "good.mcap").read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) // 2])
    err = replay_error(capsys, tmp_path / "cut.mcap")
    assert "truncated or corrupt" in err and "mcap recover" in err
    sqlite = tmp_path / "sq"
    assert main(["make-bag", "--frames", "2", "--size", "24x32", "--out", str(sqlite), "--storage", "sqlite3"]) == 0
    db = (sqlite / "sq.db3").read_bytes()
    (tmp_path / "broken.db3").write_bytes(db[:100] + bytes(len(db) - 100))
    assert "truncated or corrupt" in replay_error(capsys, tmp_path / "broken.db3")


def test_missing_topics_are_named_with_the_topics_the_bag_has(capsys, good_bag):
    err = replay_error(capsys, good_bag, "--topics", "/rgb", DEPTH_TOPIC, DEPTH_INFO_TOPIC)
    assert "no colour topic '/rgb'" in err
    for topic in (COLOR_TOPIC, DEPTH_TOPIC, COLOR_INFO_TOPIC, DEPTH_INFO_TOPIC, LABEL_TOPIC):
        assert topic in err
    assert "sensor_msgs/msg/CameraInfo" in err and "sensor_msgs/msg/Image" in err
    err = replay_error(capsys, good_bag, "--topics", COLOR_TOPIC, DEPTH_TOPIC, COLOR_TOPIC)
    assert "camera_info topic" in err and "expected sensor_msgs/msg/CameraInfo" in err


def test_a_label_topic_of_the_wrong_type_or_encoding_is_refused(capsys, good_bag):
    err = replay_error(capsys, good_bag, "--labels-topic", COLOR_INFO_TOPIC)
    assert "label topic" in err and "has type sensor_msgs/msg/CameraInfo" in err
    err = replay_error(capsys, good_bag, "--labels-topic", COLOR_TOPIC)
    assert "encoding 'rgb8'" in err
    assert "no label topic '/nope'" in replay_error(capsys, good_bag, "--labels-topic", "/nope")


def test_make_bag_refuses_to_overwrite_and_needs_a_frame_count(tmp_path, capsys, good_bag):
    assert main(["make-bag", "--frames", "1", "--out", str(good_bag)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["make-bag", "--out", str(tmp_path / "x")]) == 2
    assert "needs a number of frames" in capsys.readouterr().err


def test_bag_replay_and_report_import_no_ros_package():
    import subprocess
    import sys

    code = (
        "import sys, rgbd_seg_ros.bag, rgbd_seg_ros.replay, rgbd_seg_ros.report\n"
        "ros = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'message_filters'))\n"
        "assert not ros, ros"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
