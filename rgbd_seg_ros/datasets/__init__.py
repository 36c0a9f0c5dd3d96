"""Dataset loaders: ``build_dataset(name, root, split, transforms=None, **options)``.

Every loader is a sequence of :class:`Sample` (an :class:`~rgbd_seg_ros.frames.RGBDFrame` plus uint8 labels,
255 = ignore); datasets differ only in how their files become samples. Model inputs are made afterwards by
``rgbd_seg_ros.depth.encode``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import cityscapes, nyudv2, sunrgbd, synthetic
from .base import RGBDDataset, Sample, Transform
from .io import IGNORE_INDEX

DATASETS: dict[str, Callable[..., RGBDDataset]] = {
    "nyudv2": nyudv2.build,
    "sunrgbd": sunrgbd.SUNRGBD,
    "cityscapes": cityscapes.Cityscapes,
    "synthetic": synthetic.build,
}


def build_dataset(
    name: str, root: str | Path, split: str, transforms: Transform | None = None, **options: Any
) -> RGBDDataset:
    """The ``split`` of dataset ``name`` stored under ``root``.

    Args:
        name: ``nyudv2``, ``sunrgbd``, ``cityscapes`` or ``synthetic``.
        transforms: callable ``Sample -> Sample`` (e.g. ``training.transforms.Compose``).
        options: loader-specific keywords (see each loader), plus ``cache_dir`` (a ``training.prepare`` output).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](root, split, transforms, **options)


__all__ = ["DATASETS", "IGNORE_INDEX", "RGBDDataset", "Sample", "build_dataset"]
