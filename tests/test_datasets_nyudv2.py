"""NYUDv2 loaders on tiny files written in the real layouts: the official v7.3 .mat, SA-Gate and SGNet folders,
and the synthetic dataset (NYUDv2 folder layout with its own intrinsics)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from rgbd_seg_ros.datasets.nyudv2 import NYUDv2Folder, NYUDv2Mat
from rgbd_seg_ros.frames import CameraIntrinsics
from training import transforms as T
from training.datasets import build_dataset

N, H, W = 3, 480, 640


def _matlab_header(path: Path) -> None:
    """Put the MATLAB 7.3 text header into the file's 512-byte HDF5 user block, as MATLAB does."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def _cellstr(f: h5py.File, name: str, strings: list[str]) -> None:
    """A MATLAB 1×n cell array of char, stored as object references into #refs#."""
    refs = f.require_group("#refs#")
    targets = []
    for i, s in enumerate(strings):
        d = refs.create_dataset(f"{name}_{i}", data=np.frombuffer(s.encode(), np.uint8).astype(np.uint16)[:, None])
        d.attrs["MATLAB_class"] = np.bytes_("char")
        targets.append(d.ref)
    out = f.create_dataset(name, data=np.array(targets, dtype=h5py.ref_dtype)[None])
    out.attrs["MATLAB_class"] = np.bytes_("cell")


@pytest.fixture(scope="module")
def nyu_mat(tmp_path_factory):
    """nyu_depth_v2_labeled.mat (3 frames) + splits.mat + classMapping40.mat + class13Mapping.mat."""
    root = tmp_path_factory.mktemp("nyu_mat")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    images[:, 10, 600] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # asymmetric marker: catches a wrong transpose
    depths = rng.uniform(0.7, 9.9, (N, H, W)).astype(np.float32)
    raw = depths.copy()
    raw[rng.random(raw.shape) < 0.2] = 0.0
    labels = rng.integers(1, 895, (N, H, W)).astype(np.uint16)
    labels[rng.random(labels.shape) < 0.3] = 0
    path = root / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        # MATLAB stores column-major: an H×W×3×N array appears in HDF5 as N×3×W×H.
        for key, arr, cls in (
            ("images", images.transpose(0, 3, 2, 1), "uint8"),
            ("depths", depths.transpose(0, 2, 1), "single"),
            ("rawDepths", raw.transpose(0, 2, 1), "single"),
            ("labels", labels.transpose(0, 2, 1), "uint16"),
            ("instances", np.zeros((N, W, H), np.uint8), "uint8"),
        ):
            f.create_dataset(key, data=arr).attrs["MATLAB_class"] = np.bytes_(cls)
        _cellstr(f, "names", [f"object{i}" for i in range(894)])
        _cellstr(f, "sceneTypes", ["kitchen", "bedroom", "office"])
    _matlab_header(path)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1.0], [3.0]]), "testNdxs": np.array([[2.0]])})
    map40 = rng.integers(1, 41, 894).astype(np.float64)
    names40 = np.array([f"c{i}" for i in range(40)], dtype=object)
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": map40[None], "className": names40[None]})
    map13 = rng.integers(1, 14, 40).astype(np.float64)
    names13 = np.array([f"k{i}" for i in range(13)], dtype=object)
    scipy.io.savemat(
        root / "class13Mapping.mat", {"classMapping13": {"labels13": map13[None], "className": names13[None]}}
    )
    return {"root": root, "images": images, "depths": depths, "raw": raw, "labels": labels, "map40": map40,
            "map13": map13}  # fmt: skip


