"""File readers shared by the loaders: every failure names the offending path."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

IGNORE_INDEX = 255


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it (and what it should hold)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    return path


def require_files(paths: Sequence[Path], what: str, source: Path | str) -> None:
    """Raise FileNotFoundError naming the first missing path (and how many are missing) of a split listing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} {what} file(s) listed by {source} do not exist, first: {missing[0]}")


def read_rgb(path: Path) -> np.ndarray:
    """An 8-bit colour image as uint8 H×W×3 in RGB order."""
    img = cv2.imread(str(require_file(path, "RGB image")), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode RGB image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_unchanged(path: Path, what: str) -> np.ndarray:
    """An image file exactly as stored (16-bit PNGs stay uint16; ``.npy`` arrays are loaded as they are)."""
    require_file(path, what)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot decode {what} {path}")
    return img


def read_single_channel(path: Path, what: str) -> np.ndarray:
    """An H×W id image (label map). Palette PNGs give their indices (not colours); a 3-channel file is accepted
    only if its channels are identical."""
    require_file(path, what)
    if path.suffix == ".npy":
        img = np.load(path, allow_pickle=False)
    else:
        try:
            with Image.open(path) as pil:
                img = np.asarray(pil)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot decode {what} {path}: {exc}") from exc
    if img.ndim == 3:
        if img.shape[2] == 1 or all(np.array_equal(img[..., 0], img[..., c]) for c in range(1, img.shape[2])):
            img = img[..., 0]
        else:
            raise ValueError(f"{what} {path} has {img.shape[2]} differing channels; expected a single-channel id image")
    if img.ndim != 2:
        raise ValueError(f"{what} {path} must be H×W, got shape {img.shape}")
    return img


def read_json(path: Path, what: str) -> dict[str, Any]:
    with open(require_file(path, what)) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} {path} is not valid JSON: {exc}") from exc


def loadmat(path: Path, what: str, **kwargs: Any) -> dict[str, Any]:
    """A MATLAB ≤ v7.2 ``.mat`` file via scipy (imported here: only the .mat loaders need it)."""
    import scipy.io

    require_file(path, what)
    try:
        return scipy.io.loadmat(path, **kwargs)
    except (ValueError, TypeError, NotImplementedError, OSError) as exc:
        raise ValueError(f"cannot read {what} {path} as a MATLAB .mat file: {exc}") from exc


def check_same_size(rgb: np.ndarray, other: np.ndarray, what: str, path: Path | str) -> None:
    """Raise ValueError naming ``path`` when ``other`` is not pixel-registered to ``rgb`` (same H×W)."""
    if other.shape[:2] != rgb.shape[:2]:
        raise ValueError(
            f"{what} {path} is {other.shape[1]}x{other.shape[0]} but its RGB image is {rgb.shape[1]}x{rgb.shape[0]}"
        )


def make_lut(mapping: dict[int, int] | np.ndarray, size: int) -> np.ndarray:
    """An int16 look-up table of ``size`` entries: raw id → class (0..K-1) or 255; unlisted ids are −1 (invalid)."""
    lut = np.full(size, -1, np.int16)
    if isinstance(mapping, dict):
        for raw, cls in mapping.items():
            lut[raw] = cls
    else:
        lut[: len(mapping)] = mapping
    return lut


def apply_lut(ids: np.ndarray, lut: np.ndarray, path: Path | str) -> np.ndarray:
    """Map raw label ids through ``lut`` to uint8 classes; unknown ids raise ValueError naming ``path``."""
    if not np.issubdtype(ids.dtype, np.integer):
        if not np.array_equal(ids, np.round(ids)):
            raise ValueError(f"label image {path} holds non-integer values")
        ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(lut)):
        raise ValueError(f"label image {path} holds ids outside 0..{len(lut) - 1} (min {ids.min()}, max {ids.max()})")
    out = lut[ids]
    if (out < 0).any():
        bad = np.unique(ids[out < 0])[:10].tolist()
        raise ValueError(f"label image {path} holds ids the label mapping does not define: {bad}")
    return out.astype(np.uint8)


def shifted_lut(num_classes: int) -> np.ndarray:
    """The ``0 = unlabeled`` convention: raw 0 → 255 (ignore), raw k → k − 1 for k = 1..num_classes."""
    return make_lut(np.array([IGNORE_INDEX, *range(num_classes)], np.int16), num_classes + 1)
