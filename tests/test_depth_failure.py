"""Training-time depth failure (``training/depth_failure.py``): each mode removes depth in its documented pattern,
at its documented rate, only removes, and runs before the hole fill and encoding of the training batches."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from rgbd_seg_ros.datasets.base import Sample
from rgbd_seg_ros.depth.encode import InputSpec
from rgbd_seg_ros.synthetic import SceneGenerator
from training import depth_failure as DF
from training.config import load_config
from training.data import Collate, build_transforms
from training.depth_failure import MODES, DepthFailure

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"


def synthetic_sample(index: int = 0, size=(60, 80)) -> Sample:
    """A synthetic room with train-id labels (0 = unlabelled → ignore, as the dataset loaders map it)."""
    scene = SceneGenerator(*size, seed=3).sample(index)
    labels = np.where(scene.labels == 0, 255, scene.labels - 1).astype(np.uint8)
    return Sample(scene.frame, labels, f"room{index}")


def lost_by(mode: str, sample: Sample, seed: int) -> np.ndarray:
    """Pixels that had depth before one application of ``mode`` and have none after."""
    out = DepthFailure(**{mode: 1.0})(sample, np.random.default_rng(seed))
    return np.isfinite(sample.frame.depth) & np.isnan(out.frame.depth)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(4))
def test_every_mode_only_removes_depth_and_leaves_the_rest_alone(mode, seed):
    sample = synthetic_sample(seed)
    sample.frame.meta.update(hha=np.zeros((60, 80, 3), np.uint8), depth_filled=np.ones((60, 80), np.float32))
    out = DepthFailure(**{mode: 1.0})(sample, np.random.default_rng(seed))
    before, after = sample.frame.depth, out.frame.depth
    kept = np.isfinite(after)
    assert not (kept & np.isnan(before)).any()  # no depth invented
    np.testing.assert_array_equal(after[kept], before[kept])  # kept depth unchanged
    if mode != "far" or np.nanmax(before) > DF.FAR_CUTOFF_M[1]:  # a near room may lie within every cut-off
        assert (np.isfinite(before) & ~kept).any()  # something was removed
    np.testing.assert_array_equal(out.frame.rgb, sample.frame.rgb)
    np.testing.assert_array_equal(out.labels, sample.labels)
    assert "hha" not in out.frame.meta and "depth_filled" not in out.frame.meta  # derived from the lost depth
    assert np.isfinite(sample.frame.depth).sum() == np.isfinite(before).sum()  # the input is not modified


def test_frame_mode_removes_every_pixel():
    sample = synthetic_sample()
    out = DepthFailure(frame=1.0)(sample, np.random.default_rng(0))
    assert np.isnan(out.frame.depth).all()


@pytest.mark.parametrize("seed", range(12))
def test_regions_are_at_most_three_large_blobs(seed):
    sample = synthetic_sample(seed % 3, size=(120, 160))
    mask = DF.region_mask((120, 160), np.random.default_rng(seed))
    _, n = ndimage.label(mask)
    assert 1 <= n <= 3
    # the smallest shape is an ellipse with semi-axes 12 % of each side, at worst a quarter of it inside the image
    assert mask.mean() >= 0.25 * np.pi * 0.12**2 * 0.9
    lost = lost_by("regions", sample, seed)
    assert lost.sum() > 0


@pytest.mark.parametrize("seed", range(8))
def test_far_cut_off_removes_exactly_the_depth_beyond_one_range_in_the_documented_interval(seed):
    sample = synthetic_sample(seed)
    lost = lost_by("far", sample, seed)
    depth = sample.frame.depth
    kept = np.isfinite(depth) & ~lost
    if lost.any():
        assert depth[kept].max() < depth[lost].min()  # one cut-off separates them
        assert depth[lost].min() > DF.FAR_CUTOFF_M[0]
    if kept.any():
        assert depth[kept].max() <= DF.FAR_CUTOFF_M[1]


def label_components(labels: np.ndarray) -> list[np.ndarray]:
    """8-connected components of each label value (ignore excluded), as boolean masks (SciPy, not OpenCV)."""
    out = []
    for value in np.unique(labels[labels != 255]):
        components, n = ndimage.label(labels == value, structure=np.ones((3, 3)))
        out += [components == k for k in range(1, n + 1)]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_object_mask_is_a_union_of_whole_objects_of_the_documented_size(seed):
    sample = synthetic_sample(seed)
    mask = DF.object_mask(sample.labels, np.random.default_rng(seed))
    taken = 0
    for obj in label_components(sample.labels):
        assert mask[obj].all() or not mask[obj].any()  # objects are taken whole or not at all
        if mask[obj].any():
            taken += 1
            assert DF.OBJECT_AREA[0] <= obj.mean() <= DF.OBJECT_AREA[1]
    assert taken >= 1 and not (mask & (sample.labels == 255)).any()


@pytest.mark.parametrize("seed", range(8))
def test_specular_mode_removes_whole_objects_and_dark_pixels(seed):
    sample = synthetic_sample(seed)
    out = DepthFailure(specular=1.0)(sample, np.random.default_rng(seed))
    now_invalid = np.isnan(out.frame.depth)
    lost = np.isfinite(sample.frame.depth) & now_invalid
    grey = ndimage.median_filter(
        np.round(sample.frame.rgb.astype(np.float64) @ [0.299, 0.587, 0.114]), size=5, mode="nearest"
    )
    dark = grey < DF.DARK_GREY[1] + 1  # ±1 grey level for the rounding of two implementations
    whole_objects = np.zeros_like(lost)
    for obj in label_components(sample.labels):
        if now_invalid[obj].all():
            whole_objects |= obj
    assert not (lost & ~dark & ~whole_objects).any()  # every removed pixel is dark or part of a removed object


@pytest.mark.parametrize("seed", range(8))
def test_speckle_is_a_scattered_fraction_in_small_clumps(seed):
    h, w = 120, 160
    mask = DF.speckle_mask((h, w), np.random.default_rng(seed))
    assert DF.SPECKLE_FRACTION[0] - 0.005 <= mask.mean() <= DF.SPECKLE_FRACTION[1] + 0.005
    quadrants = [mask[: h // 2, : w // 2], mask[: h // 2, w // 2 :], mask[h // 2 :, : w // 2], mask[h // 2 :, w // 2 :]]
    assert min(q.mean() for q in quadrants) > 0.25 * mask.mean()  # spread over the image, not one region
    components, n = ndimage.label(mask)
    assert n >= 10 and np.bincount(components.ravel())[1:].max() < 0.05 * mask.size


def test_modes_are_drawn_independently_at_their_probabilities():
    p = {"frame": 0.1, "regions": 0.3, "far": 0.5, "specular": 0.0, "speckle": 0.9}
    failure, rng, n = DepthFailure(**p), np.random.default_rng(0), 4000
    draws = [failure.draw_modes(rng) for _ in range(n)]
    for mode, prob in p.items():
        freq = sum(mode in d for d in draws) / n
        assert abs(freq - prob) <= 5 * np.sqrt(prob * (1 - prob) / n) + 1e-9, mode
    both = sum("regions" in d and "far" in d for d in draws) / n
    assert abs(both - 0.15) < 0.03  # independent: P(regions and far) = 0.3 × 0.5


def test_the_same_generator_seed_gives_the_same_failure():
    sample = synthetic_sample()
    failure = DepthFailure(frame=0.2, regions=0.5, far=0.5, specular=0.5, speckle=0.5)
    a = failure(sample, np.random.default_rng([1, 2, 3])).frame.depth
    b = failure(sample, np.random.default_rng([1, 2, 3])).frame.depth
    np.testing.assert_array_equal(a, b)


def test_bad_probability_is_one_clear_error():
    with pytest.raises(ValueError, match=r"depth_failure\.far"):
        DepthFailure(far=1.5)


# -- recipes ---------------------------------------------------------------------------------------------------
def documented_probabilities() -> dict[str, float]:
    """The p column of the module docstring's table."""
    rows = re.findall(r"^``(\w+)``\s+([0-9.]+)\s", DF.__doc__, flags=re.MULTILINE)
    return {mode: float(p) for mode, p in rows}


