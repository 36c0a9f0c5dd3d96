"""Segmentation losses with deep supervision, normalised so that a global batch gives the same loss however it
is split across processes and accumulation steps.

Each output ``t`` (the main logits, then the model's auxiliary logits) contributes
``w_t · S_t / (N · P_t / P)`` where ``S_t`` is the sum of per-pixel losses over the valid pixels of the
micro-batch (times the class weight of each pixel's label), ``N`` the class-weighted count of valid label
pixels in the *whole global batch* (all micro-batches on all ranks), ``P`` the label resolution in pixels and
``P_t`` that of output ``t``. Outputs at the label resolution are therefore exact per-pixel means over the global
batch (PyTorch's ``cross_entropy(reduction="mean")`` over one big batch); outputs at a lower resolution
(ACNet's deep supervision) get labels nearest-downsampled to their size and the same normaliser scaled by the
pixel ratio, so that no output needs its own global count (and DDP ≡ one process, exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def flatten_outputs(
    outputs: Tensor | Mapping, aux_weights: Sequence[float] | Mapping[str, float] | None
) -> list[tuple[str, Tensor, float]]:
    """``[(name, logits, weight)]`` of a model's train-mode output: ``("out", main, 1.0)`` then the aux outputs.

    ``outputs`` is a tensor (no aux) or ``{"out": …, "aux": list | dict | tensor}``; ``aux_weights`` matches
    ``aux`` (a sequence for a list, a mapping for a dict). A mismatch in count or names is an error.
    """
    if isinstance(outputs, Tensor):
        return [("out", outputs, 1.0)]
    if "out" not in outputs:
        raise ValueError(f"train-mode model output must hold 'out', got keys {sorted(outputs)}")
    terms = [("out", outputs["out"], 1.0)]
    aux = outputs.get("aux")
    if aux is None:
        aux = []
    if isinstance(aux, Tensor):
        aux = [aux]
    if isinstance(aux, Mapping):
        weights = dict(aux_weights or {})
        if set(weights) != set(aux):
            raise ValueError(f"aux outputs {sorted(aux)} but aux weights for {sorted(weights)}")
        return terms + [(f"aux_{k}", v, float(weights[k])) for k, v in aux.items()]
    weights = list(aux_weights or [])
    if len(weights) != len(aux):
        raise ValueError(f"{len(aux)} aux outputs but {len(weights)} aux weights {weights}")
    return terms + [(f"aux{i}", v, float(w)) for i, (v, w) in enumerate(zip(aux, weights))]


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """B×H×W integer labels nearest-resampled (pixel-centre aligned) to ``size`` (h, w)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    h, w = labels.shape[-2:]
    ys = ((torch.arange(size[0], device=labels.device) + 0.5) * (h / size[0])).long().clamp_(max=h - 1)
    xs = ((torch.arange(size[1], device=labels.device) + 0.5) * (w / size[1])).long().clamp_(max=w - 1)
    return labels[:, ys[:, None], xs[None, :]]


@dataclass
class SegmentationLoss:
    """Cross-entropy or focal loss over valid pixels, with optional class weights (see the module docstring).

    Args:
        num_classes: K.
        ignore_index: label value of pixels that do not count.
        class_weights: K weights (None = all 1).
        focal_gamma: None = cross-entropy; else the focal loss ``−(1 − p)^γ log p`` (Lin et al.).
    """

    num_classes: int
    ignore_index: int = 255
    class_weights: Tensor | None = None
    focal_gamma: float | None = None

    def weight_sum(self, labels: Tensor) -> Tensor:
        """Σ class weight over the valid pixels of ``labels`` (float64 scalar): this micro-batch's part of N."""
        valid = labels != self.ignore_index
        if self.class_weights is None:
            return valid.sum().to(torch.float64)
        w = self.class_weights.to(labels.device, torch.float64)
        return w[labels[valid]].sum()

    def pixel_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        """S: Σ over valid pixels of (class weight ×) the per-pixel loss of B×K×h×w ``logits``; labels B×H×W."""
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the loss expects {self.num_classes}")
        labels = resize_labels(labels, logits.shape[-2:])
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            raise ValueError(f"labels outside 0..{self.num_classes - 1} (and not {self.ignore_index}) in the batch")
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        logits = logits.float()
        if self.focal_gamma is None:
            return F.cross_entropy(logits, labels, weight=weight, ignore_index=self.ignore_index, reduction="sum")
        nll = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        loss = (1.0 - torch.exp(-nll)).pow(self.focal_gamma) * nll
        if weight is not None:
            valid = labels != self.ignore_index
            loss = loss * torch.where(valid, weight[labels.clamp(0, self.num_classes - 1)], 0.0)
        return loss.sum()

    def __call__(
        self,
        terms: list[tuple[str, Tensor, float]],
        labels: Tensor,
        normaliser: float,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of one micro-batch: ``Σ_t w_t S_t / (N P_t / P)`` with ``normaliser`` = N (global).

        Returns the loss tensor (to back-propagate) and each term's contribution (floats, for logging).
        """
        n = max(float(normaliser), 1e-12)
        full = labels.shape[-2] * labels.shape[-1]
        total, parts = None, {}
        for name, logits, weight in terms:
            ratio = logits.shape[-2] * logits.shape[-1] / full
            value = weight * self.pixel_sum(logits, labels) / (n * ratio)
            parts[name] = float(value.detach())
            total = value if total is None else total + value
        return total, parts


def median_frequency_weights(label_maps, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015): ``w_c = median(f) / f_c`` with ``f_c`` = pixels of
    class c / pixels of the images that contain c. Classes never seen get weight 0.

    Args:
        label_maps: iterable of H×W uint8 label arrays (255 = ignore).
    """
    pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)
    for labels in label_maps:
        labels = np.asarray(labels)
        valid = labels[labels != ignore_index].astype(np.int64)
        if valid.size and valid.max() >= num_classes:
            raise ValueError(f"label {valid.max()} >= num_classes {num_classes}")
        counts = np.bincount(valid, minlength=num_classes)
        pixels += counts
        image_pixels[counts > 0] += labels.size
    freq = np.divide(pixels, image_pixels, out=np.zeros(num_classes), where=image_pixels > 0)
    seen = freq > 0
    if not seen.any():
        raise ValueError("no labelled pixels to compute class weights from")
    weights = np.zeros(num_classes)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights


__all__ = ["SegmentationLoss", "flatten_outputs", "median_frequency_weights", "resize_labels"]