def test_mat_split_sizes_pixels_depth_and_labels(nyu_mat):
    root = nyu_mat["root"]
    train, test = build_dataset("nyudv2", root, "train"), build_dataset("nyudv2", root, "test")
    assert isinstance(train, NYUDv2Mat)
    assert (len(train), len(test)) == (2, 1)
    assert [train.sample_name(i) for i in range(2)] == ["0000", "0002"] and test.sample_name(0) == "0001"
    assert train.num_classes == 40 and train.class_names[0] == "c0"
    s = train[1]  # splits.mat index 3 (1-based) = frame 2
    np.testing.assert_array_equal(s.frame.rgb, nyu_mat["images"][2])
    assert s.frame.rgb[10, 600].tolist() == [7, 8, 9]
    np.testing.assert_array_equal(s.frame.depth, nyu_mat["depths"][2])
    assert s.frame.depth.dtype == np.float32
    assert s.frame.intrinsics == CameraIntrinsics.nyu_kinect()
    raw_ids = nyu_mat["labels"][2].astype(np.int64)
    expected = np.where(raw_ids == 0, 255, nyu_mat["map40"][np.maximum(raw_ids - 1, 0)] - 1).astype(np.uint8)
    np.testing.assert_array_equal(s.labels, expected)
    assert s.labels.dtype == np.uint8 and (s.labels == 255).any() and s.labels[s.labels != 255].max() <= 39


def test_mat_dataset_pickles_for_worker_processes(nyu_mat):
    ds = build_dataset("nyudv2", nyu_mat["root"], "train")
    first = ds[0]  # opens the HDF5 file in this process
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn worker receives: no open handle inside
    np.testing.assert_array_equal(clone[0].labels, first.labels)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("nyu", nyu_mat["root"], "train")


def test_mat_raw_depth_and_13_classes(nyu_mat):
    root = nyu_mat["root"]
    s = build_dataset("nyudv2", root, "test", depth="raw", num_classes=13)[0]
    raw = nyu_mat["raw"][1]
    assert np.array_equal(np.isnan(s.frame.depth), raw == 0)
    np.testing.assert_array_equal(s.frame.depth[raw > 0], raw[raw > 0])
    raw_ids = nyu_mat["labels"][1].astype(np.int64)
    c40 = nyu_mat["map40"][np.maximum(raw_ids - 1, 0)].astype(np.int64)
    expected = np.where(raw_ids == 0, 255, nyu_mat["map13"][c40 - 1] - 1).astype(np.uint8)
    np.testing.assert_array_equal(s.labels, expected)
    assert s.labels[s.labels != 255].max() <= 12


