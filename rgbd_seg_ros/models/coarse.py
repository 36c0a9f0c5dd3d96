"""Coarse logits: a model's eval output before its final bilinear upsampling to the input size.

SGNet, SA-Gate (DeepLabV3+ head) and the released GFF end by upsampling their head's logits bilinearly to the
input size. They mix in :class:`CoarseLogits`; inside :func:`coarse_logits` their eval forward returns the head's
logits at the output stride instead (K×h/s×w/s), and the runtime folds that upsampling into the post-process
(:mod:`rgbd_seg_ros.postprocess`, which does not upsample every class). Outside it, and in training, the forward is
unchanged. Models that end otherwise (ACNet, AdapNet++, SSMA: transposed convolutions) return their logits at the
input size either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn


class CoarseLogits:
    """Mix-in for an ``nn.Module`` whose eval output is its head's logits upsampled bilinearly to the input size."""

    #: ``align_corners`` of the final upsampling (the authors' code of all three models: True).
    final_align_corners: bool = True
    #: Set by :func:`coarse_logits`: the eval forward skips the final upsampling.
    coarse_logits: bool = False

    def upsample_logits(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """The final upsampling of B×K×h×w ``logits`` to ``size`` (H, W): skipped in eval inside
        :func:`coarse_logits`."""
        if self.coarse_logits and not self.training:
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.final_align_corners)


def final_align_corners(model: nn.Module) -> bool | None:
    """``align_corners`` of the upsampling that ``model``'s coarse logits still need; None if it has none."""
    return model.final_align_corners if isinstance(model, CoarseLogits) else None


@contextmanager
def coarse_logits(model: nn.Module) -> Iterator[bool | None]:
    """Within: ``model`` (eval) returns its coarse logits when it can. Yields :func:`final_align_corners`."""
    if not isinstance(model, CoarseLogits):
        yield None
        return
    before = model.coarse_logits
    model.coarse_logits = True
    try:
        yield model.final_align_corners
    finally:
        model.coarse_logits = before
