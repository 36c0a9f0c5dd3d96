"""SUN RGB-D loader on a 3-scene tree in the official SUNRGBD/ + SUNRGBDtoolbox/ layout."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from rgbd_seg_ros.datasets.sunrgbd import SUNRGBD
from rgbd_seg_ros.frames import CameraIntrinsics
from training.datasets import build_dataset

PREFIX = "/n/fs/sun3d/data/SUNRGBD/"
# (scene folder below SUNRGBD/, image stem, (height, width), K) — real folder names and image sizes per sensor.
SCENES = [
    ("kv2/kinect2data/000065_2014-05-16_20-14-38_260595134347_rgbf000121-resize", "0000121", (530, 730),
     (529.5, 529.5, 365.0, 265.0)),
    ("kv1/NYUdata/NYU0001", "NYU0001", (427, 561), (518.857901, 519.469611, 284.582449, 208.736166)),
    ("realsense/lg/2014_10_24-14_15_02-1311000073", "0000001", (441, 681), (693.74, 693.74, 360.37, 264.75)),
]  # fmt: skip
TRAIN, TEST = [1, 2], [0]  # indices into SCENES (= SUNRGBDMeta order)


def _encode_depth(mm: np.ndarray) -> np.ndarray:
    """The SUN RGB-D file encoding: millimetres rotated left by 3 bits in 16 bits."""
    mm = mm.astype(np.uint16)
    return (mm << np.uint16(3)) | (mm >> np.uint16(13))


def _write_tree(root: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data, truth = root / "SUNRGBD", {}
    refs_data = []
    for scene, stem, (h, w), k in SCENES:
        d = data / scene
        for sub in ("image", "depth", "depth_bfx"):
            (d / sub).mkdir(parents=True)
        v, u = np.mgrid[0:h, 0:w]
        rgb = np.stack([u * 255 // w, v * 255 // h, np.full_like(u, 90)], -1).astype(np.uint8)
        cv2.imwrite(str(d / "image" / f"{stem}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        mm = {kind: rng.integers(300, 9500, (h, w)) for kind in ("depth", "depth_bfx")}
        mm["depth"][rng.random((h, w)) < 0.2] = 0
        for kind, arr in mm.items():
            cv2.imwrite(str(d / kind / f"{stem}.png"), _encode_depth(arr))
        (d / "intrinsics.txt").write_text(f"{k[0]} 0 {k[2]}\n0 {k[1]} {k[3]}\n0 0 1\n")
        (d / "scene.txt").write_text("office")
        ids = rng.integers(0, 38, (h, w))
        refs_data.append(ids)
        truth[scene] = {"rgb": rgb, "mm": mm, "ids": ids, "k": k, "size": (h, w)}
    meta_dir = root / "SUNRGBDtoolbox" / "Metadata"
    meta_dir.mkdir(parents=True)
    fields = [("sequenceName", "O"), ("rgbpath", "O"), ("depthpath", "O"), ("rgbname", "O"), ("depthname", "O"),
              ("K", "O")]  # fmt: skip
    meta = np.zeros((1, len(SCENES)), dtype=fields)
    for i, (scene, stem, _, k) in enumerate(SCENES):
        kmat = np.array([[k[0], 0, k[2]], [0, k[1], k[3]], [0, 0, 1.0]])
        paths = (f"{PREFIX}{scene}/image/{stem}.jpg", f"{PREFIX}{scene}/depth/{stem}.png")
        meta[0, i] = (f"SUNRGBD/{scene}", *paths, f"{stem}.jpg", f"{stem}.png", kmat)
    scipy.io.savemat(meta_dir / "SUNRGBDMeta.mat", {"SUNRGBDMeta": meta})
    # SUNRGBD2Dseg.mat is MATLAB v7.3: struct SUNRGBD2Dseg whose field seglabel is an N×1 array of references
    # to the (column-major, hence W×H) label images.
    with h5py.File(meta_dir / "SUNRGBD2Dseg.mat", "w") as f:
        refs = f.create_group("#refs#")
        seglabel = f.create_group("SUNRGBD2Dseg").create_dataset("seglabel", (len(SCENES), 1), dtype=h5py.ref_dtype)
        for i, ids in enumerate(refs_data):
            seglabel[i, 0] = refs.create_dataset(f"l{i}", data=ids.T.astype(np.float64)).ref
    split_dir = root / "SUNRGBDtoolbox" / "traintestSUNRGBD"
    split_dir.mkdir(parents=True)
    cell = lambda idx: np.array([f"{PREFIX}{SCENES[i][0]}/" for i in idx], dtype=object)[None]  # noqa: E731
    trainval = {"train": cell(TRAIN[:1]), "val": cell(TRAIN[1:])}
    scipy.io.savemat(
        split_dir / "allsplit.mat", {"alltrain": cell(TRAIN), "alltest": cell(TEST), "trainvalsplit": trainval}
    )
    return truth


@pytest.fixture(scope="module")
def sun(tmp_path_factory):
    root = tmp_path_factory.mktemp("sun")
    return root, _write_tree(root)


def test_split_sizes_and_sensor_exclusion(sun):
    root, _ = sun
    train, test = build_dataset("sunrgbd", root, "train"), build_dataset("sunrgbd", root, "test")
    assert isinstance(train, SUNRGBD) and (len(train), len(test)) == (2, 1)
    assert [train.sample_name(i) for i in range(2)] == [SCENES[1][0], SCENES[2][0]]
    assert test.sample_name(0) == SCENES[0][0]
    assert len(build_dataset("sunrgbd", root, "train", exclude_sensors=("realsense",))) == 1
    assert train.num_classes == 37 and train.class_names[-1] == "bag"


@pytest.mark.parametrize("depth", ["refined", "raw"])
def test_decoded_values(sun, depth):
    root, truth = sun
    ds = build_dataset("sunrgbd", root, "train", depth=depth)
    for i, meta_index in enumerate(TRAIN):
        scene, _, (h, w), k = SCENES[meta_index]
        t, s = truth[scene], ds[i]
        mm = t["mm"]["depth_bfx" if depth == "refined" else "depth"]
        assert s.frame.rgb.shape == (h, w, 3)
        assert np.abs(s.frame.rgb.astype(int) - t["rgb"]).max() < 12  # JPEG; checks orientation and RGB order
        expected = np.where(mm > 8000, 8.0, mm / 1000.0)  # the toolbox clips at 8 m
        valid = mm > 0
        np.testing.assert_allclose(s.frame.depth[valid], expected[valid], rtol=1e-6)
        assert np.isnan(s.frame.depth[~valid]).all() and (depth == "refined") == valid.all()
        np.testing.assert_array_equal(s.labels, np.where(t["ids"] == 0, 255, t["ids"] - 1).astype(np.uint8))
        assert s.frame.intrinsics == CameraIntrinsics(k[0], k[1], k[2], k[3], w, h)
    unclipped = build_dataset("sunrgbd", root, "test", max_depth_m=None)[0]
    assert np.nanmax(unclipped.frame.depth) > 8.0
    clone = pickle.loads(pickle.dumps(ds))  # the HDF5 label file reopens lazily in a worker process
    np.testing.assert_array_equal(clone[0].labels, ds[0].labels)


def test_bad_inputs(sun, tmp_path):
    src, _ = sun
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    img = root / "SUNRGBD" / SCENES[2][0] / "image" / f"{SCENES[2][1]}.jpg"
    img.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(img))):
        build_dataset("sunrgbd", root, "train")
    assert len(build_dataset("sunrgbd", root, "test")) == 1  # the other split is unaffected
    split = root / "SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat"
    scipy.io.savemat(split, {"alltrain": np.array([f"{PREFIX}kv2/unknown_scene/"], dtype=object)[None],
                             "alltest": np.array([f"{PREFIX}{SCENES[0][0]}"], dtype=object)[None]})  # fmt: skip
    with pytest.raises(ValueError, match="kv2/unknown_scene"):
        build_dataset("sunrgbd", root, "train")
    with h5py.File(root / "SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat", "r+") as f:  # a label of the wrong size
        ref = f["SUNRGBD2Dseg"]["seglabel"][0, 0]
        name = f[ref].name
        del f[name]
        f[name] = np.zeros((10, 10))
    with pytest.raises(ValueError, match=r"SUNRGBD2Dseg.*is 10x10"):
        build_dataset("sunrgbd", root, "test")[0]
    (root / "SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"SUNRGBD2Dseg\.mat"):
        build_dataset("sunrgbd", root, "test")
