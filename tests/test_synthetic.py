"""Synthetic scenes: geometry matches the labels, the sensor model makes holes only where it says, seeds repeat."""

import numpy as np
import pytest
import yaml

from rgbd_seg_ros import synthetic
from rgbd_seg_ros.synthetic import SceneGenerator, write_dataset

H, W = 120, 160


@pytest.fixture(scope="module")
def scenes():
    gen = SceneGenerator(height=H, width=W, seed=3)
    return [gen.sample(i) for i in range(12)]


def _points(scene) -> np.ndarray:
    """Noise-free camera-frame points (H×W×3, m), back-projected independently of the generator's ray code."""
    k = scene.frame.intrinsics
    v, u = np.mgrid[0 : k.height, 0 : k.width]
    z = scene.depth_clean.astype(np.float64)
    return np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], -1)


def _heights(scene) -> np.ndarray:
    """Height above the floor of every pixel: camera height minus the point's offset along gravity."""
    return scene.camera_height - _points(scene) @ scene.gravity


def test_floor_pixels_lie_at_floor_height(scenes):
    with_floor = [s for s in scenes if (s.labels == synthetic.FLOOR).sum() > 50]
    assert len(with_floor) >= len(scenes) // 2
    for s in with_floor:
        np.testing.assert_allclose(_heights(s)[s.labels == synthetic.FLOOR], 0.0, atol=1e-3)


def test_camera_pose_in_the_stated_ranges(scenes):
    for s in scenes:
        assert 0.8 <= s.camera_height <= 1.6
        assert abs(np.linalg.norm(s.gravity) - 1) < 1e-9
    tilts = [np.degrees(np.arccos(s.gravity[1])) for s in scenes]
    assert max(tilts) > 5, "pitch/roll are randomised, so gravity is not always the optical y axis"


def test_walls_are_vertical(scenes):
    checked = 0
    for s in scenes:
        pts = _points(s)
        # Surface normals from the cross product of neighbouring-pixel differences (interior of wall regions).
        du, dv = pts[1:-1, 2:] - pts[1:-1, :-2], pts[2:, 1:-1] - pts[:-2, 1:-1]
        n = np.cross(du, dv)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        wall = s.labels == synthetic.WALL
        interior = wall[1:-1, 1:-1] & wall[1:-1, 2:] & wall[1:-1, :-2] & wall[2:, 1:-1] & wall[:-2, 1:-1]
        same_surface = np.abs(s.depth_clean[1:-1, 2:] - s.depth_clean[1:-1, :-2]) < 0.05
        sel = interior & same_surface
        if sel.sum() < 20:
            continue
        cos_to_gravity = np.abs(n[sel] @ s.gravity)
        assert np.median(cos_to_gravity) < 0.02
        checked += 1
    assert checked > 0, "no scene showed enough wall to check"


def test_table_tops_are_at_their_set_height(scenes):
    checked = 0
    for s in scenes:
        heights = _heights(s)
        for idx, obj in enumerate(s.objects):
            if obj.kind != "table_top":
                continue
            assert 0.7 <= obj.hi[2] <= 0.8
            board = s.instance == idx
            if board.sum() < 10:
                continue
            # Every pixel of the board lies within its 4 cm thickness below the set height, and (seen from
            # above) most of them on the top face itself.
            assert (heights[board] <= obj.hi[2] + 1e-3).all() and (heights[board] >= obj.lo[2] - 1e-3).all()
            assert np.mean(np.abs(heights[board] - obj.hi[2]) < 1e-3) > 0.5
            assert (s.labels[board] == synthetic.TABLE).all()
            checked += 1
    assert checked >= 3


