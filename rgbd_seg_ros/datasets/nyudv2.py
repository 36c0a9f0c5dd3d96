"""NYU Depth v2 (1449 labelled frames; the standard 795 train / 654 test split; 40 or 13 classes).

Two on-disk forms are read:

* :class:`NYUDv2Mat`: the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, read with h5py) plus the
  official split file and the 894→40 class mapping.
* :class:`NYUDv2Folder`: the common extracted folder layout (SA-Gate's ``RGB/ Depth/ HHA/ Label/`` with
  0-based names, SGNet's ``images/ depths/ HHAs/ labels/`` lists with 1-based names), also used by the
  package's synthetic dataset.

Label convention (both): raw id 0 = unlabelled → 255 (ignore); NYUv2-40 id k → class k − 1 (0..39).
Intrinsics: the NYU Kinect colour camera (:meth:`CameraIntrinsics.nyu_kinect`) unless an ``intrinsics.yaml``
says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import yaml

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres

from .base import RGBDDataset, Sample, Transform
from .io import (
    apply_lut,
    check_same_size,
    loadmat,
    make_lut,
    read_rgb,
    read_single_channel,
    read_unchanged,
    require_file,
    require_files,
    shifted_lut,
)

NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)  # fmt: skip

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
MAPPING40_FILE = "classMapping40.mat"
MAPPING13_FILE = "class13Mapping.mat"
_SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}


def _matlab_strings(cell: Any) -> tuple[str, ...]:
    """A MATLAB cell array of strings as read by scipy.io.loadmat → tuple of str."""
    return tuple(str(np.asarray(c).ravel()[0]) for c in np.asarray(cell, dtype=object).ravel())


class NYUDv2Mat(RGBDDataset):
    """NYUDv2 from the official labelled ``.mat`` file.

    Files the user needs in ``root`` (names as published):

    * ``nyu_depth_v2_labeled.mat``: the NYU release (2.8 GB, MATLAB v7.3). Variables used, with their
      HDF5 (column-major, hence transposed) shapes: ``images`` N×3×640×480 uint8, ``depths`` N×640×480
      (in-painted, metres), ``rawDepths`` N×640×480 (metres, 0 = no return), ``labels`` N×640×480 (0..894,
      0 = unlabelled).
    * ``splits.mat``: the official split, ``trainNdxs`` (795×1) and ``testNdxs`` (654×1), **1-based** indices
      into the 1449 frames (from the NYU "indoor_seg_sup" page).
    * ``classMapping40.mat``: Gupta et al.'s 894→40 mapping, ``mapClass`` (1×894, values 1..40) and
      ``className`` (1×40 cell).
    * ``class13Mapping.mat`` (only for ``num_classes=13``): ``classMapping13.labels13`` (1×40, values 1..13)
      and ``classMapping13.className``; applied after the 894→40 mapping.

    Args:
        root: folder holding the files above.
        split: ``train`` or ``test``.
        num_classes: 40 or 13. (The raw 894 classes do not fit the uint8 label contract.)
        depth: ``inpainted`` (the ``depths`` variable: the depth the NYUv2 RGB-D papers' released data
            derive from) or ``raw`` (``rawDepths``, holes as NaN).

    Sample names are the 0-based frame index, zero-padded to 4 digits (``splits.mat`` index − 1).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Transform | None = None,
        cache_dir: str | Path | None = None,
        num_classes: Literal[40, 13] = 40,
        depth: Literal["inpainted", "raw"] = "inpainted",
    ) -> None:
        super().__init__(transforms, cache_dir)
        if split not in _SPLIT_KEYS:
            raise ValueError(f"NYUDv2 split must be one of {tuple(_SPLIT_KEYS)}, got {split!r}")
        if depth not in ("inpainted", "raw"):
            raise ValueError(f"depth must be 'inpainted' or 'raw', got {depth!r}")
        if num_classes not in (40, 13):
            raise ValueError(f"NYUDv2 num_classes must be 40 or 13, got {num_classes!r}")
        self.root = Path(root)
        self.split, self.depth_kind, self._num_classes = split, depth, int(num_classes)
        self.mat_path = require_file(self.root / MAT_FILE, "NYUDv2 labelled .mat file")
        self._lut, self.class_names = self._read_mapping()
        count = self._check_mat()
        self.indices = self._read_split(count)
        self._h5: h5py.File | None = None
        self._h5_pid = -1

    # -- setup ----------------------------------------------------------------------------------------------
    def _read_mapping(self) -> tuple[np.ndarray, tuple[str, ...]]:
        path = require_file(self.root / MAPPING40_FILE, "NYUDv2 894→40 class mapping", "classMapping40.mat")
        mat = loadmat(path, "NYUDv2 894→40 class mapping")
        if "mapClass" not in mat:
            raise ValueError(f"{path} has no variable 'mapClass' (the 894→40 mapping)")
        map40 = np.asarray(mat["mapClass"]).ravel().astype(np.int64)
        if map40.size != 894 or map40.min() < 1 or map40.max() > 40:
            raise ValueError(
                f"{path}: mapClass must hold 894 values in 1..40, got {map40.size} in {map40.min()}..{map40.max()}"
            )
        names = _matlab_strings(mat["className"]) if "className" in mat else NYU40_CLASSES
        to_class = map40 - 1  # raw id k (1..894) → 0..39
        if self._num_classes == 13:
            path13 = require_file(self.root / MAPPING13_FILE, "NYUDv2 40→13 class mapping", "class13Mapping.mat")
            mat13 = loadmat(path13, "NYUDv2 40→13 class mapping", squeeze_me=True, struct_as_record=False)
            struct = mat13.get("classMapping13")
            if struct is None or not hasattr(struct, "labels13"):
                raise ValueError(f"{path13} has no struct 'classMapping13' with field 'labels13'")
            map13 = np.asarray(struct.labels13).ravel().astype(np.int64)
            if map13.size != 40 or map13.min() < 1 or map13.max() > 13:
                raise ValueError(f"{path13}: labels13 must hold 40 values in 1..13")
            to_class = map13[to_class] - 1
            names = (
                _matlab_strings(struct.className)
                if hasattr(struct, "className")
                else tuple(f"class{i}" for i in range(13))
            )
        if len(names) != self._num_classes:
            raise ValueError(f"the class-name list of the {self._num_classes}-class mapping has {len(names)} entries")
        lut = make_lut(np.concatenate([[255], to_class]).astype(np.int16), 895)
        return lut, tuple(names)

    def _check_mat(self) -> int:
        """Validate variable names and (transposed) shapes; return the number of frames."""
        try:
            f = h5py.File(self.mat_path, "r")
        except OSError as exc:
            raise ValueError(f"{self.mat_path} is not a MATLAB v7.3 (HDF5) file: {exc}") from exc
        with f:
            for key in ("images", "depths", "rawDepths", "labels"):
                if key not in f:
                    raise ValueError(f"{self.mat_path} has no variable {key!r} (is it nyu_depth_v2_labeled.mat?)")
            n = f["images"].shape[0]
            expected = {"images": (n, 3, 640, 480), "depths": (n, 640, 480), "rawDepths": (n, 640, 480),
                        "labels": (n, 640, 480)}  # fmt: skip
            for key, shape in expected.items():
                if f[key].shape != shape:
                    raise ValueError(
                        f"{self.mat_path}: variable {key!r} has HDF5 shape {f[key].shape}, expected {shape} "
                        "(N×[3×]W×H, MATLAB column-major, 640×480 frames)"
                    )
        return n

    def _read_split(self, count: int) -> np.ndarray:
        path = require_file(self.root / SPLITS_FILE, "NYUDv2 split file", "the official splits.mat")
        key = _SPLIT_KEYS[self.split]
        mat = loadmat(path, "NYUDv2 split file")
        if key not in mat:
            raise ValueError(f"{path} has no variable {key!r}")
        idx = np.asarray(mat[key], dtype=np.float64).ravel()
        if not np.array_equal(idx, np.round(idx)) or idx.min() < 1 or idx.max() > count:
            raise ValueError(
                f"{path}: {key} must hold 1-based frame indices in 1..{count}, got {idx.min():g}..{idx.max():g}"
            )
        return idx.astype(np.int64) - 1

    # -- access ---------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_h5_pid"] = None, -1  # HDF5 handles do not survive pickling or fork
        return state

    def _file(self) -> h5py.File:
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5, self._h5_pid = h5py.File(self.mat_path, "r"), os.getpid()
        return self._h5

    def __len__(self) -> int:
        return len(self.indices)

    def sample_name(self, index: int) -> str:
        return f"{int(self.indices[index]):04d}"

    def load(self, index: int) -> Sample:
        f, i = self._file(), int(self.indices[index])
        rgb = np.ascontiguousarray(np.asarray(f["images"][i]).transpose(2, 1, 0))
        raw_depth = np.asarray(f["depths" if self.depth_kind == "inpainted" else "rawDepths"][i], np.float32).T
        ids = np.asarray(f["labels"][i]).T
        where = f"{self.mat_path}[labels][{i}]"
        labels = apply_lut(ids, self._lut, where)
        frame = RGBDFrame(rgb, depth_to_metres(np.ascontiguousarray(raw_depth)), CameraIntrinsics.nyu_kinect())
        return Sample(frame, labels, self.sample_name(index))