def test_synthetic_recipes_use_the_documented_probabilities_and_paper_recipes_none():
    assert set(documented_probabilities()) == set(MODES)
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        probs = {m: getattr(cfg.augment.depth_failure, m) for m in MODES}
        steps = build_transforms(cfg.augment).transforms
        if path.name.startswith("synthetic_"):
            assert probs == documented_probabilities(), path.name
            assert isinstance(steps[-1], DepthFailure)  # last: after the geometric and colour steps
        else:
            assert not any(probs.values()), path.name
            assert not any(isinstance(s, DepthFailure) for s in steps), path.name


def test_bundled_checkpoint_recipe_trains_with_depth_failure():
    recipe = yaml.safe_load((ROOT / "rgbd_seg_ros" / "data" / "sgnet_r18_synthetic.yaml").read_text())
    assert recipe["augment"]["depth_failure"] == documented_probabilities()


def test_training_batches_fill_and_encode_the_failed_depth():
    """The failure runs before Collate's hole fill: a whole-frame failure leaves the depth input empty (0 m), a
    partial one gives the fill of the failed frame, not of the original."""
    cfg = load_config(CONFIGS / "synthetic_sgnet_r18.yaml", ["augment.depth_failure.frame=1.0"])
    transforms = build_transforms(cfg.augment)
    spec = InputSpec(depth_encoding="depth")
    collate = Collate(spec, "fast")
    sample = synthetic_sample(size=(120, 160))
    _, second, _ = collate([transforms(sample, np.random.default_rng(0))])
    assert second is not None and (second == 0).all()
    _, intact, _ = collate([sample])
    assert (intact > 0).float().mean() > 0.9

    half = DF.with_depth_lost(sample, np.arange(160)[None, :].repeat(120, 0) < 80)
    _, failed, _ = collate([half])
    measured_right = np.isfinite(sample.frame.depth) & (np.arange(160) >= 80)
    np.testing.assert_allclose(failed[0, 0].numpy()[measured_right], intact[0, 0].numpy()[measured_right])
    assert not np.allclose(failed[..., :80].numpy(), intact[..., :80].numpy())  # the left half is a fill