def test_holes_only_where_the_sensor_model_says(scenes):
    for s in scenes:
        depth, clean, reason = s.frame.depth, s.depth_clean, s.invalid_reason
        np.testing.assert_array_equal(np.isnan(depth), reason != synthetic.VALID)
        out = reason == synthetic.OUT_OF_RANGE
        np.testing.assert_array_equal(out, (clean < 0.5) | (clean > 8.0))
        # Discontinuity holes sit next to a jump of the clean depth (checked by brute force over neighbours).
        disc = reason == synthetic.DISCONTINUITY
        pad = np.pad(clean, 1, mode="edge")
        jumps = np.max([np.abs(pad[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] - clean)
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)  # fmt: skip
        assert (jumps[disc] > 0.02).all()
        # Specular holes are exactly the pixels of objects flagged specular (where no other reason applies).
        spec = reason == synthetic.SPECULAR
        flagged = np.isin(s.instance, [i for i, o in enumerate(s.objects) if o.specular])
        assert not (spec & ~flagged).any()
        assert not (flagged & (reason == synthetic.VALID)).any()
        # Valid pixels are within 4σ of the model's noise plus one disparity quantisation step.
        valid = reason == synthetic.VALID
        z = clean[valid]
        step = z**2 * synthetic.DISPARITY_STEP / synthetic.BASELINE_FOCAL
        assert (np.abs(depth[valid] - z) <= 4 * synthetic.depth_noise_sigma(z) + step).mean() > 0.999


def test_some_holes_exist_and_colour_does_not_decide_the_class(scenes):
    assert np.mean([np.isnan(s.frame.depth).mean() for s in scenes]) > 0.005
    # Floor and tables share the palette: their mean colours overlap across scenes.
    floor = np.array([s.frame.rgb[s.labels == synthetic.FLOOR].mean(0) for s in scenes if (s.labels == 2).any()])
    table = np.array([s.frame.rgb[s.labels == synthetic.TABLE].mean(0) for s in scenes if (s.labels == 7).any()])
    nearest = np.min(np.linalg.norm(floor[:, None] - table[None], axis=-1))
    assert nearest < 40


def test_deterministic_by_seed_and_index():
    a, b = SceneGenerator(H, W, seed=5), SceneGenerator(H, W, seed=5)
    s1, s2 = a.sample(7), b.sample(7)
    np.testing.assert_array_equal(s1.frame.rgb, s2.frame.rgb)
    np.testing.assert_array_equal(np.isnan(s1.frame.depth), np.isnan(s2.frame.depth))
    np.testing.assert_array_equal(np.nan_to_num(s1.frame.depth), np.nan_to_num(s2.frame.depth))
    np.testing.assert_array_equal(s1.labels, s2.labels)
    assert not np.array_equal(s1.frame.rgb, SceneGenerator(H, W, seed=6).sample(7).frame.rgb)
    # Sequential sampling walks the indices.
    np.testing.assert_array_equal(SceneGenerator(H, W, seed=5).sample().labels, a.sample(0).labels)


def test_write_dataset_layout(tmp_path):
    import cv2

    root = write_dataset(tmp_path / "syn", n_train=3, n_test=2, size=(H, W), seed=1)
    train = (root / "train.txt").read_text().split("\n")
    assert len([x for x in train if x]) == 3 and len((root / "test.txt").read_text().split()) == 4
    depth = cv2.imread(str(root / "Depth" / "0.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(root / "Label" / "0.png"), cv2.IMREAD_UNCHANGED)
    scene = SceneGenerator(H, W, seed=1).sample(0)
    assert depth.dtype == np.uint16 and depth.shape == (H, W)
    valid = ~np.isnan(scene.frame.depth)
    np.testing.assert_array_equal(depth == 0, ~valid)
    np.testing.assert_allclose(depth[valid] / 1000.0, scene.frame.depth[valid], atol=5e-4)
    np.testing.assert_array_equal(label, scene.labels)
    intr = yaml.safe_load((root / "intrinsics.yaml").read_text())
    assert intr["width"] == W and intr["height"] == H and intr["fx"] == pytest.approx(scene.frame.intrinsics.fx)
