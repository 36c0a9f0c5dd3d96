"""Training data: seeded augmentation, the batch order (sharded over ranks, resumable at any step) and the
collate that turns augmented frames into model inputs through ``rgbd_seg_ros.depth.encode.encode_frames``.

Determinism: the order of the training set in epoch ``e`` is a permutation drawn from ``(seed, e)``, and the
augmentation of the sample at position ``i`` of epoch ``e`` from ``(seed, e, i)``. Neither depends on the
number of processes, DataLoader workers or accumulation steps, nor on where a run was interrupted, so a
resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rgbd_seg_ros.depth.encode import InputSpec, encode_frames
from training import transforms as T
from training.config import AugmentConfig, Config
from training.datasets import RGBDDataset, Sample, build_dataset
from training.depth_failure import DepthFailure
from training.entry import worker_ignores_ctrl_c


def build_transforms(aug: AugmentConfig) -> T.Compose:
    """The recipe's augmentation as a :class:`training.transforms.Compose` (called with an explicit rng)."""
    steps: list = []
    if aug.resize is not None:
        steps.append(T.Resize(width=aug.resize[1], height=aug.resize[0]))
    if aug.scales is not None:
        steps.append(T.RandomScale(scales=aug.scales))
    elif aug.scale_range is not None:
        steps.append(T.RandomScale(scale_range=tuple(aug.scale_range)))
    if aug.crop is not None:
        steps.append(T.RandomCrop(width=aug.crop[1], height=aug.crop[0]))
    if aug.flip:
        steps.append(T.RandomHorizontalFlip(0.5))
    if aug.hsv:
        steps.append(T.RandomHSV())
    if aug.color_jitter > 0:
        j = aug.color_jitter
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    failure = DepthFailure.from_config(aug.depth_failure)
    if failure.enabled:  # last: on the raw depth at the training size, before Collate fills and encodes it
        steps.append(failure)
    return T.Compose(steps)


def synthetic_root(cfg: Config) -> Path:
    """The generated synthetic dataset for ``cfg`` (written once with ``write_dataset``, atomically)."""
    from rgbd_seg_ros.synthetic import write_dataset

    s = cfg.data.synthetic
    cache = Path(cfg.data.synthetic_cache) if cfg.data.synthetic_cache else Path(cfg.train.out_dir) / "data"
    root = cache / f"synthetic_{s.n_train}_{s.n_test}_{s.height}x{s.width}_seed{s.seed}"
    if not (root / "test.txt").is_file():
        tmp = root.with_name(root.name + f".tmp{np.random.default_rng().integers(1 << 30)}")
        write_dataset(tmp, s.n_train, s.n_test, (s.height, s.width), s.seed)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return root


def dataset_root(cfg: Config) -> Path:
    if cfg.data.root:
        return Path(cfg.data.root)
    if cfg.data.dataset == "synthetic":
        return synthetic_root(cfg)
    raise ValueError(f"data.root is required for dataset {cfg.data.dataset!r}")


def open_split(cfg: Config, split: str, root: Path | None = None) -> RGBDDataset:
    """The raw (un-augmented) ``split`` of the recipe's dataset."""
    return build_dataset(cfg.data.dataset, root or dataset_root(cfg), split, None, **cfg.data.options)


class AugmentedDataset(Dataset):
    """``base[i]`` augmented with a generator seeded by ``(seed, epoch, position)``; keys are those triples'
    ``(epoch, position, index)``."""

    def __init__(self, base: RGBDDataset, transforms: T.Compose | None, seed: int) -> None:
        self.base, self.transforms, self.seed = base, transforms, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        epoch, position, index = key
        sample = self.base[index]
        if self.transforms is None:
            return sample
        return self.transforms(sample, np.random.default_rng([self.seed, epoch, position]))


class Collate:
    """Augmented samples (same size) → ``(rgb B×3×H×W, second B×C×H×W | None, labels B×H×W int64)``."""

    def __init__(self, spec: InputSpec, fill: str) -> None:
        self.spec, self.fill = spec, fill

    def __call__(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        rgb, second = encode_frames([s.frame for s in samples], self.spec, fill=self.fill)
        labels = torch.from_numpy(np.stack([s.labels for s in samples]).astype(np.int64))
        return rgb, second, labels


class StepSampler(Sampler[list[tuple[int, int, int]]]):
    """Micro-batches of dataset keys for one rank, from optimiser step ``start_step`` to ``max_steps``.

    Step ``s`` uses positions ``[j·G, (j+1)·G)`` of epoch ``e = s // steps_per_epoch`` (``j = s mod
    steps_per_epoch``, ``G`` = global batch); micro-batch ``a`` of rank ``r`` takes the ``(a·world + r)``-th
    slice of ``micro`` positions. The leftover ``N mod G`` samples of an epoch are dropped.
    """

    def __init__(
        self, n: int, global_batch: int, world: int, rank: int, accum: int, seed: int, start_step: int, max_steps: int
    ) -> None:
        if global_batch % (world * accum):
            raise ValueError(f"batch_size {global_batch} is not divisible by world_size {world} × accum_steps {accum}")
        if n < global_batch:
            raise ValueError(f"the training split has {n} samples, fewer than one batch of {global_batch}")
        self.n, self.global_batch, self.world, self.rank, self.accum = n, global_batch, world, rank, accum
        self.micro = global_batch // (world * accum)
        self.seed, self.start_step, self.max_steps = int(seed), int(start_step), int(max_steps)
        self.steps_per_epoch = n // global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(self.n)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, perm = -1, None
        for step in range(self.start_step, self.max_steps):
            e, j = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            for a in range(self.accum):
                first = j * self.global_batch + (a * self.world + self.rank) * self.micro
                yield [(epoch, p, int(perm[p])) for p in range(first, first + self.micro)]


def steps_per_epoch(n: int, global_batch: int) -> int:
    return max(1, n // global_batch)


def epochs_to_steps(epochs: float, n: int, global_batch: int) -> int:
    return math.ceil(epochs * steps_per_epoch(n, global_batch))


def worker_init(worker_id: int) -> None:
    """One thread per DataLoader worker (the workers run in parallel already); Ctrl-C is the main process's."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    worker_ignores_ctrl_c(worker_id)


__all__ = [
    "AugmentedDataset",
    "Collate",
    "StepSampler",
    "build_transforms",
    "dataset_root",
    "epochs_to_steps",
    "open_split",
    "steps_per_epoch",
]
