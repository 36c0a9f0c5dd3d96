"""Hole completion: fast morphological fill (Ku et al.) and the NYU toolbox's colorization fill."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rgbd_seg_ros.depth.completion import colorization_system, fill_depth
from rgbd_seg_ros.frames import depth_to_metres

MATLAB_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def _plane(h: int = 120, w: int = 160, z0: float = 2.0, slope_v: float = 0.0) -> np.ndarray:
    """Depth of a plane: z0 at the top row, changing by ``slope_v`` metres per row."""
    return (z0 + slope_v * np.arange(h)[:, None] + np.zeros((1, w))).astype(np.float32)


def _holes(shape, seed=0, blobs=12, radius=6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(blobs):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask


@pytest.mark.parametrize("smoothing", ["bilateral", "gaussian"])
def test_fast_fill_fronto_parallel_wall_is_exact(smoothing):
    truth = _plane(z0=2.5)
    holes = _holes(truth.shape)
    holes[:, :12] = True  # a whole band at the border, as Kinect frames have
    holes[:8, :] = True
    out = fill_depth(np.where(holes, np.nan, truth), "fast", smoothing=smoothing)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - truth).max() < 1e-5


def test_fast_fill_keeps_measurements_and_fills_a_slope():
    truth = _plane(z0=1.0, slope_v=0.01)  # floor-like: 1 cm per row
    holes = _holes(truth.shape, seed=1, radius=4)
    noisy = truth + np.random.default_rng(2).normal(0, 0.003, truth.shape).astype(np.float32)
    out = fill_depth(np.where(holes, np.nan, noisy), "fast")
    assert np.isfinite(out).all() and (out > 0).all()
    assert np.array_equal(out[~holes], noisy[~holes])  # measured pixels are untouched
    err = np.abs(out - truth)[holes]
    assert err.max() < 0.06 and err.mean() < 0.03  # within a hole radius × slope (4 rows · 1 cm ≈ 4 cm)


def test_fast_fill_prefers_the_nearer_surface_at_edges():
    truth = _plane(z0=3.0)
    truth[:, 80:] = 1.0  # a near object on the right
    depth = truth.copy()
    depth[:, 76:84] = np.nan  # hole straddling the edge
    out = fill_depth(depth, "fast")
    assert np.isfinite(out).all()
    filled = out[:, 76:84]
    assert (filled >= 1.0 - 1e-4).all() and (filled <= 3.0 + 1e-4).all()  # never outside the neighbours' range
    # Each side of the hole continues its own surface (the final blur softens the 2 m step in the middle).
    assert np.abs(out[:, 76] - 3.0).max() < 0.1 and np.abs(out[:, 83] - 1.0).max() < 0.1


def test_fast_fill_leaves_no_holes_on_synthetic_frames():
    from rgbd_seg_ros import synthetic

    gen = synthetic.SceneGenerator(height=120, width=160, seed=5)
    for i in range(3):
        scene = gen.sample(i)
        depth = scene.frame.depth
        holes = ~np.isfinite(depth)
        out = fill_depth(depth, "fast")
        assert holes.any() and np.isfinite(out).all() and (out > 0).all()
        assert np.array_equal(out[~holes], depth[~holes])
        # Filled values stay within the range of the measured depth of the frame.
        assert out.min() >= np.nanmin(depth) - 1e-4 and out.max() <= np.nanmax(depth) + 1e-4


def _colorization_loops(depth: np.ndarray, rgb: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """A direct per-pixel transcription of the toolbox's fill_depth_colorization (dense solve, tiny images)."""
    h, w = depth.shape
    known = np.isfinite(depth)
    scale = depth[known].max()
    d = np.where(known, depth / scale, 0.0)
    gray = (rgb.astype(np.float64) / 255.0) @ np.array(MATLAB_GRAY)
    a = np.zeros((h * w, h * w))
    for i in range(h):
        for j in range(w):
            r = i * w + j
            nbs = [(ii, jj) for ii in range(max(0, i - 1), min(h, i + 2)) for jj in range(max(0, j - 1), min(w, j + 2))]
            nbs = [(ii, jj) for ii, jj in nbs if (ii, jj) != (i, j)]
            vals = np.array([gray[ii, jj] for ii, jj in nbs] + [gray[i, j]])
            c_var = np.mean((vals - vals.mean()) ** 2)
            csig = c_var * 0.6
            mgv = np.min((vals[:-1] - gray[i, j]) ** 2)
            csig = max(csig, -mgv / math.log(0.01), 0.000002)
            wts = np.exp(-((vals[:-1] - gray[i, j]) ** 2) / csig)
            wts /= wts.sum()
            for (ii, jj), wt in zip(nbs, wts):
                a[r, ii * w + jj] = -wt
            a[r, r] = 1.0
    g = np.diag(alpha * known.ravel().astype(float))
    x = np.linalg.solve(a + g, g @ d.ravel())
    return (x * scale).reshape(h, w)


