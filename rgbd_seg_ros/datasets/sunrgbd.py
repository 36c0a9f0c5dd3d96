"""SUN RGB-D (10 335 frames from four sensors; 5285 train / 5050 test; 37 classes) in its official layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres

from .base import RGBDDataset, Sample, Transform
from .io import apply_lut, check_same_size, loadmat, read_rgb, read_unchanged, require_file, require_files, shifted_lut
from .nyudv2 import NYU40_CLASSES

SUN37_CLASSES: tuple[str, ...] = NYU40_CLASSES[:37]  # seg37list: the NYUv2-40 classes without the three "other*"
META_FILE = Path("SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat")
SEG_FILE = Path("SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat")
SPLIT_FILE = Path("SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat")
_SPLIT_KEYS = {"train": "alltrain", "test": "alltest"}
SENSORS = ("kv1", "kv2", "realsense", "xtion")


def scene_key(path: str) -> str:
    """``/n/fs/sun3d/data/SUNRGBD/kv2/kinect2data/<scene>/`` → ``kv2/kinect2data/<scene>`` (the part after SUNRGBD)."""
    parts = [p for p in str(path).strip().replace("\\", "/").split("/") if p]
    if "SUNRGBD" not in parts:
        raise ValueError(f"SUN RGB-D path {path!r} has no 'SUNRGBD' component")
    return "/".join(parts[parts.index("SUNRGBD") + 1 :])


def decode_depth(raw: np.ndarray, path: Path | str, max_depth_m: float | None = 8.0) -> np.ndarray:
    """A SUN RGB-D depth PNG → float32 metres (NaN = invalid), as the toolbox's ``read3dPoints.m`` does.

    The files store millimetres rotated left by 3 bits in 16 bits; the toolbox undoes it with
    ``bitor(bitshift(d, -3), bitshift(d, 16 - 3))``, divides by 1000 and clips values above 8 m to 8 m.
    """
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f"SUN RGB-D depth {path} must be a 16-bit single-channel PNG, got {raw.dtype} {raw.shape}")
    mm = (raw >> np.uint16(3)) | (raw << np.uint16(13))
    metres = depth_to_metres(mm)
    if max_depth_m is not None:
        metres[metres > max_depth_m] = np.float32(max_depth_m)
    return metres


def read_intrinsics_txt(path: Path, width: int, height: int) -> CameraIntrinsics:
    """A SUN RGB-D ``intrinsics.txt`` (the 3×3 K, row-major text) for a ``width``×``height`` image.

    The values are used as 0-based pixel-centre intrinsics, the convention :class:`CameraIntrinsics` applies
    to the NYU calibration as well. (The toolbox back-projects with 1-based ``meshgrid(1:w, 1:h)``, so its
    point clouds are shifted by one pixel against this convention.)
    """
    try:
        k = np.loadtxt(require_file(path, "SUN RGB-D intrinsics"), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"cannot parse {path} as a 3×3 matrix: {exc}") from exc
    if k.size != 9:
        raise ValueError(f"{path} must hold the 3×3 camera matrix, got {k.size} numbers")
    k = k.reshape(3, 3)
    return CameraIntrinsics(fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2], width=width, height=height)


class SUNRGBD(RGBDDataset):
    """SUN RGB-D from the official ``SUNRGBD.zip`` and ``SUNRGBDtoolbox.zip``, both extracted into ``root``.

    Files used (the toolbox's names):

    * ``SUNRGBD/<sensor>/.../<scene>/``: ``image/<rgbname>`` (jpg), ``depth/<depthname>`` (raw) and
      ``depth_bfx/<depthname>`` (refined) 16-bit PNGs, ``intrinsics.txt`` (3×3 K);
    * ``SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat``: struct array ``SUNRGBDMeta`` (fields ``rgbpath``,
      ``rgbname``, ``depthname``), which fixes the frame order;
    * ``SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat`` (MATLAB v7.3): ``SUNRGBD2Dseg.seglabel``, the 37-class
      label image of each frame in ``SUNRGBDMeta`` order (0 = unlabelled → 255, k → k − 1). The per-scene
      ``seg.mat`` files are *not* used: their ``seglabel`` indexes each image's own object-name list;
    * ``SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat``: ``alltrain`` (5285) / ``alltest`` (5050) scene folders.

    Args:
        split: ``train`` or ``test``.
        depth: ``refined`` (``depth_bfx``, the toolbox's default) or ``raw`` (``depth``).
        exclude_sensors: sensor folders to leave out, e.g. ``("realsense",)`` as SSMA did.
        max_depth_m: values above are clipped to it, as the toolbox does (8 m); None = no clipping.

    Sample names are the scene folders below ``SUNRGBD/`` (e.g. ``kv2/kinect2data/000065_...``).
    """

    class_names = SUN37_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Transform | None = None,
        cache_dir: str | Path | None = None,
        depth: Literal["refined", "raw"] = "refined",
        exclude_sensors: tuple[str, ...] | list[str] = (),
        max_depth_m: float | None = 8.0,
    ) -> None:
        super().__init__(transforms, cache_dir)
        if split not in _SPLIT_KEYS:
            raise ValueError(f"SUN RGB-D split must be one of {tuple(_SPLIT_KEYS)}, got {split!r}")
        if depth not in ("refined", "raw"):
            raise ValueError(f"depth must be 'refined' or 'raw', got {depth!r}")
        unknown = set(exclude_sensors) - set(SENSORS)
        if unknown:
            raise ValueError(f"unknown SUN RGB-D sensors {sorted(unknown)}; known: {SENSORS}")
        self.root, self.split, self.depth_kind = Path(root), split, depth
        self.exclude_sensors, self.max_depth_m = tuple(exclude_sensors), max_depth_m
        self.seg_path = require_file(self.root / SEG_FILE, "SUN RGB-D 37-class labels", "from SUNRGBDtoolbox.zip")
        meta = self._read_meta()
        self.entries = self._read_split(meta)
        self._h5: h5py.File | None = None
        self._refs: np.ndarray | None = None
        self._h5_pid = -1
        with h5py.File(self.seg_path, "r") as f:
            if "SUNRGBD2Dseg" not in f or "seglabel" not in f["SUNRGBD2Dseg"]:
                raise ValueError(f"{self.seg_path} has no 'SUNRGBD2Dseg.seglabel'")
            count = f["SUNRGBD2Dseg"]["seglabel"].size
        if count != len(meta):
            raise ValueError(
                f"{self.seg_path} holds {count} label images but {self.root / META_FILE} describes {len(meta)} frames"
            )

    def _read_meta(self) -> list[dict[str, Any]]:
        path = require_file(self.root / META_FILE, "SUN RGB-D metadata", "from SUNRGBDtoolbox.zip")
        mat = loadmat(
            path, "SUN RGB-D metadata", squeeze_me=True, struct_as_record=False, variable_names=["SUNRGBDMeta"]
        )
        if "SUNRGBDMeta" not in mat:
            raise ValueError(f"{path} has no variable 'SUNRGBDMeta'")
        meta = []
        for i, m in enumerate(np.atleast_1d(mat["SUNRGBDMeta"])):
            try:
                meta.append({"scene": scene_key(m.rgbpath.rsplit("/", 2)[0]), "rgb": str(m.rgbname),
                             "depth": str(m.depthname), "index": i})  # fmt: skip
            except AttributeError as exc:
                raise ValueError(f"{path}: SUNRGBDMeta({i + 1}) lacks a field ({exc})") from exc
        return meta

    def _read_split(self, meta: list[dict[str, Any]]) -> list[dict[str, Any]]:
        path = require_file(self.root / SPLIT_FILE, "SUN RGB-D split", "from SUNRGBDtoolbox.zip")
        key = _SPLIT_KEYS[self.split]
        mat = loadmat(path, "SUN RGB-D split", squeeze_me=True, struct_as_record=False)
        if key not in mat:
            raise ValueError(f"{path} has no variable {key!r}")
        by_scene = {m["scene"]: m for m in meta}
        data, entries = self.root / "SUNRGBD", []
        depth_dir = "depth_bfx" if self.depth_kind == "refined" else "depth"
        for folder in np.atleast_1d(mat[key]):
            scene = scene_key(str(folder))
            if scene not in by_scene:
                raise ValueError(f"{path}: {key} lists scene {scene!r}, which {META_FILE.name} does not describe")
            if scene.split("/")[0] in self.exclude_sensors:
                continue
            m, sdir = by_scene[scene], data / scene
            entries.append({"name": scene, "index": m["index"], "rgb": sdir / "image" / m["rgb"],
                            "depth": sdir / depth_dir / m["depth"], "intrinsics": sdir / "intrinsics.txt"})  # fmt: skip
        for kind in ("rgb", "depth", "intrinsics"):
            require_files([e[kind] for e in entries], kind, path)
        return entries

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_refs"], state["_h5_pid"] = None, None, -1
        return state

    def _label_ids(self, index: int) -> np.ndarray:
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5, self._h5_pid = h5py.File(self.seg_path, "r"), os.getpid()
            self._refs = self._h5["SUNRGBD2Dseg"]["seglabel"][()].ravel()
        return np.asarray(self._h5[self._refs[index]][()]).T

    def __len__(self) -> int:
        return len(self.entries)

    def sample_name(self, index: int) -> str:
        return self.entries[index]["name"]

    def load(self, index: int) -> Sample:
        e = self.entries[index]
        rgb = read_rgb(e["rgb"])
        depth = decode_depth(read_unchanged(e["depth"], "depth image"), e["depth"], self.max_depth_m)
        check_same_size(rgb, depth, "depth image", e["depth"])
        ids = self._label_ids(e["index"])
        where = f"{self.seg_path}[SUNRGBD2Dseg.seglabel({e['index'] + 1})]"
        check_same_size(rgb, ids, "label image", where)
        intrinsics = read_intrinsics_txt(e["intrinsics"], rgb.shape[1], rgb.shape[0])
        return Sample(RGBDFrame(rgb, depth, intrinsics), apply_lut(ids, shifted_lut(37), where), e["name"])
