"""Real sensor depth: sentinels, out-of-range speckle and unit mix-ups.

A frame whose depth holds a sensor's "no measurement" values (0 and 65535 in 16UC1, NaN and ±inf in 32FC1) or
readings outside the valid range must segment exactly like the clean frame with those pixels missing: same HHA,
same labels. Frames are made the way the node and replay make them (``ros.convert.to_rgbd_frame`` of image
messages) and segmented by the Segmenter (range limit → resize → fill → encode → model).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rgbd_seg_ros import DEMO_CHECKPOINT, data_path
from rgbd_seg_ros.backends import TorchBackend
from rgbd_seg_ros.depth.completion import fill_depth
from rgbd_seg_ros.depth.encode import InputSpec, Normalization
from rgbd_seg_ros.frames import (
    DEPTH_UNITS_WARNING,
    RGBDFrame,
    depth_to_metres,
    depth_units_warning,
    limit_depth_range,
)
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.ros.convert import to_rgbd_frame
from rgbd_seg_ros.synthetic import SceneGenerator

H, W = 120, 160  # the bundled checkpoint's training size
CHECKPOINT = data_path(DEMO_CHECKPOINT)  # SGNet-R18 on raw depth
FLOOR = 2  # NYUv2-40 id
RANGE = (0.1, 10.0)  # the node's default min_depth_m / max_depth_m


def _image(array: np.ndarray, encoding: str) -> SimpleNamespace:
    """A duck-typed ``sensor_msgs/Image`` (little-endian, no row padding)."""
    array = np.ascontiguousarray(array)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0), frame_id="color_optical")
    return SimpleNamespace(
        header=header,
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=array.shape[1] * array.itemsize * (array.shape[2] if array.ndim == 3 else 1),
        data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


class TinyHHANet(nn.Module):
    """A small random-weight RGB + HHA network: labels depend on every HHA channel."""

    def __init__(self, num_classes: int = 40) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, num_classes, 3, padding=1))

    def forward(self, rgb: torch.Tensor, hha: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([rgb, hha], 1))


@pytest.fixture(scope="module")
def scene():
    return SceneGenerator(H, W, seed=5).sample(0)


@pytest.fixture(scope="module")
def segmenters():
    """(HHA segmenter, bundled-checkpoint segmenter), both at the default valid range."""
    norm = Normalization()  # ImageNet statistics over 0..255, like SA-Gate's HHA input
    spec = InputSpec(depth_encoding="hha", depth_norm=norm)
    hha = Segmenter(TorchBackend(TinyHHANet(), num_threads=1), spec, get_label_set("nyuv2-40"), depth_range_m=RANGE)
    bundled = Segmenter.from_checkpoint(CHECKPOINT, backend="torch", device="cpu", num_threads=1)
    assert bundled.depth_range_m == RANGE and bundled.input_spec.depth_encoding == "depth"
    return hha, bundled


def _hha(segmenter: Segmenter, frame: RGBDFrame) -> np.ndarray:
    """The HHA image (0..255, C×H×W float) the Segmenter feeds its model."""
    _, second = segmenter.prepare(frame)
    norm = segmenter.input_spec.depth_norm
    std, mean = (torch.tensor(v).view(3, 1, 1) for v in (norm.std, norm.mean))
    return ((second[0] * std + mean) * norm.scale).numpy()


def _assert_same_hha(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a - b)
    assert diff.max() <= 1.0 + 1e-3 and (diff > 1e-3).mean() < 1e-3  # tests/test_depth_hha.py's tolerance


def _mask(scene, fraction: float, rng: np.random.Generator, floor_only: bool = False) -> np.ndarray:
    """``fraction`` of the frame's pixels, among the valid (floor) pixels."""
    pool = np.isfinite(scene.frame.depth) & ((scene.labels == FLOOR) if floor_only else True)
    idx = rng.choice(np.flatnonzero(pool), int(fraction * pool.size), replace=False)
    mask = np.zeros(pool.size, bool)
    mask[idx] = True
    return mask.reshape(pool.shape)


CASES = [
    ("16UC1", 0),  # RealSense, Azure Kinect: no return
    ("16UC1", 65535),  # Kinect v2 / libfreenect2: out of range
    ("16UC1", 40),  # 4 cm: near-range speckle below min_depth_m
    ("32FC1", np.nan),
    ("32FC1", np.inf),
    ("32FC1", -np.inf),
    ("32FC1", 0.03),  # near-range speckle
    ("32FC1", 42.0),  # beyond max_depth_m
]


