"""The package's synthetic rooms (``rgbd_seg_ros.synthetic.write_dataset``) read as an NYUDv2-layout folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Transform
from .nyudv2 import NYUDv2Folder


def build(root: str | Path, split: str, transforms: Transform | None = None, **options: Any) -> NYUDv2Folder:
    """``synthetic``: ``RGB/ Depth/ Label/``, ``train.txt``/``test.txt`` and the required ``intrinsics.yaml``."""
    return NYUDv2Folder(root, split, transforms, require_intrinsics_file=True, **options)