# -- extracted folder layout --------------------------------------------------------------------------------
_DEPTH_DIRS = {"RGB": "Depth", "images": "depths", "image": "depth", "rgb": "depth"}
_HHA_DIRS = {"RGB": "HHA", "images": "HHAs", "image": "hha", "rgb": "hha"}
_DEPTH_EXTS, _HHA_EXTS, _RGB_EXTS = (".png", ".npy"), (".jpg", ".png"), (".jpg", ".png")


def read_intrinsics_yaml(path: Path) -> CameraIntrinsics:
    """``intrinsics.yaml`` with keys fx, fy, cx, cy (pixels, 0-based pixel centres), width, height."""
    with open(require_file(path, "intrinsics file")) as f:
        data = yaml.safe_load(f) or {}
    missing = [k for k in ("fx", "fy", "cx", "cy", "width", "height") if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing} (needs fx, fy, cx, cy, width, height)")
    return CameraIntrinsics(
        *(float(data[k]) for k in ("fx", "fy", "cx", "cy")), int(data["width"]), int(data["height"])
    )


def _sibling(rgb: Path, dirs: dict[str, str], exts: tuple[str, ...], what: str) -> Path:
    """The file of another modality next to ``rgb``: same stem, sibling directory per ``dirs``, first ext found."""
    if rgb.parent.name in dirs:  # RGB/<n>.jpg
        base = rgb.parent.parent / dirs[rgb.parent.name]
    elif rgb.parent.parent.name in dirs:  # SGNet-style images/<split>/<n>.jpg
        base = rgb.parent.parent.parent / dirs[rgb.parent.parent.name] / rgb.parent.name
    else:
        raise FileNotFoundError(
            f"cannot derive the {what} file of {rgb}: its folder is none of {sorted(dirs)}; list the {what} path "
            "as an extra column of the split list"
        )
    candidates = [base / (rgb.stem + ext) for ext in exts]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no {what} file for {rgb}; looked for {', '.join(map(str, candidates))}")


