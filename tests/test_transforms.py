"""Joint RGB-D transforms keep pixels, depth, labels and intrinsics consistent (back-projection test)."""

from __future__ import annotations

import numpy as np
import pytest

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame
from training import transforms as T
from training.datasets import Sample

H, W = 60, 90
K = CameraIntrinsics(fx=70.0, fy=72.5, cx=44.3, cy=29.1, width=W, height=H)


def _sample(seed: int = 0) -> Sample:
    """A frame whose meta maps record each pixel's source coordinates; labels are a function of them."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.6, 6.0, (H, W)).astype(np.float32)
    depth[rng.random((H, W)) < 0.1] = np.nan
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    frame = RGBDFrame(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), depth, K, stamp_ns=7, frame_id="cam")
    frame.meta.update(u_src=u, v_src=v, hha=rng.integers(0, 256, (H, W, 3), dtype=np.uint8), note="keep")
    labels = ((u + 3 * v) % 40).astype(np.uint8)
    return Sample(frame, labels, "s0")


def _backproject(u, v, z, k: CameraIntrinsics) -> np.ndarray:
    return np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], -1)


def _check_points(before: Sample, after: Sample, mirrored: bool, tol_px: float) -> int:
    """Every valid output pixel back-projects (new K) to its source pixel's 3-D point (old K), x negated if mirrored.

    ``tol_px`` is the allowed offset in *input* pixels between the sampled pixel and the exact source location.
    Returns the number of pixels checked.
    """
    f = after.frame
    us, vs = f.meta["u_src"], f.meta["v_src"]
    ok = np.isfinite(us) & np.isfinite(f.depth)
    vv, uu = np.nonzero(ok)
    su, sv = us[ok].astype(int), vs[ok].astype(int)
    z_src = before.frame.depth[sv, su]
    # Depth is carried, never rescaled: it equals the source pixel's depth exactly.
    np.testing.assert_array_equal(f.depth[ok], z_src)
    # Labels went through the same resampling as the coordinate maps.
    np.testing.assert_array_equal(after.labels[ok], before.labels[sv, su])
    p_after = _backproject(uu.astype(np.float64), vv.astype(np.float64), f.depth[ok].astype(np.float64), f.intrinsics)
    p_before = _backproject(su, sv, z_src.astype(np.float64), K)
    if mirrored:
        p_before[:, 0] *= -1
    err = np.abs(p_after - p_before)
    assert np.all(err[:, 0] <= (tol_px + 1e-6) * z_src / K.fx)
    assert np.all(err[:, 1] <= (tol_px + 1e-6) * z_src / K.fy)
    np.testing.assert_array_equal(p_after[:, 2], p_before[:, 2])
    return len(uu)


def test_scale_crop_flip_exact_backprojection():
    """At scale 1/3 nearest sampling hits source pixel centres exactly, so the 3-D points must agree to rounding."""
    s = _sample()
    out = T.hflip(T.crop(T.resize(s, W // 3, H // 3), x0=-3, y0=2, width=32, height=16))
    assert (out.frame.width, out.frame.height) == (32, 16)
    assert (out.frame.intrinsics.width, out.frame.intrinsics.height) == (32, 16)
    n = _check_points(s, out, mirrored=True, tol_px=1e-6)
    assert n > 100
    # RGB: bilinear at an exact 1/3 step samples the same source pixel.
    f = out.frame
    ok = np.isfinite(f.meta["u_src"])
    su, sv = f.meta["u_src"][ok].astype(int), f.meta["v_src"][ok].astype(int)
    np.testing.assert_array_equal(f.rgb[ok], s.frame.rgb[sv, su])
    np.testing.assert_array_equal(f.meta["hha"][ok], s.frame.meta["hha"][sv, su])
    # The 3 padded columns (x0 = -3) end up on the right after the flip: ignore label, NaN depth, zero RGB.
    assert np.all(out.labels[:, -3:] == 255)
    assert np.all(np.isnan(f.depth[:, -3:])) and np.all(np.isnan(f.meta["u_src"][:, -3:]))
    assert np.all(f.rgb[:, -3:] == 0) and np.all(f.meta["hha"][:, -3:] == 0)
    # Non-pixel metadata and frame identity survive.
    assert f.meta["note"] == "keep" and f.stamp_ns == 7 and f.frame_id == "cam" and out.name == "s0"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_random_pipeline_backprojection(seed, flip):
    """Arbitrary scales: the sampled pixel is within half an input pixel of the exact source location."""
    s = _sample(seed)
    pipeline = T.Compose(
        [T.RandomScale(scale_range=(0.5, 1.75)), T.RandomCrop(width=48, height=40), T.RandomHorizontalFlip(flip)]
    )
    out = pipeline(s, np.random.default_rng(seed))
    assert out.frame.rgb.shape == (40, 48, 3) and out.labels.shape == (40, 48)
    assert _check_points(s, out, mirrored=flip == 1.0, tol_px=0.5) > 50


def test_random_scale_from_a_set_and_upscale_padding():
    s = _sample()
    sizes = set()
    for seed in range(20):
        out = T.RandomScale(scales=(0.5, 2.0))(s, np.random.default_rng(seed))
        sizes.add((out.frame.width, out.frame.height))
        assert (out.frame.intrinsics.width, out.frame.intrinsics.height) == (out.frame.width, out.frame.height)
    assert sizes == {(45, 30), (180, 120)}
    # A crop larger than the image pads around it at a random offset; all of the image stays inside.
    out = T.RandomCrop(width=100, height=70)(s, np.random.default_rng(1))
    assert out.labels.shape == (70, 100)
    assert np.isfinite(out.frame.meta["u_src"]).sum() == H * W
    assert (out.labels == 255).sum() == 100 * 70 - H * W


def test_photometric_changes_rgb_only():
    s = _sample()
    for t in (T.ColorJitter(0.4, 0.4, 0.4), T.RandomHSV()):
        out = t(s, np.random.default_rng(3))
        assert out.frame.rgb.dtype == np.uint8 and out.frame.rgb.shape == s.frame.rgb.shape
        assert not np.array_equal(out.frame.rgb, s.frame.rgb)
        np.testing.assert_array_equal(out.frame.depth, s.frame.depth)
        np.testing.assert_array_equal(out.labels, s.labels)
        np.testing.assert_array_equal(out.frame.meta["hha"], s.frame.meta["hha"])
        assert out.frame.intrinsics == s.frame.intrinsics
    # Zero magnitude is the identity.
    same = T.ColorJitter()(s, np.random.default_rng(0))
    np.testing.assert_array_equal(same.frame.rgb, s.frame.rgb)


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        T.RandomScale()
    with pytest.raises(ValueError, match="exactly one"):
        T.RandomScale(scales=(1.0,), scale_range=(0.5, 1.0))
    with pytest.raises(ValueError, match="positive"):
        T.RandomScale(scales=(0.0, 1.0))
    with pytest.raises(ValueError, match=">= 0"):
        T.ColorJitter(brightness=-0.1)
