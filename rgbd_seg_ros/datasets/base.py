"""The one sample type every loader yields, and the base class that applies the cache and the transforms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from rgbd_seg_ros.frames import RGBDFrame

from . import cache
from .io import IGNORE_INDEX


@dataclass
class Sample:
    """One labelled RGB-D frame.

    Attributes:
        frame: the RGB-D frame (uint8 RGB, float32 depth in metres with NaN = invalid, intrinsics of the image).
        labels: uint8 H×W class ids 0..K−1, 255 = ignore (unlabelled / void).
        name: identifier unique within the dataset (also the sample's path in a prepare cache).
    """

    frame: RGBDFrame
    labels: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.dtype != np.uint8 or labels.ndim != 2:
            raise ValueError(f"Sample.labels must be uint8 H×W, got {labels.dtype} {labels.shape} ({self.name})")
        if labels.shape != (self.frame.height, self.frame.width):
            raise ValueError(
                f"Sample {self.name!r}: labels are {labels.shape[1]}x{labels.shape[0]} but the frame is "
                f"{self.frame.width}x{self.frame.height}"
            )
        self.labels = labels


Transform = Callable[[Sample], Sample]


class RGBDDataset(Sequence[Sample]):
    """Base of all loaders: ``len()``, indexing, optional prepare-cache products and transforms.

    Subclasses set ``class_names`` and implement :meth:`__len__`, :meth:`sample_name` and :meth:`load`.

    Args:
        transforms: applied to each loaded sample (after the cache products are attached).
        cache_dir: a directory written by ``training.prepare`` for this dataset; its products are attached
            to ``frame.meta`` (see :mod:`rgbd_seg_ros.datasets.cache`). None = no cache.
    """

    class_names: ClassVar[tuple[str, ...]] = ()
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init__(self, transforms: Transform | None = None, cache_dir: str | Path | None = None) -> None:
        self.transforms = transforms
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._manifest = cache.read_manifest(self.cache_dir) if self.cache_dir is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        """The name of sample ``index`` without loading it."""
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        """Sample ``index`` as stored: no cache products, no transforms."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {type(self).__name__} of length {n}")
        sample = self.load(index % n)
        if self.cache_dir is not None:
            cache.attach(sample.frame.meta, sample.labels.shape, self.cache_dir, self._manifest, sample.name)
        return self.transforms(sample) if self.transforms is not None else sample
