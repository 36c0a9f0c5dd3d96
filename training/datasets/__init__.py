"""The dataset readers live in :mod:`rgbd_seg_ros.datasets` (importable from the installed package, e.g. by
``rgbd-seg make-bag``); this name re-exports them for training code and recipes."""

from rgbd_seg_ros.datasets import DATASETS, IGNORE_INDEX, RGBDDataset, Sample, build_dataset

__all__ = ["DATASETS", "IGNORE_INDEX", "RGBDDataset", "Sample", "build_dataset"]