def test_mat_bad_inputs(nyu_mat, tmp_path):
    root = nyu_mat["root"]
    for name in ("nyu_depth_v2_labeled.mat", "classMapping40.mat"):
        (tmp_path / name).symlink_to(root / name)
    with pytest.raises(FileNotFoundError, match=r"splits\.mat"):
        NYUDv2Mat(tmp_path, "train")
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1.0], [5.0]]), "testNdxs": np.array([[2.0]])})
    with pytest.raises(ValueError, match=r"splits\.mat.*1\.\.3"):
        NYUDv2Mat(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be"):
        NYUDv2Mat(root, "val")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("splits.mat", "classMapping40.mat"):
        (bad / name).symlink_to(root / name)
    with h5py.File(bad / "nyu_depth_v2_labeled.mat", "w") as f:  # not transposed: H×W order
        f["images"] = np.zeros((N, 3, H, W), np.uint8)
        for key in ("depths", "rawDepths", "labels"):
            f[key] = np.zeros((N, H, W), np.float32)
    with pytest.raises(ValueError, match="'images' has HDF5 shape"):
        NYUDv2Mat(bad, "train")
    with h5py.File(bad / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = np.zeros((N, 3, W, H), np.uint8)
    with pytest.raises(ValueError, match="no variable 'depths'"):
        NYUDv2Mat(bad, "train")


# -- folder layouts ---------------------------------------------------------------------------------------------
def _write_frames(rng, paths: dict[str, Path], depth_kind: str, size=(H, W)) -> dict[str, np.ndarray]:
    h, w = size
    v, u = np.mgrid[0:h, 0:w]
    rgb = np.stack([u * 255 // w, v * 255 // h, np.full_like(u, rng.integers(0, 256))], -1).astype(np.uint8)
    ids = rng.integers(0, 41, (h, w)).astype(np.uint8)
    depth_m = np.round(rng.uniform(0.5, 9.0, (h, w)), 3).astype(np.float32)
    depth_m[rng.random((h, w)) < 0.2] = 0
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(paths["rgb"]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(paths["label"]), np.repeat(ids[..., None], 3, 2))  # SA-Gate: 3 identical channels
    if depth_kind == "npy":
        np.save(paths["depth"], depth_m)
    else:
        cv2.imwrite(str(paths["depth"]), np.round(depth_m * 1000).astype(np.uint16))
    if "hha" in paths:
        cv2.imwrite(str(paths["hha"]), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return {"rgb": rgb, "ids": ids, "depth": depth_m}


def _expected_labels(ids: np.ndarray) -> np.ndarray:
    return np.where(ids == 0, 255, ids.astype(np.int64) - 1).astype(np.uint8)


def test_folder_sagate_layout(tmp_path):
    rng = np.random.default_rng(1)
    frames = {}
    for i in range(3):
        paths = {"rgb": tmp_path / f"RGB/{i}.png", "label": tmp_path / f"Label/{i}.png",
                 "depth": tmp_path / f"Depth/{i}.npy", "hha": tmp_path / f"HHA/{i}.jpg"}  # fmt: skip
        frames[str(i)] = _write_frames(rng, paths, "npy")
    (tmp_path / "train.txt").write_text("RGB/0.png\tLabel/0.png\nRGB/2.png\tLabel/2.png\n")
    (tmp_path / "test.txt").write_text("RGB/1.png\tLabel/1.png\n")
    train = build_dataset("nyudv2", tmp_path, "train", load_hha=True)
    assert isinstance(train, NYUDv2Folder) and len(train) == 2 and len(build_dataset("nyudv2", tmp_path, "test")) == 1
    s = train[1]
    ref = frames["2"]
    assert s.name == "2"
    np.testing.assert_array_equal(s.frame.rgb, ref["rgb"])
    np.testing.assert_array_equal(s.labels, _expected_labels(ref["ids"]))
    assert np.array_equal(np.isnan(s.frame.depth), ref["depth"] == 0)
    np.testing.assert_array_equal(s.frame.depth[ref["depth"] > 0], ref["depth"][ref["depth"] > 0])
    assert s.frame.intrinsics == CameraIntrinsics.nyu_kinect()
    assert s.frame.meta["hha"].shape == (H, W, 3) and s.frame.meta["hha"].dtype == np.uint8


def test_folder_sgnet_layout_with_prefix_and_mm_depth(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "NYUDatasets"
    frames = {}
    lines = {"train": [], "val": []}
    for split, idx in (("train", 1), ("train", 3), ("val", 2)):  # 1-based NYU indices
        kinds = (
            ("rgb", "images", "jpg"),
            ("label", "labels", "png"),
            ("depth", "depths", "png"),
            ("hha", "HHAs", "png"),
        )
        rel = {k: f"{d}/{split}/{idx}.{e}" for k, d, e in kinds}
        frames[str(idx)] = _write_frames(rng, {k: root / v for k, v in rel.items()}, "png")
        lines[split].append(" ".join(f"./dataset/NYUDatasets/{rel[k]}" for k in ("rgb", "label", "depth", "hha")))
    # Label PNGs may be palette images: the loader must read the indices, not the palette colours.
    pal = Image.fromarray(frames["2"]["ids"], mode="P")
    pal.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    pal.save(root / "labels/val/2.png")
    (root / "train_nyud.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "test_nyud.txt").write_text("\n".join(lines["val"]) + "\n")
    train, test = build_dataset("nyudv2", root, "train"), build_dataset("nyudv2", root, "test", load_hha=True)
    assert (len(train), len(test)) == (2, 1)
    s = test[0]
    ref = frames["2"]
    assert s.name == "2"
    np.testing.assert_array_equal(s.labels, _expected_labels(ref["ids"]))
    valid = ref["depth"] > 0
    np.testing.assert_allclose(s.frame.depth[valid], ref["depth"][valid], atol=1e-6)  # mm PNG → metres
    assert np.isnan(s.frame.depth[~valid]).all()
    assert np.abs(s.frame.rgb.astype(int) - ref["rgb"]).max() < 12  # JPEG is lossy; orientation/channels right
    assert "hha" in s.frame.meta and "hha" not in train[0].frame.meta


def test_folder_bad_inputs(tmp_path):
    rng = np.random.default_rng(3)
    paths = {"rgb": tmp_path / "RGB/0.png", "label": tmp_path / "Label/0.png", "depth": tmp_path / "Depth/0.png"}
    _write_frames(rng, paths, "png", size=(48, 64))
    (tmp_path / "train.txt").write_text("RGB/0.png Label/0.png\nRGB/7.png Label/7.png\n")
    with pytest.raises(FileNotFoundError, match=r"RGB/7\.png"):
        build_dataset("nyudv2", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        build_dataset("nyudv2", tmp_path, "test")
    (tmp_path / "train.txt").write_text("RGB/0.png Label/0.png\n")
    with pytest.raises(ValueError, match=r"RGB/0\.png is 64x48 .*640x480"):  # no intrinsics.yaml, not 640×480
        build_dataset("nyudv2", tmp_path, "train")[0]
    (tmp_path / "intrinsics.yaml").write_text("fx: 50\nfy: 50\ncx: 31.5\ncy: 23.5\nwidth: 64\nheight: 48\n")
    ds = build_dataset("nyudv2", tmp_path, "train")
    assert ds[0].frame.intrinsics == CameraIntrinsics(50, 50, 31.5, 23.5, 64, 48)
    cv2.imwrite(str(paths["depth"]), np.ones((40, 64), np.uint16))
    with pytest.raises(ValueError, match=r"Depth/0\.png is 64x40"):
        ds[0]
    cv2.imwrite(str(paths["depth"]), np.ones((48, 64), np.uint16))
    cv2.imwrite(str(paths["label"]), np.full((48, 64), 41, np.uint8))
    with pytest.raises(ValueError, match=r"Label/0\.png.*outside 0\.\.40"):
        ds[0]
    with pytest.raises(IndexError):
        ds[1]


def test_synthetic_reads_through_the_folder_loader(tmp_path):
    from rgbd_seg_ros.synthetic import write_dataset

    root = write_dataset(tmp_path / "syn", n_train=3, n_test=2, size=(48, 64), seed=0)
    train, test = build_dataset("synthetic", root, "train"), build_dataset("synthetic", root, "test")
    assert (len(train), len(test)) == (3, 2)
    s = test[1]
    assert s.name == "4" and s.frame.intrinsics == CameraIntrinsics.nyu_kinect(64, 48)
    mm = cv2.imread(str(root / "Depth/4.png"), cv2.IMREAD_UNCHANGED)
    assert mm.dtype == np.uint16
    np.testing.assert_allclose(s.frame.depth[mm > 0], mm[mm > 0] / 1000.0, rtol=1e-6)
    assert np.isnan(s.frame.depth[mm == 0]).all()
    ids = cv2.imread(str(root / "Label/4.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(s.labels, _expected_labels(ids))
    flipped = build_dataset("synthetic", root, "test", transforms=T.RandomHorizontalFlip(p=1.0))[1]
    np.testing.assert_array_equal(flipped.labels, s.labels[:, ::-1])
    assert flipped.frame.intrinsics == s.frame.intrinsics.flipped()
    (root / "intrinsics.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"intrinsics\.yaml"):
        build_dataset("synthetic", root, "train")
