"""The papers' test protocols through the :class:`~rgbd_seg_ros.pipeline.Segmenter` (validation and
``evaluate.py``): whole-frame or sliding-window inference, multi-scale and flip, one global confusion matrix
(summed over ranks when distributed).

Sliding windows (SA-Gate, GFF): at each scale the frame is resized, windows of ``crop`` are placed every
``stride`` (the last one flush with the border) and each window's logits (Segmenter, flip included) are
*averaged* where windows overlap. SA-Gate's code sums ``exp(logits)`` without normalising by the window count
and pads frames smaller than the crop; here a frame smaller than the crop is run whole. Scales average the
logits at frame size, as ``Segmenter.logits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rgbd_seg_ros.frames import RGBDFrame
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.pipeline import Segmenter
from training.entry import signals_ignored, worker_ignores_ctrl_c


@dataclass(frozen=True)
class Protocol:
    """How a frame is evaluated.

    Attributes:
        scales: test scales (× input size, or × frame size for sliding windows).
        flip: add the mirrored frame.
        sliding: ``((crop_h, crop_w), (stride_h, stride_w))`` or None for whole-frame inference.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    sliding: tuple[tuple[int, int], tuple[int, int]] | None = None

    def describe(self) -> str:
        s = f"scales {list(self.scales)}, flip {self.flip}"
        if self.sliding:
            s += f", sliding crop {list(self.sliding[0])} stride {list(self.sliding[1])}"
        return s


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window origins covering ``0..length`` with windows of ``crop`` every ``stride``, the last flush."""
    if length <= crop:
        return [0]
    starts = [*range(0, length - crop, stride), length - crop]
    return sorted(set(starts))


def crop_frame(frame: RGBDFrame, x0: int, y0: int, w: int, h: int) -> RGBDFrame:
    """The ``w × h`` window of ``frame`` at ``(x0, y0)`` (inside the frame), intrinsics following."""
    return RGBDFrame(
        np.ascontiguousarray(frame.rgb[y0 : y0 + h, x0 : x0 + w]),
        np.ascontiguousarray(frame.depth[y0 : y0 + h, x0 : x0 + w]),
        frame.intrinsics.cropped(x0, y0, w, h),
        frame.stamp_ns,
        frame.frame_id,
    )


def sliding_logits(segmenter: Segmenter, frame: RGBDFrame, crop: Sequence[int], stride: Sequence[int], flip: bool):
    """Logits 1×K×H×W of ``frame`` averaged over overlapping ``crop`` (h, w) windows every ``stride`` (h, w)."""
    h, w = frame.height, frame.width
    total = count = None
    for y0 in window_starts(h, crop[0], stride[0]):
        for x0 in window_starts(w, crop[1], stride[1]):
            ch, cw = min(crop[0], h), min(crop[1], w)
            logits = segmenter.logits(crop_frame(frame, x0, y0, cw, ch), (1.0,), flip)
            if total is None:
                total = logits.new_zeros((1, logits.shape[1], h, w))
                count = logits.new_zeros((1, 1, h, w))
            total[..., y0 : y0 + ch, x0 : x0 + cw] += logits
            count[..., y0 : y0 + ch, x0 : x0 + cw] += 1
    return total / count


def frame_logits(segmenter: Segmenter, frame: RGBDFrame, protocol: Protocol) -> Tensor:
    """Logits 1×K×H×W at the frame's size under ``protocol``."""
    if protocol.sliding is None:
        return segmenter.logits(frame, protocol.scales, protocol.flip)
    crop, stride = protocol.sliding
    total = None
    for scale in protocol.scales:
        size = (max(1, round(frame.height * scale)), max(1, round(frame.width * scale)))
        logits = sliding_logits(segmenter, frame.resized(*size), crop, stride, protocol.flip)
        if logits.shape[-2:] != (frame.height, frame.width):
            logits = F.interpolate(logits, size=(frame.height, frame.width), mode="bilinear", align_corners=False)
        total = logits if total is None else total + logits
    return total / len(protocol.scales)


@dataclass
class EvalResult:
    """A confusion matrix plus a few (rgb, ground truth, prediction) examples for overlays."""

    matrix: ConfusionMatrix
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


def evaluate(
    segmenter: Segmenter,
    dataset,
    protocol: Protocol = Protocol(),
    rank: int = 0,
    world: int = 1,
    limit: int | None = None,
    num_examples: int = 0,
    num_workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Run ``segmenter`` over ``dataset`` (samples with ``.frame`` and ``.labels``); rank ``r`` of ``world``
    takes samples r, r + world, …; the matrix is summed over ranks (``ConfusionMatrix.all_reduce``).

    Args:
        limit: only the first ``limit`` samples.
        num_examples: keep the first examples of rank 0 (rgb, labels, prediction) for overlays.
        num_workers: DataLoader workers that read the samples.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = list(range(rank, n, world))
    cm = ConfusionMatrix(segmenter.label_set.num_classes)
    result = EvalResult(cm)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        worker_init_fn=worker_ignores_ctrl_c if num_workers else None,
        generator=torch.Generator(),  # do not draw from the global RNG (training continues after validation)
    )
    with signals_ignored():  # workers start with Ctrl-C ignored (one arriving during a fork would be swallowed)
        samples = iter(loader)
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, total=len(indices), desc="evaluate", unit="frame", dynamic_ncols=True)
    for sample in samples:
        pred = frame_logits(segmenter, sample.frame, protocol).argmax(1)[0].cpu().numpy()
        cm.update(pred.astype(np.int64), sample.labels.astype(np.int64))
        if len(result.examples) < num_examples and rank == 0:
            result.examples.append((sample.frame.rgb, sample.labels, pred.astype(np.uint8)))
    cm.all_reduce()
    return result


def _identity(x):
    return x


def protocol_from_eval_config(eval_cfg: dict, multiscale: bool = True) -> Protocol:
    """A :class:`Protocol` from a recipe's ``eval`` section (a dict, as stored in checkpoint metadata)."""
    sliding = eval_cfg.get("sliding")
    return Protocol(
        scales=tuple(float(s) for s in eval_cfg.get("scales", [1.0])) if multiscale else (1.0,),
        flip=bool(eval_cfg.get("flip", False)),
        sliding=(tuple(sliding["crop"]), tuple(sliding["stride"])) if sliding else None,
    )


__all__ = [
    "EvalResult",
    "Protocol",
    "evaluate",
    "frame_logits",
    "protocol_from_eval_config",
    "window_starts",
]
