"""The output images of a segmentation, made once for the node's topics and the replay's output bag.

Outputs (:data:`OUTPUT_NAMES`) and their image encodings:

* ``labels``: H×W train ids (``ignore_index`` = unlabeled), ``mono8`` (``mono16`` above 255 classes);
* ``color``: H×W×3 ``rgb8``, each label in its palette colour;
* ``overlay``: H×W×3 ``rgb8``, the palette blended over the colour image (``overlay_alpha``);
* ``confidence``: H×W ``32FC1``, the winning class's probability.

Also :func:`write_png`, the package's PNG writer for people-facing images (previews, report figures).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rgbd_seg_ros.fileio import atomic_write_bytes
from rgbd_seg_ros.labels import LabelSet, colorize, overlay

__all__ = ["OUTPUT_NAMES", "labels_encoding", "render_outputs", "write_png"]

OUTPUT_NAMES: tuple[str, ...] = ("labels", "color", "overlay", "confidence")


def labels_encoding(label_set: LabelSet) -> str:
    """The image encoding of ``label_set``'s label images: ``mono8``, or ``mono16`` above 255 classes."""
    return "mono8" if label_set.label_dtype == np.uint8 else "mono16"


def render_outputs(
    rgb: np.ndarray,
    labels: Any,
    confidence: Any,
    label_set: LabelSet,
    names: Iterable[str] = OUTPUT_NAMES,
    overlay_alpha: float = 0.5,
) -> dict[str, tuple[np.ndarray, str]]:
    """The output images ``names`` (a subset of :data:`OUTPUT_NAMES`, in that order) as ``name → (array, encoding)``.

    Args:
        rgb: the frame's H×W×3 uint8 colour image. labels: H×W train ids. confidence: H×W probabilities.
        overlay_alpha: palette weight of ``overlay`` (0 = the colour image, 1 = the palette).

    Only the requested images are computed.
    """
    wanted = list(names)
    unknown = [n for n in wanted if n not in OUTPUT_NAMES]
    if unknown:
        raise ValueError(f"unknown outputs {unknown}; known: {', '.join(OUTPUT_NAMES)}")
    ids = np.asarray(labels).astype(label_set.label_dtype, copy=False)
    out: dict[str, tuple[np.ndarray, str]] = {}
    for name in OUTPUT_NAMES:
        if name not in wanted:
            continue
        if name == "labels":
            out[name] = (ids, labels_encoding(label_set))
        elif name == "color":
            out[name] = (colorize(ids, label_set), "rgb8")
        elif name == "overlay":
            out[name] = (overlay(rgb, ids, label_set, overlay_alpha), "rgb8")
        else:
            out[name] = (np.asarray(confidence, dtype=np.float32), "32FC1")
    return out


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an H×W×3 RGB (or H×W grey) uint8 ``image`` as a PNG at ``path``, atomically (see :mod:`.fileio`)."""
    image = np.asarray(image)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} {image.shape} image as PNG for {path}")
    return atomic_write_bytes(path, buf.tobytes())
