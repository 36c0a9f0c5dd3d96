"""Label sets (class names, palettes, dataset-id mappings) and label-image colouring.

Conventions:

* A model predicts *train ids* ``0 .. K-1``; ``ignore_index`` (255 by default) means unlabelled / void in
  ground truth and "no prediction" in outputs. Void is drawn in ``void_color`` (black) by :func:`colorize`
  and left uncoloured by :func:`overlay`.
* Datasets store their own ids; :meth:`LabelSet.to_train_ids` maps them. NYUv2-40, SUN RGB-D-37 and
  NYUv2-13 store ``0`` = unlabelled and ``1..K`` = classes, so ``0 → 255`` and ``k → k-1`` (what SGNet's and
  SA-Gate's loaders do with ``uint8(label) - 1``). Cityscapes stores the 34 ``labelIds`` and maps them to
  the 19 ``trainIds`` of the official ``cityscapesscripts`` table (all other ids → 255).
* Palettes: Cityscapes uses its official colours. The indoor sets have no official palette; they use the
  PASCAL-VOC bit-interleaved colour map at index ``train_id + 1`` (so no class is black), and SUN RGB-D-37
  shares NYUv2-40's colours for its 37 classes (the two sets list the same first 37 classes).
* ``"synthetic"``: the procedural scenes of :mod:`rgbd_seg_ros.synthetic` are labelled with NYUv2-40 ids
  (they use a subset of the classes), so the synthetic label set *is* NYUv2-40 under another name; a model
  trained on them predicts all 40 classes, which keeps its checkpoints interchangeable with NYUv2 ones.

Class-name sources: NYUv2-40 from Gupta et al., CVPR 2013 (the 40-class list every RGB-D paper here
uses; spelled "refrigerator" here, "refridgerator" in the original file); SUN RGB-D-37 from the
SUN RGB-D toolbox's ``seg37list``; NYUv2-13 from Couprie et al. 2013 / Handa et al.'s NYUv2 meta-data
(13-class ground truth is made from NYU's 894 raw classes with that meta-data's mapping, not from the
40 classes, so no 40 → 13 table is offered); Cityscapes-19 from ``cityscapesscripts/helpers/labels.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cv2
import numpy as np

__all__ = [
    "LabelSet",
    "available_label_sets",
    "colorize",
    "get_label_set",
    "overlay",
    "to_numpy",
]

_VOID_COLOR = (0, 0, 0)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy view of a NumPy array, sequence or torch tensor (any device; copied to host), without importing torch."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _voc_colormap(n: int) -> np.ndarray:
    """The PASCAL-VOC colour map: entry ``i`` spreads the bits of ``i`` over R, G, B from the top bit down."""
    index = np.arange(n, dtype=np.int64)
    colors = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colors[:, channel] |= bit << (7 - shift)
    return colors.astype(np.uint8)


@dataclass(frozen=True, eq=False)
class LabelSet:
    """A set of ``K`` classes: names, colours and the mapping from a dataset's stored ids.

    Attributes:
        name: canonical name, e.g. ``"nyuv2-40"``.
        class_names: ``K`` names; position = train id.
        palette: ``K × 3`` uint8 RGB colours (read-only).
        ignore_index: the void / unlabelled value (≥ ``K``; 255 for every built-in set).
        void_color: RGB colour :func:`colorize` uses for ``ignore_index``.
        id_to_train: optional lookup table, ``id_to_train[dataset_id] = train id`` (or ``ignore_index``).
    """

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int = 255
    void_color: tuple[int, int, int] = _VOID_COLOR
    id_to_train: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        k = len(names)
        if k == 0 or len(set(names)) != k:
            raise ValueError(f"label set {self.name!r}: class names must be non-empty and unique")
        palette = np.array(self.palette, dtype=np.int64)
        if palette.shape != (k, 3) or palette.min() < 0 or palette.max() > 255:
            raise ValueError(f"label set {self.name!r}: palette must be {k}×3 values in 0..255, got {palette.shape}")
        palette = palette.astype(np.uint8)
        palette.setflags(write=False)
        if not k <= self.ignore_index <= 65535:
            raise ValueError(f"label set {self.name!r}: ignore_index must be in [{k}, 65535], got {self.ignore_index}")
        if self.id_to_train is not None:
            bad = [v for v in self.id_to_train if not (0 <= v < k or v == self.ignore_index)]
            if bad:
                raise ValueError(f"label set {self.name!r}: id_to_train holds values that are not train ids: {bad}")
            object.__setattr__(self, "id_to_train", tuple(int(v) for v in self.id_to_train))
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "void_color", tuple(int(c) for c in self.void_color))

    @property
    def num_classes(self) -> int:
        """``K``, the number of classes a model of this set predicts."""
        return len(self.class_names)

    @property
    def label_dtype(self) -> type[np.integer]:
        """The smallest unsigned dtype holding every train id and ``ignore_index`` (uint8 or uint16)."""
        return np.uint8 if self.ignore_index <= 255 else np.uint16

    def index(self, class_name: str) -> int:
        """The train id of ``class_name``."""
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise KeyError(f"label set {self.name!r} has no class {class_name!r}") from None

    @cached_property
    def _color_lut(self) -> np.ndarray:
        """``ignore_index + 1`` colours packed as uint32 RGBA (the palette, zeros, the void colour last).

        One 4-byte gather per pixel is several times faster than NumPy's row gather of a ``K × 3`` table.
        """
        lut = np.zeros((self.ignore_index + 1, 4), dtype=np.uint8)
        lut[: self.num_classes, :3] = self.palette
        lut[self.ignore_index, :3] = self.void_color
        return lut.view(np.uint32).reshape(-1)

    @cached_property
    def _train_lut(self) -> np.ndarray | None:
        if self.id_to_train is None:
            return None
        return np.asarray(self.id_to_train, dtype=self.label_dtype)

    def check_labels(self, labels: np.ndarray, what: str = "labels") -> None:
        """Raise ``ValueError`` unless ``labels`` is an integer array of train ids or ``ignore_index``."""
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"{what} must be an integer array of train ids, got dtype {labels.dtype}")
        if labels.size == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 0 and hi < self.num_classes:
            return
        bad = (labels < 0) | ((labels >= self.num_classes) & (labels != self.ignore_index))
        if bad.any():
            values = np.unique(labels[bad])[:8].tolist()
            raise ValueError(
                f"{what} hold values outside 0..{self.num_classes - 1} (and ≠ ignore_index {self.ignore_index}) "
                f"for label set {self.name!r}: {values}"
            )

    def to_train_ids(self, dataset_ids: Any) -> np.ndarray:
        """Map a dataset's stored ids (any shape, integer) to train ids; void → ``ignore_index``.

        Returns uint8 (uint16 when ``ignore_index`` > 255) of the same shape. Raises ``ValueError`` for
        ids the dataset does not define (e.g. 41 in an NYUv2-40 label image).
        """
        lut = self._train_lut
        if lut is None:
            raise ValueError(f"label set {self.name!r} has no dataset-id mapping")
        ids = to_numpy(dataset_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"dataset ids must be an integer array, got dtype {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= lut.size):
            bad = np.unique(ids[(ids < 0) | (ids >= lut.size)])[:8].tolist()
            raise ValueError(f"ids outside the {self.name!r} dataset's range 0..{lut.size - 1}: {bad}")
        return lut[ids]


def colorize(labels: Any, label_set: LabelSet) -> np.ndarray:
    """Colour a label image: ``labels`` (…, integer train ids or ``ignore_index``) → uint8 (…, 3) RGB.

    One table lookup; raises ``ValueError`` for ids that are neither a class nor ``ignore_index``.
    """
    arr = to_numpy(labels)
    label_set.check_labels(arr)
    if arr.size == 0:
        return np.zeros((*arr.shape, 3), dtype=np.uint8)
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 2 else arr.reshape(1, -1)  # cv2 wants an image
    rgba = np.take(label_set._color_lut, rows).view(np.uint8).reshape(*rows.shape, 4)
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB).reshape(*arr.shape, 3)


def overlay(rgb: Any, labels: Any, label_set: LabelSet, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colours of ``labels`` (H×W) over ``rgb`` (H×W×3 uint8): ``(1-α)·rgb + α·colour``.

    Void pixels (``ignore_index``) keep the original RGB. Returns a new H×W×3 uint8 array (rounded).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = to_numpy(rgb)
    arr = to_numpy(labels)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"rgb must be an H×W×3 uint8 image, got {image.dtype} {image.shape}")
    if arr.shape != image.shape[:2]:
        raise ValueError(f"labels shape {arr.shape} does not match the image's {image.shape[:2]}")
    colors = colorize(arr, label_set)
    blended = cv2.addWeighted(image, 1.0 - float(alpha), colors, float(alpha), 0.0)
    void = arr == label_set.ignore_index
    if void.any():
        cv2.copyTo(image, void.view(np.uint8), blended)
    return blended


_NYU40_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip

_SUNRGBD37_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat",
    "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard",
    "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
)  # fmt: skip

_NYU13_NAMES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv",
    "wall", "window",
)  # fmt: skip

# Cityscapes trainId order with the official colours.
_CITYSCAPES19 = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
)  # fmt: skip

# DeepScene label sets (AdapNet++ / SSMA released models, DeepSceneSeg/AdapNet-pp images/class_id.txt): class 0 is
# "void" and the models predict it like any other class; ground truth 0 is ignored, as the authors' mIoU does.
_DEEPSCENE12_NAMES = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car/truck/bus", "traffic sign",
    "pedestrian", "rider/bicycle/motorcycle",
)  # fmt: skip
_SCANNET21_NAMES = (
    "void", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "other furniture",
)  # fmt: skip
_FOREST6_NAMES = ("void", "trail", "grass", "vegetation", "sky", "obstacle")

# Cityscapes labelId (0..33) of each trainId 0..18; every other labelId is void.
_CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _one_based(k: int, ignore: int = 255, void_first: bool = False) -> tuple[int, ...]:
    """Dataset ids ``0`` = unlabelled, ``1..k`` = classes → ``(ignore, 0, 1, …, k-1)``; with ``void_first`` (a set
    whose class 0 is "void") → ``(ignore, 1, …, k)``."""
    return (ignore, *range(int(void_first), k + int(void_first)))


def _cityscapes_id_to_train(ignore: int = 255) -> tuple[int, ...]:
    table = [ignore] * 34
    for train_id, label_id in enumerate(_CITYSCAPES_LABEL_IDS):
        table[label_id] = train_id
    return tuple(table)


def _build_label_sets() -> dict[str, LabelSet]:
    voc = _voc_colormap(41)[1:]  # class k ↦ VOC colour k+1
    nyu40 = LabelSet("nyuv2-40", _NYU40_NAMES, voc[:40], id_to_train=_one_based(40))
    return {
        "nyuv2-40": nyu40,
        "nyuv2-13": LabelSet("nyuv2-13", _NYU13_NAMES, voc[:13], id_to_train=_one_based(13)),
        "sunrgbd-37": LabelSet("sunrgbd-37", _SUNRGBD37_NAMES, voc[:37], id_to_train=_one_based(37)),
        "cityscapes-19": LabelSet(
            "cityscapes-19",
            tuple(n for n, _ in _CITYSCAPES19),
            np.array([c for _, c in _CITYSCAPES19]),
            id_to_train=_cityscapes_id_to_train(),
        ),
        "synthetic": LabelSet("synthetic", nyu40.class_names, nyu40.palette, id_to_train=nyu40.id_to_train),
        **{
            name: LabelSet(name, names, palette, id_to_train=_one_based(len(names) - 1, void_first=True))
            for name, names, palette in (
                ("deepscene-12", _DEEPSCENE12_NAMES, voc[:12]),
                ("sunrgbd-38", ("void", *_SUNRGBD37_NAMES), voc[:38]),
                ("scannet-21", _SCANNET21_NAMES, voc[:21]),
                ("freiburg-forest-6", _FOREST6_NAMES, voc[:6]),
                # predicted void in Cityscapes' "dynamic" (void-category) colour, so it differs from no prediction
                ("cityscapes-20", ("void", *dict(_CITYSCAPES19)), [(111, 74, 0), *dict(_CITYSCAPES19).values()]),
            )
        },
    }


_LABEL_SETS = _build_label_sets()

_ALIASES = {
    "nyuv2": "nyuv2-40",
    "nyu40": "nyuv2-40",
    "nyudv2": "nyuv2-40",
    "nyu": "nyuv2-40",
    "nyu13": "nyuv2-13",
    "sunrgbd": "sunrgbd-37",
    "sun-rgbd": "sunrgbd-37",
    "sun-rgbd-37": "sunrgbd-37",
    "sunrgbd37": "sunrgbd-37",
    "cityscapes": "cityscapes-19",
}


def available_label_sets() -> tuple[str, ...]:
    """Canonical names accepted by :func:`get_label_set`."""
    return tuple(_LABEL_SETS)


def get_label_set(name: str | LabelSet) -> LabelSet:
    """A built-in label set by name (case-insensitive; ``_`` and ``-`` alike; aliases such as ``"nyuv2"``)."""
    if isinstance(name, LabelSet):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    try:
        return _LABEL_SETS[key]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; available: {', '.join(_LABEL_SETS)}") from None
