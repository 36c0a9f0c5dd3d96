"""HHA and gravity against analytic rooms (planes ray-cast from a known camera pose) and synthetic scenes."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgbd_seg_ros.depth.hha import (
    GravityEstimationError,
    HHAParams,
    compute_hha,
    compute_hha_torch,
    estimate_gravity,
    estimate_gravity_torch,
    surface_normals,
)
from rgbd_seg_ros.frames import CameraIntrinsics, depth_to_metres

H, W = 240, 320
K = CameraIntrinsics.nyu_kinect(W, H)
FLOOR, CEILING, WALL_LEFT, WALL_RIGHT, WALL_FRONT = 1, 2, 3, 4, 5
WALLS = (WALL_LEFT, WALL_RIGHT, WALL_FRONT)


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def analytic_room(
    height_m: float = 1.3,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    walls: tuple[str, ...] = ("left", "right", "front"),
    floor: bool = True,
    ceiling_m: float | None = None,
    intrinsics: CameraIntrinsics = K,
):
    """Ray-cast a box room: floor z = 0, walls x = ±2 m and y = 4 m (world z up), camera at (0, 0, height).

    ``pitch_deg`` > 0 tilts the camera down, ``roll_deg`` rotates it about its optical axis.
    Returns (depth float32 H×W, label H×W, gravity in the camera frame, world z of every pixel's point).
    """
    k = intrinsics
    u = (np.arange(k.width) - k.cx) / k.fx
    v = (np.arange(k.height) - k.cy) / k.fy
    rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), -1)  # camera frame, z = 1
    level = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: camera x, y, z in world (x, y, z up)
    r_wc = level @ _rot(0, -pitch_deg) @ _rot(2, roll_deg)
    d = rays @ r_wc.T
    origin = np.array([0.0, 0.0, height_m])
    t = np.full(d.shape[:2], np.inf)
    label = np.zeros(d.shape[:2], np.uint8)
    planes = []
    if floor:
        planes.append((2, 0.0, FLOOR))
    if ceiling_m is not None:
        planes.append((2, ceiling_m, CEILING))
    sides = {"left": (0, -2.0, WALL_LEFT), "right": (0, 2.0, WALL_RIGHT), "front": (1, 4.0, WALL_FRONT)}
    planes += [sides[w] for w in walls]
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, value, lab in planes:
            ti = (value - origin[axis]) / d[..., axis]
            hit = (ti > 0) & (ti < t)
            t = np.where(hit, ti, t)
            label = np.where(hit, lab, label)
    depth = np.where(np.isfinite(t), t, np.nan).astype(np.float32)
    world_z = origin[2] + t * d[..., 2]
    gravity = r_wc.T @ np.array([0.0, 0.0, -1.0])
    return depth, label, gravity, world_z


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def _interior(label: np.ndarray, labels: int | tuple[int, ...], margin: int = 4) -> np.ndarray:
    """Pixels of the plane(s) ``labels`` at least ``margin`` px from any other plane or the image border."""
    import cv2

    out = np.zeros(label.shape, bool)
    for lab in np.atleast_1d(labels):
        mask = (label == lab).astype(np.uint8)
        out |= cv2.erode(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8), borderValue=0).astype(bool)
    return out


POSES = [(1.3, 0, 0), (1.1, 15, 0), (1.5, 25, -8), (0.95, 8, 12), (1.3, -5, 5), (1.6, 35, 3)]


@pytest.mark.parametrize(("height", "pitch", "roll"), POSES)
def test_gravity_of_analytic_rooms(height, pitch, roll):
    depth, _, gravity, _ = analytic_room(height, pitch, roll)
    g = estimate_gravity(depth, K)
    assert g.shape == (3,) and abs(np.linalg.norm(g) - 1) < 1e-9
    assert _angle_deg(g, gravity) < 1.5


@pytest.mark.parametrize(("height", "pitch", "roll"), POSES)
def test_hha_channels_of_analytic_rooms(height, pitch, roll):
    depth, label, _, world_z = analytic_room(height, pitch, roll)
    hha = compute_hha(depth, K)
    assert hha.dtype == np.uint8 and hha.shape == (H, W, 3)
    floor, wall = _interior(label, FLOOR), _interior(label, WALLS)
    assert floor.sum() > 100 and wall.sum() > 500
    # Height above the lowest point (the floor) in cm; the floor itself is 0.
    expected_height = np.clip(world_z * 100, 0, 255)
    assert np.abs(hha[..., 1][floor].astype(float) - expected_height[floor]).max() <= 3
    assert np.abs(hha[..., 1][wall].astype(float) - expected_height[wall]).max() <= 3
    # Angle to gravity + 38: 0° on the floor, 90° on walls.
    assert np.abs(hha[..., 2][floor].astype(int) - 38).max() <= 3
    assert np.abs(hha[..., 2][wall].astype(int) - 128).max() <= 3
    # Disparity: 31000 / max(z_cm, 100), rounded and saturated.
    expected = np.clip(np.rint(31000.0 / np.maximum(depth.astype(np.float64) * 100, 100)), 0, 255)
    diff = np.abs(hha[..., 0].astype(float) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 vs float64 at rounding ties only


def test_ceiling_angle_and_low_camera_fallback():
    # Camera 0.6 m above the floor: the lowest point is < 90 cm below it, so the floor is assumed at −130 cm.
    depth, label, *_ = analytic_room(0.6, -10, 0, ceiling_m=2.5)
    hha = compute_hha(depth, K)
    floor, ceiling = _interior(label, FLOOR), _interior(label, CEILING)
    assert np.abs(hha[..., 1][floor].astype(int) - 70).max() <= 3  # 130 − 60 cm
    assert np.abs(hha[..., 2][ceiling].astype(int) - 218).max() <= 3  # 180° + 38


def test_no_floor_two_walls_still_give_gravity():
    depth, label, gravity, _ = analytic_room(1.3, 12, -7, walls=("left", "front"), floor=False)
    assert not (label == FLOOR).any()
    assert _angle_deg(estimate_gravity(depth, K), gravity) < 1.5


def test_single_wall_is_defined_and_keeps_the_observable_part():
    # Pitch only: gravity lies in the wall plane; the projection of the level prior recovers it exactly.
    depth, _, gravity, _ = analytic_room(1.3, 20, 0, walls=("front",), floor=False)
    assert np.isfinite(depth).all()
    assert _angle_deg(estimate_gravity(depth, K), gravity) < 1.5
    # With roll the rotation about the wall normal is unobservable: still a unit vector ⊥ the wall normal.
    depth, _, gravity, _ = analytic_room(1.3, 20, 10, walls=("front",), floor=False)
    g = estimate_gravity(depth, K)
    wall_normal = np.nanmean(surface_normals(depth, K, 3).reshape(-1, 3), axis=0)
    assert abs(np.linalg.norm(g) - 1) < 1e-9
    assert abs(90 - _angle_deg(g, wall_normal)) < 1.5
    hha = compute_hha(depth, K)
    assert hha.dtype == np.uint8 and (hha[..., 1] > 0).any()


def test_gravity_is_used_as_given_and_prior_direction_sign():
    depth, label, gravity, _ = analytic_room(1.3, 10, 5)
    given = compute_hha(depth, K, gravity=gravity)
    estimated = compute_hha(depth, K)
    assert (np.abs(given.astype(int) - estimated.astype(int)) > 1).mean() < 0.01
    # Gravity pointing the wrong way (up) turns floor angles into ceiling angles.
    flipped = compute_hha(depth, K, gravity=-gravity)
    floor = _interior(label, FLOOR)
    assert np.abs(flipped[..., 2][floor].astype(int) - 218).max() <= 3


def test_normals_are_unit_and_face_the_camera():
    depth, *_ = analytic_room(1.3, 10, 5)
    n = surface_normals(depth, K, 3)
    finite = np.isfinite(n[..., 0])
    assert finite.mean() > 0.99
    assert np.allclose(np.linalg.norm(n[finite], axis=-1), 1, atol=1e-5)
    xr = (np.arange(W) - K.cx) / K.fx
    yr = (np.arange(H) - K.cy) / K.fy
    p = np.stack(np.broadcast_arrays(xr[None, :], yr[:, None], 1.0), -1) * depth[..., None]
    assert ((n * p).sum(-1)[finite] >= -1e-6).all()  # the reference's orientation: N·p ≥ 0


def test_fit_mask_from_raw_depth_ignores_filled_values():
    depth, label, _, _ = analytic_room(1.3, 10, 0)
    hole = np.zeros(depth.shape, bool)
    hole[100:140, 100:160] = True
    raw = np.where(hole, np.nan, depth).astype(np.float32)
    garbage = np.where(hole, 0.7, depth).astype(np.float32)  # a bad "fill" of the hole
    n_raw = surface_normals(garbage, K, 3, raw_depth_m=raw)
    n_clean = surface_normals(depth, K, 3)
    deep_inside = np.zeros_like(hole)
    deep_inside[104:136, 104:156] = True  # > R px inside: no raw point in the window
    planes = _interior(label, (FLOOR, *WALLS))
    assert np.isnan(n_raw[deep_inside]).all()
    assert np.allclose(n_raw[planes & ~hole], n_clean[planes & ~hole], atol=1e-4)


def test_mm_and_metre_inputs_agree():
    depth, *_ = analytic_room(1.2, 15, 4)
    mm = np.rint(np.nan_to_num(depth, nan=0) * 1000).astype(np.uint16)
    metres = mm.astype(np.float32) / 1000
    metres[mm == 0] = np.nan
    a = compute_hha(depth_to_metres(mm), K)
    b = compute_hha(depth_to_metres(metres), K)
    assert (np.abs(a.astype(int) - b.astype(int)) <= 1).all() and (a != b).mean() < 1e-3


def test_invalid_values_are_missing_depth():
    depth, *_ = analytic_room(1.3, 10, 0)
    nan = depth.copy()
    nan[50:60, :] = np.nan
    others = depth.copy()
    others[50:52, :], others[52:55, :], others[55:58, :], others[58:60, :] = np.inf, 0.0, -1.0, -np.inf
    assert np.array_equal(compute_hha(nan, K), compute_hha(others, K))


def test_all_invalid_frame():
    empty = np.full((H, W), np.nan, np.float32)
    with pytest.raises(GravityEstimationError):
        estimate_gravity(empty, K)
    with pytest.raises(GravityEstimationError):
        compute_hha(empty, K)
    # With gravity known, every pixel gets the reference's value for a point without depth.
    hha = compute_hha(empty, K, gravity=(0, 1, 0))
    assert (hha[..., 0] == 255).all() and (hha[..., 1] == 130).all() and (hha[..., 2] == 218).all()


def test_bad_inputs_raise_clear_errors():
    depth, *_ = analytic_room()
    with pytest.raises(TypeError, match="depth_to_metres"):
        compute_hha((depth * 1000).astype(np.uint16), K)
    with pytest.raises(ValueError, match="intrinsics"):
        compute_hha(depth[:, :-1], K)
    with pytest.raises(ValueError, match="gravity"):
        compute_hha(depth, K, gravity=(0, 0, 0))
    with pytest.raises(ValueError, match="unknown HHA parameter"):
        HHAParams.from_pairs([("disparity_scale", 1.0)])
    with pytest.raises(ValueError):
        HHAParams(gravity_thresholds_deg=(45.0,), gravity_iterations=(5, 5))


def test_params_scale_the_channels():
    depth, label, _, world_z = analytic_room(1.3, 10, 0)
    floor, wall = _interior(label, FLOOR), _interior(label, WALLS)
    p = HHAParams.from_pairs([("height_scale", 0.5), ("disparity_numerator", 60000.0), ("angle_offset", 10.0)])
    hha = compute_hha(depth, K, params=p)
    assert np.abs(hha[..., 1][wall] - np.clip(world_z[wall] * 50, 0, 255)).max() <= 3
    assert np.abs(hha[..., 2][floor].astype(int) - 10).max() <= 3
    expected = np.clip(np.rint(60000.0 / np.maximum(depth.astype(np.float64) * 100, 100)), 0, 255)
    assert np.abs(hha[..., 0].astype(float) - expected).max() <= 1


def test_torch_matches_numpy():
    k = K.scaled(160, 120)  # the torch path is for GPUs; keep the CPU test small
    depth, *_ = analytic_room(1.2, 18, -6, intrinsics=k)
    raw = depth.copy()
    rng = np.random.default_rng(0)
    raw[rng.random(raw.shape) < 0.1] = np.nan
    raw[15:30, 20:45] = np.nan
    ref = compute_hha(depth, k, raw_depth_m=raw)
    batch = torch.from_numpy(np.stack([depth, depth]))
    out = compute_hha_torch(batch, k, raw_depth=torch.from_numpy(np.stack([raw, raw])))
    assert out.shape == (2, 3, 120, 160) and out.dtype == torch.uint8
    diff = np.abs(out[1].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    g_np = estimate_gravity(depth, k, raw_depth_m=raw)
    g_t = estimate_gravity_torch(torch.from_numpy(depth), k, raw_depth=torch.from_numpy(raw))
    assert _angle_deg(g_np, g_t) < 1e-3
    stride2 = HHAParams(gravity_stride=2)
    g2 = estimate_gravity(depth, k, raw_depth_m=raw, params=stride2)
    assert (
        _angle_deg(
            g2, estimate_gravity_torch(torch.from_numpy(depth), k, raw_depth=torch.from_numpy(raw), params=stride2)
        )
        < 1e-3
    )
    assert _angle_deg(g2, g_np) < 0.2
    given = compute_hha_torch(torch.from_numpy(depth), k, gravity=g_np, raw_depth=torch.from_numpy(raw))
    assert given.shape == (3, 120, 160) and np.abs(given.permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1


def test_torch_batch_with_one_gravity_per_frame_matches_numpy_frame_by_frame():
    k = K.scaled(160, 120)
    rooms = [analytic_room(1.2, 18, -6, intrinsics=k), analytic_room(0.7, -5, 9, intrinsics=k, ceiling_m=2.4)]
    depth = torch.from_numpy(np.stack([r[0] for r in rooms]))
    gravity = np.stack([r[2] for r in rooms])
    out = compute_hha_torch(depth, k, gravity=gravity)
    for i, (d, _, g, _) in enumerate(rooms):
        diff = np.abs(out[i].permute(1, 2, 0).numpy().astype(int) - compute_hha(d, k, gravity=g).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, i
    assert not torch.equal(out[0], out[1])


def test_numpy_hha_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from rgbd_seg_ros.depth.hha import compute_hha\n"
        "from rgbd_seg_ros.frames import CameraIntrinsics\n"
        "k = CameraIntrinsics.nyu_kinect(64, 48)\n"
        "z = np.full((48, 64), 2.0, np.float32); z[30:] = np.linspace(1, 3, 64, dtype=np.float32)\n"
        "compute_hha(z, k); compute_hha(z, k, gravity=(0, 1, 0))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_gravity_of_synthetic_scenes():
    from rgbd_seg_ros import synthetic

    gen = synthetic.SceneGenerator(height=H, width=W, seed=3)
    errors = []
    for i in range(20):
        scene = gen.sample(i)
        errors.append(_angle_deg(estimate_gravity(scene.frame.depth, scene.frame.intrinsics), scene.gravity))
    assert np.mean(np.array(errors) < 2.0) >= 0.95, errors


@pytest.fixture
def opencv_threads():
    """Set OpenCV's thread count for one test (compute_hha overlaps its two normal fits when it is ≥ 2)."""
    import cv2

    before = cv2.getNumThreads()
    yield cv2.setNumThreads
    cv2.setNumThreads(before)


def test_overlapped_and_serial_hha_are_identical(opencv_threads):
    depth, *_ = analytic_room(1.4, 22, 7)
    raw = depth.copy()
    raw[np.random.default_rng(1).random(raw.shape) < 0.05] = np.nan
    opencv_threads(1)
    serial = compute_hha(depth, K, raw_depth_m=raw)
    opencv_threads(2)
    results = [compute_hha(depth, K, raw_depth_m=raw) for _ in range(3)]  # the helper thread is reused
    assert all(np.array_equal(r, serial) for r in results)
    assert np.array_equal(compute_hha(depth, K, gravity=estimate_gravity(depth, K, raw_depth_m=raw), raw_depth_m=raw),
                          serial)  # fmt: skip


def _hha_in_child(queue) -> None:
    depth, *_ = analytic_room(1.4, 22, 7)
    queue.put(compute_hha(depth, K).sum(dtype=np.int64))


def test_forked_child_computes_hha_after_the_parent_used_its_helper_thread(opencv_threads):
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    opencv_threads(2)
    depth, *_ = analytic_room(1.4, 22, 7)
    expected = compute_hha(depth, K).sum(dtype=np.int64)  # starts the helper thread in this process
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_hha_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "compute_hha hung in a forked child (stale helper thread)"
    assert child.exitcode == 0 and queue.get(timeout=5) == expected
