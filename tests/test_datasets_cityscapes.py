"""Cityscapes RGB-D loader on a 2-city tree in the official leftImg8bit / disparity / camera / gtFine layout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from rgbd_seg_ros.datasets.cityscapes import Cityscapes
from training.datasets import build_dataset

H, W = 32, 64  # the real frames are 2048×1024; the layout, not the size, is what the loader depends on
FRAMES = {"train": [("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
                    ("bochum", "bochum_000000_000313")],
          "val": [("frankfurt", "frankfurt_000000_000294")]}  # fmt: skip
# labelId → trainId for a few ids (cityscapesScripts labels.py): road 7→0, car 26→13, bicycle 33→18,
# person 24→11; unlabeled 0 and parking 9 are not evaluated → 255.
ID_PAIRS = [(7, 0), (26, 13), (33, 18), (0, 255), (9, 255), (24, 11)]


def _write_tree(root: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    truth = {}
    for split, frames in FRAMES.items():
        for city, stem in frames:
            dirs = {k: root / k / split / city for k in ("leftImg8bit", "disparity", "camera", "gtFine")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            v, u = np.mgrid[0:H, 0:W]
            rgb = np.stack([u * 4, v * 8, np.full_like(u, 50)], -1).astype(np.uint8)
            cv2.imwrite(str(dirs["leftImg8bit"] / f"{stem}_leftImg8bit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            disp = rng.integers(2, 30000, (H, W)).astype(np.uint16)
            disp[0, :5] = 0  # invalid
            disp[1, :5] = 1  # zero disparity: infinitely far → invalid
            cv2.imwrite(str(dirs["disparity"] / f"{stem}_disparity.png"), disp)
            cam = {"extrinsic": {"baseline": 0.209313 + rng.uniform(0, 0.01), "pitch": 0.038, "roll": 0.0,
                                 "x": 1.7, "y": 0.1, "yaw": -0.0195, "z": 1.18},
                   "intrinsic": {"fx": 2262.52 * W / 2048, "fy": 2265.30 * W / 2048, "u0": 1096.98 * W / 2048,
                                 "v0": 513.137 * W / 2048}}  # fmt: skip
            (dirs["camera"] / f"{stem}_camera.json").write_text(json.dumps(cam))
            pair = rng.integers(0, len(ID_PAIRS), (H, W))
            label_ids = np.array([p[0] for p in ID_PAIRS], np.uint8)[pair]
            train_ids = np.array([p[1] for p in ID_PAIRS], np.uint8)[pair]
            cv2.imwrite(str(dirs["gtFine"] / f"{stem}_gtFine_labelIds.png"), label_ids)
            cv2.imwrite(str(dirs["gtFine"] / f"{stem}_gtFine_labelTrainIds.png"), train_ids)
            truth[f"{city}/{stem}"] = {"rgb": rgb, "disp": disp, "cam": cam, "train_ids": train_ids}
    return truth


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return root, _write_tree(root)


@pytest.mark.parametrize("labels", ["labelTrainIds", "labelIds"])
def test_split_sizes_depth_intrinsics_labels(cs, labels):
    root, truth = cs
    train = build_dataset("cityscapes", root, "train", labels=labels)
    assert isinstance(train, Cityscapes) and len(train) == 3 and len(build_dataset("cityscapes", root, "val")) == 1
    assert train.num_classes == 19
    assert [train.sample_name(i) for i in range(3)] == [f"{c}/{s}" for c, s in FRAMES["train"]]
    for i in range(3):
        s = train[i]
        t = truth[s.name]
        np.testing.assert_array_equal(s.frame.rgb, t["rgb"])
        np.testing.assert_array_equal(s.labels, t["train_ids"])
        k, cam = s.frame.intrinsics, t["cam"]
        assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == pytest.approx(
            (cam["intrinsic"]["fx"], cam["intrinsic"]["fy"], cam["intrinsic"]["u0"], cam["intrinsic"]["v0"], W, H)
        )
        p = t["disp"].astype(np.float64)
        valid = p > 1
        expected = cam["extrinsic"]["baseline"] * cam["intrinsic"]["fx"] / ((p[valid] - 1) / 256)
        np.testing.assert_allclose(s.frame.depth[valid], expected, rtol=1e-6)
        assert np.isnan(s.frame.depth[~valid]).all() and (~valid).sum() == 10


def test_bad_inputs(cs, tmp_path):
    root, _ = cs
    with pytest.raises(ValueError, match="split must be"):
        build_dataset("cityscapes", root, "training")
    # A frame whose disparity file is missing: the error names it.
    copy = tmp_path / "cs"
    shutil.copytree(root, copy)
    missing = copy / "disparity/train/bochum/bochum_000000_000313_disparity.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_dataset("cityscapes", copy, "train")
    cam = copy / "camera/val/frankfurt/frankfurt_000000_000294_camera.json"
    cam.write_text(json.dumps({"intrinsic": {"fx": 1.0}}))
    with pytest.raises(ValueError, match=re.escape(str(cam))):
        build_dataset("cityscapes", copy, "val")[0]
    lab = copy / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"
    cv2.imwrite(str(lab), np.full((H, W), 19, np.uint8))  # 19 is not a train id
    cam.write_text(json.dumps({"intrinsic": {"fx": 2.0, "fy": 2.0, "u0": 1.0, "v0": 1.0},
                               "extrinsic": {"baseline": 0.2}}))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(str(lab)) + r".*\[19\]"):
        build_dataset("cityscapes", copy, "val")[0]