def _sensor_images(scene, encoding: str, value: float, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw sensor depth with ``value`` at ``mask``, reference metres of the clean image with ``mask`` missing).

    The reference is computed here, not by ``depth_to_metres``: millimetres / 1000 with 0 = missing.
    """
    depth = scene.frame.depth
    if encoding == "16UC1":
        clean = np.where(np.isfinite(depth), np.rint(np.nan_to_num(depth) * 1000), 0).astype(np.uint16)
        reference = np.where((clean == 0) | mask, np.nan, clean / 1000.0).astype(np.float32)
        raw = clean.copy()
        raw[mask] = value
    else:
        clean = depth.astype(np.float32)
        reference = np.where(mask, np.nan, clean).astype(np.float32)
        raw = clean.copy()
        raw[mask] = value
    return raw, reference


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{e}-{v}" for e, v in CASES])
def test_sentinels_segment_like_the_clean_frame_with_those_pixels_missing(scene, segmenters, case):
    encoding, value = CASES[case]
    mask = _mask(scene, 0.01, np.random.default_rng(case), floor_only=value == 65535)
    assert mask.sum() >= 100
    raw, reference = _sensor_images(scene, encoding, value, mask)
    k = scene.frame.intrinsics
    frame, _ = to_rgbd_frame(_image(scene.frame.rgb, "rgb8"), _image(raw, encoding), k)
    clean = RGBDFrame(scene.frame.rgb, reference, k, frame.stamp_ns, frame.frame_id)
    hha_seg, bundled = segmenters
    _assert_same_hha(_hha(hha_seg, frame), _hha(hha_seg, clean))
    for segmenter in (hha_seg, bundled):
        a, b = segmenter(frame).labels, segmenter(clean).labels
        assert (a != b).mean() < 1e-3, segmenter.input_spec.depth_encoding


def test_sentinels_read_as_depth_would_change_hha_and_labels(scene, segmenters):
    """Positive control for the test above: the same pixels as *readings* (65535 mm = 65.5 m, speckle at 4 cm),
    which is what the package did before, change HHA and labels."""
    hha_seg, _ = segmenters
    unlimited = Segmenter(hha_seg.backend, hha_seg.input_spec, hha_seg.label_set, depth_range_m=(0.0, np.inf))
    k = scene.frame.intrinsics
    rng = np.random.default_rng(1)
    for value, floor_only in ((65.535, True), (0.04, False)):
        mask = _mask(scene, 0.01, rng, floor_only)
        as_reading = np.where(mask, np.float32(value), scene.frame.depth).astype(np.float32)
        missing = np.where(mask, np.nan, scene.frame.depth).astype(np.float32)
        a = _hha(unlimited, RGBDFrame(scene.frame.rgb, as_reading, k))
        b = _hha(unlimited, RGBDFrame(scene.frame.rgb, missing, k))
        assert (np.abs(a - b) > 1).mean() > 0.01, value
        assert (unlimited(RGBDFrame(scene.frame.rgb, as_reading, k)).labels != hha_seg(
            RGBDFrame(scene.frame.rgb, missing, k)).labels).mean() > 1e-3  # fmt: skip


def test_65535_on_the_floor_no_longer_saturates_the_height_channel(scene, segmenters):
    """The issue's measurement, on a synthetic frame: ~0.7 % of the pixels at 65535 on the floor."""
    hha_seg, _ = segmenters
    mask = _mask(scene, 0.007, np.random.default_rng(2), floor_only=True)
    raw, reference = _sensor_images(scene, "16UC1", 65535, mask)
    k = scene.frame.intrinsics
    frame, _ = to_rgbd_frame(_image(scene.frame.rgb, "rgb8"), _image(raw, "16UC1"), k)
    clean = _hha(hha_seg, RGBDFrame(scene.frame.rgb, reference, k))[1].mean()
    after = _hha(hha_seg, frame)[1].mean()
    unlimited = Segmenter(hha_seg.backend, hha_seg.input_spec, hha_seg.label_set, depth_range_m=(0.0, np.inf))
    before = _hha(unlimited, RGBDFrame(scene.frame.rgb, (raw / 1000.0).astype(np.float32), k))[1].mean()
    assert abs(after - clean) < 0.5
    assert before > clean + 30  # 65.5 m points far "below" the floor lift every other pixel's height


def test_65535_is_missing_even_where_the_valid_range_reaches_beyond_65_m(scene, segmenters):
    hha_seg, _ = segmenters
    outdoor = Segmenter(hha_seg.backend, hha_seg.input_spec, hha_seg.label_set, depth_range_m=(0.1, 100.0))
    mask = _mask(scene, 0.01, np.random.default_rng(4), floor_only=True)
    raw, reference = _sensor_images(scene, "16UC1", 65535, mask)
    k = scene.frame.intrinsics
    frame, _ = to_rgbd_frame(_image(scene.frame.rgb, "rgb8"), _image(raw, "16UC1"), k)
    _assert_same_hha(_hha(outdoor, frame), _hha(outdoor, RGBDFrame(scene.frame.rgb, reference, k)))


def test_depth_to_metres_sentinels_of_every_integer_type():
    for dtype in (np.uint8, np.uint16, np.int16, np.uint32, np.int32):
        top = np.iinfo(dtype).max
        m = depth_to_metres(np.array([[0, top], [7, top - 1]], dtype))
        assert np.isnan(m[0]).all(), dtype
        np.testing.assert_allclose(m[1], [0.007, (top - 1) / 1000], rtol=1e-6)
    # The sentinel is the raw value whatever the scale: 65535 × 0.1 mm is still "no measurement".
    assert np.isnan(depth_to_metres(np.array([[65535, 20000]], np.uint16), scale=1e-4)).tolist() == [[True, False]]
    f = depth_to_metres(np.array([[np.nan, np.inf, -np.inf, 0.0, -2.0, 1.25]], np.float32))
    assert np.isnan(f[0, :5]).all() and f[0, 5] == np.float32(1.25)


