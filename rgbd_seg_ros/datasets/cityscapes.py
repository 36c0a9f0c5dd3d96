"""Cityscapes as RGB-D (19 classes): left images, stereo disparity turned into metric depth, fine labels."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres

from .base import RGBDDataset, Sample, Transform
from .io import (
    IGNORE_INDEX,
    apply_lut,
    check_same_size,
    make_lut,
    read_json,
    read_rgb,
    read_single_channel,
    read_unchanged,
    require_files,
)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# cityscapesScripts' labels.py: labelId → trainId for the 19 evaluated classes; every other id is ignored.
_LABEL_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                      26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
LABEL_ID_LUT = make_lut({i: _LABEL_ID_TO_TRAIN.get(i, IGNORE_INDEX) for i in range(256)}, 256)
TRAIN_ID_LUT = make_lut({**{i: i for i in range(19)}, 255: IGNORE_INDEX}, 256)
SPLITS = ("train", "val", "test")


def disparity_to_depth(raw: np.ndarray, baseline_m: float, fx: float, path: Path | str) -> np.ndarray:
    """A Cityscapes ``*_disparity.png`` → float32 metres (NaN = invalid).

    Per the dataset README: for p > 0 the disparity is d = (p − 1) / 256 pixels; p = 0 is invalid. Depth is
    ``baseline · fx / d``; p = 1 (d = 0, infinitely far) is invalid as well.
    """
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(
            f"Cityscapes disparity {path} must be a 16-bit single-channel PNG, got {raw.dtype} {raw.shape}"
        )
    d = (raw.astype(np.float64) - 1.0) / 256.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(raw > 1, baseline_m * fx / d, np.nan)
    return depth_to_metres(z.astype(np.float32))


def read_camera(path: Path, width: int, height: int) -> tuple[CameraIntrinsics, float]:
    """A ``*_camera.json`` → (intrinsics of the left image, stereo baseline in metres)."""
    cam = read_json(path, "camera calibration")
    try:
        intr, baseline = cam["intrinsic"], float(cam["extrinsic"]["baseline"])
        k = CameraIntrinsics(float(intr["fx"]), float(intr["fy"]), float(intr["u0"]), float(intr["v0"]), width, height)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} lacks intrinsic.fx/fy/u0/v0 or extrinsic.baseline ({exc})") from exc
    if not baseline > 0:
        raise ValueError(f"{path}: extrinsic.baseline must be > 0 m, got {baseline}")
    return k, baseline


class Cityscapes(RGBDDataset):
    """Cityscapes with depth from the provided disparity maps.

    Files under ``root`` (the official packages ``leftImg8bit_trainvaltest.zip``, ``disparity_trainvaltest.zip``,
    ``camera_trainvaltest.zip``, ``gtFine_trainvaltest.zip`` extracted side by side):

    * ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` — these define the split;
    * ``disparity/<split>/<city>/<id>_disparity.png`` (16-bit);
    * ``camera/<split>/<city>/<id>_camera.json`` (``intrinsic.fx/fy/u0/v0``, ``extrinsic.baseline``);
    * ``gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png`` (made by cityscapesScripts'
      ``createTrainIdLabelImgs``; 0..18, 255 = ignore), or with ``labels="labelIds"`` the released
      ``<id>_gtFine_labelIds.png``, mapped to the 19 train ids here.

    Args:
        split: ``train`` (2975), ``val`` (500) or ``test`` (1525; its released labels are all void).

    Sample names are ``<city>/<id>``.
    """

    class_names = CITYSCAPES_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Transform | None = None,
        cache_dir: str | Path | None = None,
        labels: Literal["labelTrainIds", "labelIds"] = "labelTrainIds",
    ) -> None:
        super().__init__(transforms, cache_dir)
        if split not in SPLITS:
            raise ValueError(f"Cityscapes split must be one of {SPLITS}, got {split!r}")
        if labels not in ("labelTrainIds", "labelIds"):
            raise ValueError(f"labels must be 'labelTrainIds' or 'labelIds', got {labels!r}")
        self.root, self.split, self.label_kind = Path(root), split, labels
        self._lut = TRAIN_ID_LUT if labels == "labelTrainIds" else LABEL_ID_LUT
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"Cityscapes image folder not found: {image_dir}")
        suffix = "_leftImg8bit.png"
        images = sorted(image_dir.glob(f"*/*{suffix}"))
        if not images:
            raise FileNotFoundError(f"no *{suffix} images under {image_dir}")
        self.entries = []
        for img in images:
            city, stem = img.parent.name, img.name[: -len(suffix)]
            self.entries.append({
                "name": f"{city}/{stem}",
                "rgb": img,
                "disparity": self.root / "disparity" / split / city / f"{stem}_disparity.png",
                "camera": self.root / "camera" / split / city / f"{stem}_camera.json",
                "label": self.root / "gtFine" / split / city / f"{stem}_gtFine_{labels}.png",
            })  # fmt: skip
        for kind in ("disparity", "camera", "label"):
            require_files([e[kind] for e in self.entries], kind, image_dir)

    def __len__(self) -> int:
        return len(self.entries)

    def sample_name(self, index: int) -> str:
        return self.entries[index]["name"]

    def load(self, index: int) -> Sample:
        e = self.entries[index]
        rgb = read_rgb(e["rgb"])
        h, w = rgb.shape[:2]
        intrinsics, baseline = read_camera(e["camera"], w, h)
        raw = read_unchanged(e["disparity"], "disparity image")
        depth = disparity_to_depth(raw, baseline, intrinsics.fx, e["disparity"])
        check_same_size(rgb, depth, "disparity image", e["disparity"])
        ids = read_single_channel(e["label"], "label image")
        check_same_size(rgb, ids, "label image", e["label"])
        return Sample(RGBDFrame(rgb, depth, intrinsics), apply_lut(ids, self._lut, e["label"]), e["name"])