class NYUDv2Folder(RGBDDataset):
    """NYUDv2 (or the synthetic dataset) in the common extracted folder layout.

    Files under ``root``:

    * a split list, ``<split>.txt`` (or ``<split>_nyud.txt``, or ``split_file``), one frame per line, in any of
      these forms (whitespace-separated):
        - ``RGB/0.jpg  Label/0.png`` (SA-Gate, 0-based names; depth from ``Depth/<stem>.png|.npy``);
        - ``images/train/1.jpg labels/train/1.png depths/train/1.png HHAs/train/1.png`` (SGNet, 1-based
          names; a leading path prefix such as ``./dataset/NYUDatasets/`` is stripped when ``root`` is that
          folder);
        - ``RGB/0.png Label/0.png Depth/0.png`` (explicit depth);
    * RGB images (8-bit, jpg/png); labels as 8-bit PNG with NYUv2-40 ids 0..40 (0 = unlabelled; 1- or
      3-channel with identical channels); depth as 16-bit PNG in millimetres (0 = invalid) or ``.npy``
      float32 metres;
    * optionally HHA images (``HHA/<stem>.jpg|png`` or the 4th list column), loaded with ``load_hha=True``
      into ``frame.meta["hha"]`` (uint8, file read as RGB = disparity, height, angle);
    * optionally ``intrinsics.yaml`` (fx, fy, cx, cy, width, height). Without it the NYU Kinect colour
      camera is used and every image must be 640×480 (crops of NYU need their own intrinsics file).

    Sample names are the RGB file stems.
    """

    class_names = NYU40_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Transform | None = None,
        cache_dir: str | Path | None = None,
        split_file: str | Path | None = None,
        load_hha: bool = False,
        require_intrinsics_file: bool = False,
    ) -> None:
        super().__init__(transforms, cache_dir)
        self.root, self.split, self.load_hha = Path(root), split, bool(load_hha)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.list_path = self._find_list(split_file)
        intr_path = self.root / "intrinsics.yaml"
        if intr_path.is_file():
            self.intrinsics: CameraIntrinsics | None = read_intrinsics_yaml(intr_path)
        elif require_intrinsics_file:
            raise FileNotFoundError(f"intrinsics file not found: {intr_path}")
        else:
            self.intrinsics = None
        self.entries = self._parse_list()

    def _find_list(self, split_file: str | Path | None) -> Path:
        if split_file is not None:
            return require_file(self.root / split_file, f"{self.split!r} split list")
        candidates = [self.root / f"{self.split}.txt", self.root / f"{self.split}_nyud.txt"]
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"{self.split!r} split list not found: looked for {', '.join(map(str, candidates))}")

    def _parse_list(self) -> list[dict[str, Path]]:
        lines = [ln.split() for ln in self.list_path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"split list {self.list_path} is empty")
        strip = self._prefix_strip(lines[0][0])

        def resolve(token: str) -> Path:
            parts = Path(token).parts
            return self.root.joinpath(*parts[strip:]) if not Path(token).is_absolute() else Path(token)

        entries, names = [], {}
        for n, tokens in enumerate(lines, 1):
            if len(tokens) not in (2, 3, 4):
                raise ValueError(f"{self.list_path}:{n}: expected 'rgb label [depth [hha]]', got {' '.join(tokens)!r}")
            rgb, label = resolve(tokens[0]), resolve(tokens[1])
            require_files([rgb, label], "RGB/label", f"{self.list_path}:{n}")
            entry = {"rgb": rgb, "label": label}
            entry["depth"] = resolve(tokens[2]) if len(tokens) > 2 else _sibling(rgb, _DEPTH_DIRS, _DEPTH_EXTS, "depth")
            if self.load_hha:
                entry["hha"] = resolve(tokens[3]) if len(tokens) > 3 else _sibling(rgb, _HHA_DIRS, _HHA_EXTS, "HHA")
            require_files([p for k, p in entry.items() if k in ("depth", "hha")], "depth/HHA", f"{self.list_path}:{n}")
            if names.setdefault(rgb.stem, rgb) != rgb:
                raise ValueError(
                    f"{self.list_path}: two different RGB files share the name {rgb.stem!r}: "
                    f"{names[rgb.stem]} and {rgb}"
                )
            entries.append(entry)
        return entries

    def _prefix_strip(self, token: str) -> int:
        """How many leading path components of the list's paths to drop so they resolve under ``root``."""
        parts = Path(token).parts
        for k in range(len(parts)):
            if self.root.joinpath(*parts[k:]).is_file():
                return k
        raise FileNotFoundError(
            f"{self.list_path}: first listed image {token!r} not found under {self.root} (also tried without "
            "leading path components)"
        )

    def __len__(self) -> int:
        return len(self.entries)

    def sample_name(self, index: int) -> str:
        return self.entries[index]["rgb"].stem

    def load(self, index: int) -> Sample:
        entry = self.entries[index]
        rgb = read_rgb(entry["rgb"])
        raw = read_unchanged(entry["depth"], "depth image")
        if raw.ndim != 2:
            raise ValueError(f"depth image {entry['depth']} must be single-channel, got shape {raw.shape}")
        check_same_size(rgb, raw, "depth image", entry["depth"])
        ids = read_single_channel(entry["label"], "label image")
        check_same_size(rgb, ids, "label image", entry["label"])
        frame = RGBDFrame(rgb, depth_to_metres(raw), self._intrinsics_for(rgb, entry["rgb"]))
        if self.load_hha:
            hha = read_rgb(entry["hha"])
            check_same_size(rgb, hha, "HHA image", entry["hha"])
            frame.meta["hha"] = hha
        return Sample(frame, apply_lut(ids, shifted_lut(40), entry["label"]), entry["rgb"].stem)

    def _intrinsics_for(self, rgb: np.ndarray, path: Path) -> CameraIntrinsics:
        h, w = rgb.shape[:2]
        k = self.intrinsics or CameraIntrinsics.nyu_kinect()
        if (k.width, k.height) != (w, h):
            source = self.root / "intrinsics.yaml" if self.intrinsics else "the NYU Kinect default (640x480)"
            raise ValueError(f"RGB image {path} is {w}x{h} but the intrinsics ({source}) are for {k.width}x{k.height}")
        return k


def build(root: str | Path, split: str, transforms: Transform | None = None, **options: Any) -> RGBDDataset:
    """``nyudv2``: the official ``.mat`` form if ``root`` holds ``nyu_depth_v2_labeled.mat``, else the folder layout."""
    if (Path(root) / MAT_FILE).is_file():
        return NYUDv2Mat(root, split, transforms, **options)
    return NYUDv2Folder(root, split, transforms, **options)