def test_fill_does_not_spread_out_of_range_speckle(scene):
    """Near-range speckle removed before the fill stays removed: nothing near the camera after filling."""
    mask = _mask(scene, 0.005, np.random.default_rng(3))
    speckle = np.where(mask, np.float32(0.05), scene.frame.depth).astype(np.float32)
    frame = RGBDFrame(scene.frame.rgb, speckle, scene.frame.intrinsics)
    limited = fill_depth(limit_depth_range(frame, *RANGE).depth, "fast", frame.rgb)
    assert np.nanmin(limited) >= RANGE[0]
    unlimited = fill_depth(speckle, "fast", frame.rgb)
    assert (unlimited < 0.5).sum() >= mask.sum()  # control: the fill keeps (or spreads) the speckle


@pytest.mark.parametrize(
    ("raw", "warned"),
    [
        (np.full((48, 64), 2, np.uint16), "depth_scale"),  # metres in 16UC1
        (np.full((48, 64), 1500.0, np.float32), "depth_scale"),  # millimetres in 32FC1
        (np.full((48, 64), 1500, np.uint16), None),
        (np.full((48, 64), 1.5, np.float32), None),
        (np.zeros((48, 64), np.uint16), None),  # nothing valid: nothing to judge
        (np.full((48, 64), np.nan, np.float32), None),
    ],
)
def test_units_warning(raw, warned):
    text = depth_units_warning(raw)
    assert (text is None) if warned is None else (warned in text)
    assert depth_units_warning(raw, scale=0.001) is None  # an explicit unit is never second-guessed
    rgb = np.zeros((*raw.shape, 3), np.uint8)
    frame, _ = to_rgbd_frame(_image(rgb, "rgb8"), _image(raw, "16UC1" if raw.dtype == np.uint16 else "32FC1"),
                             SceneGenerator(48, 64, seed=0).sample(0).frame.intrinsics)  # fmt: skip
    assert frame.meta.get(DEPTH_UNITS_WARNING) == text


def test_replay_warns_once_about_metres_in_16uc1(tmp_path, caplog):
    from rgbd_seg_ros.bag import write_dataset_bag
    from rgbd_seg_ros.replay import ReplayOptions, replay

    gen = SceneGenerator(48, 64, seed=1)
    samples = []
    for i in range(3):
        f = gen.sample(i).frame
        km = RGBDFrame(f.rgb, (f.depth / 1000).astype(np.float32), f.intrinsics)  # stored "mm" = metres
        samples.append((km, None))
    write_dataset_bag(tmp_path / "bag", samples)

    class StandIn:  # labels everything 0; keeps the frames it saw
        label_set = get_label_set("nyuv2-40")

        def __init__(self) -> None:
            self.frames: list[RGBDFrame] = []

        def __call__(self, frame):
            self.frames.append(frame)
            labels = np.zeros(frame.depth.shape, self.label_set.label_dtype)
            return SimpleNamespace(labels=labels, confidence=np.ones(frame.depth.shape, np.float32), timings={})

    stand_in = StandIn()
    with caplog.at_level("WARNING", logger="rgbd_seg_ros"):
        replay(tmp_path / "bag", stand_in, tmp_path / "out", ReplayOptions(progress=False))
    assert len(stand_in.frames) == 3
    assert sum("depth_scale" in r.getMessage() for r in caplog.records) == 1, caplog.records


def test_node_warns_once_about_millimetres_in_32fc1():
    pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
    from ros_harness import DepthSegmenter, RosHarness, color_msg, domain_id, info_msg, make_scene, wait_for
    from sensor_msgs.msg import CameraInfo, Image

    from rgbd_seg_ros.ros.convert import image_from_array

    ros = RosHarness(domain_id(43))
    try:
        model = DepthSegmenter()
        node = ros.start_node(model, publish_all=True)
        warnings: list[str] = []
        node._log = SimpleNamespace(warning=warnings.append, error=warnings.append, info=lambda *_: None)
        pubs = [ros.publisher(t, name) for t, name in ((Image, "color/image"), (Image, "depth/image"),
                                                       (CameraInfo, "depth/camera_info"))]  # fmt: skip
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs))
        rgb, depth, k = make_scene()
        mm = np.nan_to_num(depth * 1000.0, nan=0.0).astype(np.float32)  # millimetres published as 32FC1
        t0 = 1_000_000_000
        for i in range(3):
            t = t0 + i * 33_333_333
            depth_msg = image_from_array(mm, "32FC1")
            depth_msg.header = color_msg(rgb, t).header
            for pub, msg in zip(pubs, (color_msg(rgb, t), depth_msg, info_msg(k, t))):
                pub.publish(msg)
            assert wait_for(lambda n=i + 1: len(model.frames) >= n, timeout=5.0)
            time.sleep(0.05)
        assert sum("depth_scale" in w for w in warnings) == 1, warnings
    finally:
        ros.shutdown()
