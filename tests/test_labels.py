"""Label sets, dataset-id mapping, colorize and overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbd_seg_ros.labels import LabelSet, available_label_sets, colorize, get_label_set, overlay

EXPECTED_SIZES = {"nyuv2-40": 40, "nyuv2-13": 13, "sunrgbd-37": 37, "cityscapes-19": 19, "synthetic": 40}
# The DeepScene (AdapNet++ / SSMA) sets count "void" as class 0 (DeepSceneSeg/AdapNet-pp images/class_id.txt).
EXPECTED_SIZES |= {"deepscene-12": 12, "sunrgbd-38": 38, "scannet-21": 21, "freiburg-forest-6": 6, "cityscapes-20": 20}


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_builtin_sets_are_well_formed(name: str) -> None:
    ls = get_label_set(name)
    assert ls.name == name and ls.num_classes == EXPECTED_SIZES[name]
    assert ls.palette.shape == (ls.num_classes, 3) and ls.palette.dtype == np.uint8
    assert len(set(ls.class_names)) == ls.num_classes
    colors = {tuple(c) for c in ls.palette.tolist()}
    assert len(colors) == ls.num_classes, "two classes share a colour"
    assert ls.void_color not in colors, "a class is drawn like void"
    assert ls.ignore_index == 255 and ls.label_dtype == np.uint8
    with pytest.raises(ValueError):
        ls.palette[0, 0] = 1  # read-only


def test_available_and_aliases() -> None:
    assert set(available_label_sets()) == set(EXPECTED_SIZES)
    assert get_label_set("NYUv2").name == "nyuv2-40"
    assert get_label_set("sun_rgbd").name == "sunrgbd-37"
    assert get_label_set("Cityscapes").name == "cityscapes-19"
    ls = get_label_set("nyu40")
    assert get_label_set(ls) is ls
    with pytest.raises(ValueError, match="available"):
        get_label_set("pascal")


def test_published_class_lists() -> None:
    """Spot checks against the published lists (NYU ids are 1-based there, train ids 0-based here)."""
    nyu = get_label_set("nyuv2-40")
    for nyu_id, name in ((1, "wall"), (2, "floor"), (22, "ceiling"), (29, "box"), (31, "person"), (40, "otherprop")):
        assert nyu.index(name) == nyu_id - 1
    sun = get_label_set("sunrgbd-37")
    assert sun.class_names[-1] == "bag" and sun.index("night_stand") == nyu.index("night stand")
    assert get_label_set("nyuv2-13").class_names[:3] == ("bed", "books", "ceiling")
    city = get_label_set("cityscapes-19")
    assert city.class_names[0] == "road" and city.class_names[-1] == "bicycle"
    official = {"road": (128, 64, 128), "sky": (70, 130, 180), "car": (0, 0, 142), "vegetation": (107, 142, 35)}
    for name, rgb in official.items():
        assert tuple(city.palette[city.index(name)]) == rgb
    with pytest.raises(KeyError):
        nyu.index("spaceship")


def test_indoor_palettes_follow_the_voc_colour_map() -> None:
    # PASCAL VOC colours of entries 1..4 (aeroplane, bicycle, bird, boat), used for train ids 0..3.
    voc = [(128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert [tuple(c) for c in get_label_set("nyuv2-40").palette[:4].tolist()] == voc
    np.testing.assert_array_equal(get_label_set("sunrgbd-37").palette, get_label_set("nyuv2-40").palette[:37])
    syn, nyu = get_label_set("synthetic"), get_label_set("nyuv2-40")
    assert syn.class_names == nyu.class_names
    np.testing.assert_array_equal(syn.palette, nyu.palette)


@pytest.mark.parametrize("name", ["nyuv2-40", "sunrgbd-37", "nyuv2-13", "synthetic"])
def test_one_based_dataset_ids_map_to_train_ids(name: str) -> None:
    ls = get_label_set(name)
    k = ls.num_classes
    ids = np.random.default_rng(0).integers(0, k + 1, size=(6, 7)).astype(np.uint8)
    expected = np.where(ids == 0, 255, ids.astype(np.int64) - 1)
    out = ls.to_train_ids(ids)
    assert out.dtype == np.uint8 and out.shape == ids.shape
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match=str(k + 1)):
        ls.to_train_ids(np.array([[0, k + 1]]))
    with pytest.raises(ValueError):
        ls.to_train_ids(np.array([-1]))
    with pytest.raises(TypeError):
        ls.to_train_ids(np.array([1.0]))


def test_cityscapes_label_ids_map_to_train_ids() -> None:
    city = get_label_set("cityscapes")
    # labelId → trainId pairs from the official cityscapesscripts table
    pairs = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 17: 5, 18: 255, 23: 10, 26: 13, 29: 255, 33: 18}
    ids = np.array(list(pairs), dtype=np.uint8)
    np.testing.assert_array_equal(city.to_train_ids(ids), list(pairs.values()))
    assert sorted(set(city.to_train_ids(np.arange(34)).tolist()) - {255}) == list(range(19))
    with pytest.raises(ValueError):
        city.to_train_ids(np.array([34]))


def test_colorize_matches_a_per_pixel_lookup() -> None:
    ls = get_label_set("nyuv2-40")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 40, size=(9, 11)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 255
    out = colorize(labels, ls)
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8
    for (r, c), v in np.ndenumerate(labels):
        want = ls.void_color if v == 255 else tuple(ls.palette[v])
        assert tuple(out[r, c]) == want
    np.testing.assert_array_equal(colorize(torch.from_numpy(labels.astype(np.int64)), ls), out)
    np.testing.assert_array_equal(colorize(labels.astype(np.uint16)[None], ls)[0], out)
    np.testing.assert_array_equal(colorize(labels.ravel(), ls), out.reshape(-1, 3))
    assert colorize(np.zeros((0, 4), np.uint8), ls).shape == (0, 4, 3)


@pytest.mark.parametrize("bad", [40, 254, -1])
def test_colorize_rejects_ids_outside_the_set(bad: int) -> None:
    labels = np.zeros((2, 2), dtype=np.int32)
    labels[1, 1] = bad
    with pytest.raises(ValueError, match=str(bad)):
        colorize(labels, get_label_set("nyuv2-40"))
    with pytest.raises(TypeError):
        colorize(labels.astype(np.float32), get_label_set("nyuv2-40"))


def test_overlay_blends_and_keeps_void() -> None:
    ls = get_label_set("cityscapes-19")
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, size=(8, 10)).astype(np.uint8)
    labels[:2] = 255
    for alpha in (0.0, 0.3, 0.5, 1.0):
        out = overlay(rgb, labels, ls, alpha)
        colours = ls.palette[np.minimum(labels, 18)].astype(np.float64)
        want = (1 - alpha) * rgb + alpha * colours
        valid = labels != 255
        assert np.abs(out[valid].astype(np.float64) - want[valid]).max() <= 0.5 + 1e-9
        np.testing.assert_array_equal(out[~valid], rgb[~valid])
    assert overlay(rgb, labels, ls, 0.5) is not rgb


def test_overlay_rejects_bad_input() -> None:
    ls = get_label_set("nyuv2-40")
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        overlay(rgb, np.zeros((5, 4), np.uint8), ls)
    with pytest.raises(ValueError, match="alpha"):
        overlay(rgb, np.zeros((4, 5), np.uint8), ls, alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(rgb.astype(np.float32), np.zeros((4, 5), np.uint8), ls)


def test_custom_label_set_validation_and_wide_sets() -> None:
    with pytest.raises(ValueError, match="unique"):
        LabelSet("x", ("a", "a"), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="palette"):
        LabelSet("x", ("a", "b"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="ignore_index"):
        LabelSet("x", tuple(f"c{i}" for i in range(300)), np.zeros((300, 3)))  # 255 would be a class
    with pytest.raises(ValueError, match="id_to_train"):
        LabelSet("x", ("a", "b"), np.zeros((2, 3)), id_to_train=(255, 0, 1, 2))
    names = tuple(f"c{i}" for i in range(300))
    palette = np.stack([np.arange(300) % 256, np.arange(300) // 256, np.full(300, 7)], axis=1)
    wide = LabelSet("wide", names, palette, ignore_index=65535)
    assert wide.label_dtype == np.uint16
    labels = np.array([[0, 299], [65535, 256]], dtype=np.uint16)
    out = colorize(labels, wide)
    np.testing.assert_array_equal(out[0, 1], palette[299])
    np.testing.assert_array_equal(out[1, 0], wide.void_color)


def test_synthetic_scene_labels_colour_with_the_synthetic_set() -> None:
    from rgbd_seg_ros import synthetic

    scene = synthetic.SceneGenerator(height=48, width=64, seed=0).sample()
    ls = get_label_set("synthetic")
    train = ls.to_train_ids(scene.labels)  # NYUv2-40 ids, 0 = unlabelled
    assert colorize(train, ls).shape == (48, 64, 3)
    # the generator's named NYUv2-40 ids land on the classes of the same name
    for const in ("WALL", "FLOOR", "CABINET", "BED", "CHAIR", "SOFA", "TABLE", "CEILING", "BOX"):
        assert ls.class_names[getattr(synthetic, const) - 1] == const.lower()
