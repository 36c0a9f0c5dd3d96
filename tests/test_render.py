"""Output rendering shared by the node and the replay, and the atomic PNG writer."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from rgbd_seg_ros.labels import LabelSet, get_label_set
from rgbd_seg_ros.render import OUTPUT_NAMES, labels_encoding, render_outputs, write_png


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    label_set = get_label_set("nyuv2-40")
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, label_set.num_classes, (6, 7))
    labels[0, :3] = label_set.ignore_index  # void pixels
    confidence = rng.random((6, 7))
    return label_set, rgb, labels, confidence


def test_every_output_against_an_independent_computation(scene):
    label_set, rgb, labels, confidence = scene
    out = render_outputs(rgb, labels, confidence, label_set, overlay_alpha=0.3)
    assert list(out) == list(OUTPUT_NAMES)
    ids, enc = out["labels"]
    assert enc == "mono8" and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, labels)
    colour, enc = out["color"]
    assert enc == "rgb8" and colour.shape == (6, 7, 3) and colour.dtype == np.uint8
    valid = labels != label_set.ignore_index
    np.testing.assert_array_equal(colour[valid], label_set.palette[labels[valid]])
    blended, enc = out["overlay"]
    assert enc == "rgb8"
    expected = 0.7 * rgb[valid].astype(np.float64) + 0.3 * label_set.palette[labels[valid]]
    assert np.abs(blended[valid] - expected).max() <= 1.0  # rounding only
    np.testing.assert_array_equal(blended[~valid], rgb[~valid])  # void keeps the colour image
    conf, enc = out["confidence"]
    assert enc == "32FC1" and conf.dtype == np.float32
    np.testing.assert_allclose(conf, confidence, rtol=1e-6)


def test_only_the_requested_outputs_are_made_in_one_order(scene, monkeypatch):
    label_set, rgb, labels, confidence = scene
    import rgbd_seg_ros.render as render

    def no_overlay(*args, **kwargs):
        raise AssertionError("overlay computed although not requested")

    monkeypatch.setattr(render, "overlay", no_overlay)
    out = render_outputs(rgb, labels, confidence, label_set, names=["confidence", "labels"])
    assert list(out) == ["labels", "confidence"]
    with pytest.raises(ValueError, match="unknown outputs"):
        render_outputs(rgb, labels, confidence, label_set, names=["labels", "depth"])


def test_label_images_are_mono16_above_255_classes():
    names = tuple(f"c{i}" for i in range(300))
    big = LabelSet("big", names, np.zeros((300, 3), np.uint8), ignore_index=65535)
    labels = np.array([[0, 299], [65535, 256]])
    ids, enc = render_outputs(np.zeros((2, 2, 3), np.uint8), labels, np.zeros((2, 2)), big, names=["labels"])["labels"]
    assert (labels_encoding(big), enc, ids.dtype) == ("mono16", "mono16", np.uint16)
    np.testing.assert_array_equal(ids, labels)
    assert labels_encoding(get_label_set("cityscapes-19")) == "mono8"


def test_write_png_round_trips_with_ordinary_permissions_and_no_temporary_files(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    path = write_png(tmp_path / "a.png", rgb)
    back = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, rgb)  # RGB order kept
    grey = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000
    np.testing.assert_array_equal(cv2.imread(str(write_png(tmp_path / "g.png", grey)), cv2.IMREAD_UNCHANGED), grey)
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "g.png"]
    with pytest.raises(FileNotFoundError):
        write_png(tmp_path / "missing" / "b.png", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "g.png"]


def test_node_and_replay_render_with_this_module():
    """One copy: neither the node nor the replay colours labels itself."""
    import inspect

    import rgbd_seg_ros.replay as replay

    source = inspect.getsource(replay)
    assert "render_outputs(" in source and "colorize(" not in source and "overlay(" not in source
    node_source = (replay.Path(replay.__file__).parent / "ros" / "node.py").read_text()
    assert "render_outputs(" in node_source and "colorize(" not in node_source and "overlay(" not in node_source