def test_colorization_matches_the_toolbox_definition():
    rng = np.random.default_rng(3)
    h, w = 9, 11
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[:, 6:] //= 4  # a colour edge
    depth = (1.5 + rng.random((h, w)) * 2).astype(np.float32)
    depth[rng.random((h, w)) < 0.3] = np.nan
    depth[0, :4] = np.nan  # holes touching the border
    for alpha in (1.0, 3.0):
        out = fill_depth(depth, "colorization", rgb, alpha=alpha)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, _colorization_loops(depth, rgb, alpha), rtol=1e-5, atol=1e-5)


def test_colorization_system_rows_are_weighted_averages():
    rng = np.random.default_rng(4)
    depth = np.where(rng.random((6, 7)) < 0.5, np.nan, 2.0).astype(np.float32)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    matrix, rhs, scale = colorization_system(depth, rgb)
    a = matrix.toarray()
    known = np.isfinite(depth).ravel()
    assert scale == 2.0
    # A = I − W with W row-stochastic over the 3×3 neighbourhood, plus alpha on the known diagonal.
    np.testing.assert_allclose(a.sum(1), known.astype(float), atol=1e-12)
    assert np.count_nonzero(a[0]) == 4 and np.count_nonzero(a[8]) == 9  # corner: 3 neighbours, interior: 8
    np.testing.assert_allclose(rhs, np.where(known, 1.0, 0.0))


def test_colorization_on_a_smooth_scene_is_accurate_and_bounded():
    truth = _plane(40, 50, z0=1.0, slope_v=0.02)
    holes = np.zeros(truth.shape, bool)
    holes[10:16, 8:14] = holes[22:30, 30:35] = holes[5:8, 40:44] = True
    rgb = np.full((*truth.shape, 3), 120, np.uint8)
    out = fill_depth(np.where(holes, np.nan, truth), "colorization", rgb)
    assert np.isfinite(out).all()
    # Uniform colour → plain neighbour averaging: a ramp is harmonic, so away from the image border (where the
    # one-sided windows bend it) holes are filled with the ramp itself.
    assert np.abs(out - truth)[holes].max() < 0.005
    assert np.abs(out - truth)[~holes].max() < 0.05  # known pixels are soft-constrained (smoothed at the border)
    assert out.min() >= truth.min() - 1e-6 and out.max() <= truth.max() + 1e-6


def test_none_and_invalid_encodings():
    truth = _plane(20, 30)
    raw = truth.copy()
    raw[2, :10] = np.nan
    raw[3, :10] = np.inf
    raw[4, :10] = 0.0
    raw[5, :10] = -1.0
    out = fill_depth(raw, "none")
    assert np.isnan(out[2:6, :10]).all() and np.array_equal(out[6:], truth[6:])
    assert np.array_equal(
        fill_depth(raw, "fast"), fill_depth(np.where(np.isfinite(raw) & (raw > 0), raw, np.nan), "fast")
    )


def test_fast_fill_reaches_every_pixel_from_a_single_measurement():
    depth = np.full((96, 320), np.nan, np.float32)
    depth[95, 0] = 1.7  # far corner: column extension, then repeated 31×31 dilations across the width
    out = fill_depth(depth, "fast")
    assert np.isfinite(out).all() and np.allclose(out, 1.7)


def test_all_invalid_frames_stay_invalid():
    empty = np.full((20, 30), np.nan, np.float32)
    rgb = np.zeros((20, 30, 3), np.uint8)
    for method in ("none", "fast", "colorization"):
        out = fill_depth(empty, method, rgb)
        assert out.shape == empty.shape and np.isnan(out).all()


def test_mm_and_metre_inputs_agree():
    rng = np.random.default_rng(5)
    mm = (1000 + rng.integers(0, 3000, (40, 60))).astype(np.uint16)
    mm[_holes(mm.shape, seed=2, radius=3)] = 0
    metres = np.where(mm > 0, mm.astype(np.float32) / 1000, np.nan).astype(np.float32)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for method in ("fast", "colorization"):
        a = fill_depth(depth_to_metres(mm), method, rgb)
        b = fill_depth(depth_to_metres(metres), method, rgb)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_arguments():
    depth = _plane(10, 12)
    with pytest.raises(ValueError, match="unknown fill method"):
        fill_depth(depth, "inpaint")
    with pytest.raises(ValueError, match="rgb"):
        fill_depth(depth, "colorization")
    with pytest.raises(ValueError, match="rgb"):
        fill_depth(depth, "colorization", np.zeros((10, 11, 3), np.uint8))
    with pytest.raises(TypeError, match="depth_to_metres"):
        fill_depth((depth * 1000).astype(np.uint16), "fast")
    with pytest.raises(ValueError, match="smoothing"):
        fill_depth(np.where(_holes(depth.shape, radius=2), np.nan, depth), "fast", smoothing="box")
