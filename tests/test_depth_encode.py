"""RGBDFrame → model input tensors per InputSpec: the single path used by training, replay and the node."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbd_seg_ros.depth.completion import fill_depth
from rgbd_seg_ros.depth.encode import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    Normalization,
    depth_array,
    encode_frame,
    encode_frames,
    jet_image,
    normalize,
)
from rgbd_seg_ros.depth.hha import HHAParams, compute_hha
from rgbd_seg_ros.depth.points import backproject
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame

H, W = 48, 64
K = CameraIntrinsics.nyu_kinect(W, H)


def _frame(seed: int = 0, holes: bool = True) -> RGBDFrame:
    rng = np.random.default_rng(seed)
    v = np.arange(H)[:, None]
    depth = (1.0 + 0.04 * v + 0.01 * np.arange(W)[None, :]).astype(np.float32)  # a tilted plane
    if holes:
        depth[5:9, 10:20] = np.nan
        depth[:, :3] = np.nan
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return RGBDFrame(rgb=rgb, depth=depth, intrinsics=K)


def test_rgb_normalisation_and_order():
    frame = _frame()
    frame.rgb[:] = (10, 20, 30)
    spec = InputSpec(depth_encoding="none")
    rgb, second = encode_frame(frame, spec)
    assert second is None and rgb.shape == (1, 3, H, W) and rgb.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip((10, 20, 30), IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(rgb[0, :, 7, 9].numpy(), expected, rtol=1e-6)
    caffe = InputSpec(
        depth_encoding="none", rgb_order="bgr", rgb_norm=Normalization(1.0, (104.0, 117.0, 123.0), (1, 1, 1))
    )
    rgb, _ = encode_frame(frame, caffe)
    np.testing.assert_allclose(rgb[0, :, 0, 0].numpy(), [30 - 104.0, 20 - 117.0, 10 - 123.0])


def test_depth_encoding_invalid_is_zero_before_normalisation():
    frame = _frame()
    spec = InputSpec(depth_encoding="depth", depth_norm=None)
    _, d = encode_frame(frame, spec, fill="none")
    assert d.shape == (1, 1, H, W)
    assert (d[0, 0, 5:9, 10:20] == 0).all()
    np.testing.assert_array_equal(d[0, 0, 20:, 3:].numpy(), frame.depth[20:, 3:])
    acnet_like = InputSpec(depth_encoding="depth", depth_norm=Normalization(1.0, (2.8425,), (0.9933,)))
    _, z = encode_frame(frame, acnet_like, fill="none")
    np.testing.assert_allclose(z[0, 0].numpy(), (np.nan_to_num(frame.depth, nan=0.0) - 2.8425) / 0.9933, rtol=1e-5)


def test_fill_is_applied_before_encoding():
    frame = _frame()
    _, d = encode_frame(frame, InputSpec(depth_encoding="depth"), fill="fast")
    np.testing.assert_array_equal(d[0, 0].numpy(), fill_depth(frame.depth, "fast"))
    assert (d > 0).all()


def test_xyz_uses_the_frame_intrinsics():
    frame = _frame()
    _, xyz = encode_frame(frame, InputSpec(depth_encoding="xyz"), fill="none")
    assert xyz.shape == (1, 3, H, W)
    expected = np.nan_to_num(backproject(frame.depth, K), nan=0.0).transpose(2, 0, 1)
    np.testing.assert_array_equal(xyz[0].numpy(), expected)
    assert (xyz[0, :, 5:9, 10:20] == 0).all()


def test_hha_matches_compute_hha_and_follows_rgb_order():
    frame = _frame()
    gravity = np.array([0.0, 0.97, 0.24])
    spec = InputSpec(depth_encoding="hha", rgb_norm=Normalization(), depth_norm=None)
    _, hha = encode_frame(frame, spec, fill="fast", gravity=gravity)
    expected = compute_hha(fill_depth(frame.depth, "fast"), K, gravity=gravity, raw_depth_m=frame.depth)
    np.testing.assert_array_equal(hha[0].numpy(), expected.transpose(2, 0, 1).astype(np.float32))
    bgr = InputSpec(depth_encoding="hha", rgb_order="bgr", depth_norm=None)
    _, hha_bgr = encode_frame(frame, bgr, fill="fast", gravity=gravity)
    np.testing.assert_array_equal(hha_bgr[0].numpy(), hha[0].numpy()[::-1])
    # Normalised "like RGB" (SA-Gate): /255 then ImageNet mean/std.
    _, normed = encode_frame(frame, InputSpec(depth_encoding="hha", depth_norm=Normalization()), gravity=gravity)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normed[0], (hha[0] / 255 - mean) / std)


def test_hha_params_from_spec():
    frame = _frame(holes=False)
    g = np.array([0.0, 1.0, 0.0])
    spec = InputSpec(depth_encoding="hha", depth_norm=None, hha_params=(("height_scale", 0.5),))
    second = depth_array(frame, spec, fill="none", gravity=g)
    expected = compute_hha(frame.depth, K, gravity=g, params=HHAParams(height_scale=0.5))
    np.testing.assert_array_equal(second, expected.transpose(2, 0, 1))


def test_jet_range_and_invalid_pixels():
    depth = np.array([[np.nan, 0.5, 10.0, 20.0, 0.1]], np.float32)
    jet = jet_image(depth, (0.5, 10.0))
    assert (jet[0, 0] == 0).all()  # invalid → black
    near, far = jet[0, 1].astype(int), jet[0, 2].astype(int)
    assert near[2] > 100 and near[0] == 0 and near[1] == 0  # jet starts dark blue (RGB order)
    assert far[0] > 100 and far[1] == 0 and far[2] == 0  # ... and ends dark red
    assert np.array_equal(jet[0, 3], jet[0, 2]) and np.array_equal(jet[0, 4], jet[0, 1])  # saturates outside
    frame = _frame()
    _, second = encode_frame(
        frame, InputSpec(depth_encoding="jet", rgb_order="bgr", jet_range_m=(0.5, 4.0)), fill="none"
    )
    expected = jet_image(frame.depth, (0.5, 4.0))[..., ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(second[0].numpy(), expected)
    with pytest.raises(ValueError, match="jet_range_m"):
        jet_image(depth, (3.0, 1.0))


def test_batches_equal_single_frames():
    frames = [_frame(0), _frame(1)]
    spec = InputSpec(depth_encoding="xyz")
    rgb, xyz = encode_frames(frames, spec)
    assert rgb.shape == (2, 3, H, W) and xyz.shape == (2, 3, H, W)
    for i, f in enumerate(frames):
        r1, x1 = encode_frame(f, spec)
        torch.testing.assert_close(rgb[i], r1[0])
        torch.testing.assert_close(xyz[i], x1[0])
    small = RGBDFrame(
        rgb=np.zeros((24, 32, 3), np.uint8), depth=np.ones((24, 32), np.float32), intrinsics=K.scaled(32, 24)
    )
    with pytest.raises(ValueError, match="share a size"):
        encode_frames([frames[0], small], spec)
    with pytest.raises(ValueError, match="gravity"):
        encode_frames(frames, spec, gravity=[None])


def test_all_invalid_frame_encodings():
    from rgbd_seg_ros.depth.hha import GravityEstimationError

    frame = RGBDFrame(rgb=np.zeros((H, W, 3), np.uint8), depth=np.full((H, W), np.nan, np.float32), intrinsics=K)
    measured = RGBDFrame(rgb=frame.rgb, depth=np.full((H, W), 2.0, np.float32), intrinsics=K)
    for encoding in ("depth", "xyz", "jet"):
        _, second = encode_frame(frame, InputSpec(depth_encoding=encoding, depth_norm=None))
        assert (second == 0).all()
        _, control = encode_frame(measured, InputSpec(depth_encoding=encoding, depth_norm=None))
        assert (control != 0).any(), f"{encoding}: a measured plane must not encode as all-invalid"
    spec = InputSpec(depth_encoding="hha", depth_norm=None)
    with pytest.raises(GravityEstimationError, match="gravity"):
        encode_frame(frame, spec)
    _, hha = encode_frame(frame, spec, gravity=np.array([0.0, 1.0, 0.0]))
    assert (hha[0, 0] == 255).all() and (hha[0, 1] == 130).all() and (hha[0, 2] == 218).all()


def test_timings_split_fill_and_encode():
    timings: dict[str, float] = {}
    encode_frame(_frame(), InputSpec(depth_encoding="xyz"), fill="fast", timings=timings)
    assert set(timings) == {"fill", "encode"} and timings["fill"] > 0 and timings["encode"] > 0
    timings = {}
    encode_frame(_frame(), InputSpec(depth_encoding="none"), timings=timings)
    assert timings["fill"] == 0.0


def test_normalize_helper():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    out = normalize(x, Normalization(2.0, (1.0,), (4.0,)))
    torch.testing.assert_close(out, (x / 2 - 1) / 4)
    assert normalize(x, None) is x
    with pytest.raises(ValueError, match="mean"):
        normalize(x, Normalization(1.0, (0.0, 0.0), (1.0, 1.0)))


def test_every_registered_model_spec_encodes():
    from rgbd_seg_ros.models.registry import get_entry, list_models

    frame = _frame()
    for name in list_models():
        spec = get_entry(name).input_spec()
        rgb, second = encode_frame(frame, spec, gravity=np.array([0.0, 1.0, 0.0]))
        assert rgb.shape == (1, 3, H, W) and torch.isfinite(rgb).all()
        if spec.depth_channels == 0:
            assert second is None
        else:
            assert second.shape == (1, spec.depth_channels, H, W) and torch.isfinite(second).all()
