"""From model logits to a label image and a confidence image at the frame's size, without upsampling every class.

The logits (K×h×w) reach the frame through a chain of bilinear resizes, ``steps``: ``[((H, W), align_corners),
...]``; a step to the current size is the identity and is skipped. For a model that returns its coarse logits
(:mod:`rgbd_seg_ros.models.coarse`) the chain is its own final upsampling to the input size
(``align_corners=True``) and then the pipeline's resize to the frame (``align_corners=False``).

Definitions:

* **labels** = argmax over classes of the logits taken through ``steps`` (:func:`upsample`, then ``argmax``;
  ties go to the lowest class).
* **confidence** = the softmax probability of the chosen class at the logits' own resolution, taken through the
  same resizes (at that resolution: exactly the softmax probability of the arg-max class).

How: every output pixel is a convex combination of a window of S×S logit pixels (S = 2 for one upsampling, 3 for
two), and pixels are grouped into *cells* that share a window. Where the window's pixels all have the same arg-max
class, that class is the arg-max of any convex combination of them, so the whole cell gets it. In the other cells a
class can win only if its largest window value reaches the smallest window value of the best window-top class
(below that bound it loses everywhere in the cell); those candidates are evaluated for the cell's pixels with two
small matrix products. The result equals :func:`upsample` + ``argmax`` up to float rounding (the sums run in
another order): a pixel can differ only where two classes tie within about 1e-6 relative. Noisy logits (most cells
mixed) and frames no larger than the logits take the dense path (same definitions). Costs:
``benchmarks/postprocess.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

#: One bilinear resize: ((height, width), align_corners).
Resize = tuple[tuple[int, int], bool]

#: Above this fraction of the dense work (K×H×W) in candidate evaluations, every class is upsampled instead (same
#: definitions; noisy logits, where most cells are mixed and most classes are candidates).
DENSE_FRACTION = 0.25


def upsample(logits: Tensor, steps: Sequence[Resize]) -> Tensor:
    """``logits`` B×K×h×w taken through each bilinear resize of ``steps`` (the dense definition): B×K×H×W."""
    for size, align_corners in steps:
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)
    return logits


def argmax_planes(x: Tensor) -> tuple[Tensor, Tensor]:
    """(arg-max, maximum) over dim 0 of ``x`` (K×…), one contiguous plane at a time: 2–3× faster on the CPU than
    ``torch.max(dim=0)``, which reduces over a strided axis. Arg-max is uint8 for K ≤ 256, else int32; ties go to
    the lowest index, as ``argmax``."""
    k = x.shape[0]
    top = x[0].clone()
    labels = torch.zeros(top.shape, dtype=torch.uint8 if k <= 256 else torch.int32, device=x.device)
    for c in range(1, k):
        better = x[c] > top
        torch.maximum(top, x[c], out=top)
        labels.masked_fill_(better, c)
    return labels, top


def softmax_confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(labels, confidence) at the logits' own resolution: arg-max and its softmax probability (K×h×w → h×w)."""
    labels, top = argmax_planes(logits)
    total = torch.zeros_like(top)
    for c in range(logits.shape[0]):
        total += torch.exp(logits[c] - top)
    return labels, total.reciprocal_()


def _resize_matrix(n_in: int, n_out: int, align_corners: bool) -> Tensor:
    """n_out×n_in float64 matrix of a 1-D bilinear resize, with torch's source positions and edge clamping."""
    i = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = ((i + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    out.index_put_((rows, i0), 1 - (src - i0), accumulate=True)
    out.index_put_((rows, i1), src - i0, accumulate=True)
    return out


@dataclass(frozen=True)
class _AxisPlan:
    """One axis of the resize chain: n_in source → n_out output indices, grouped by their source window.

    matrix: n_out×n_in weights (float32). window: S, the window length. starts: G first source index per group.
    group: n_out group index per output index. members: G×N output indices per group (padded by repeating the
    last). weights: G×N×S the members' weights on their window.
    """

    matrix: Tensor
    window: int
    starts: Tensor
    group: Tensor
    members: Tensor
    weights: Tensor


@lru_cache(maxsize=64)
def _axis_plan(n_in: int, steps: tuple[tuple[int, bool], ...], device: torch.device) -> _AxisPlan:
    """The plan of one axis, built once per (size, resizes, device): frames of a stream reuse it."""
    matrix = torch.eye(n_in, dtype=torch.float64)
    for n_out, align_corners in steps:
        if n_out != matrix.shape[0]:
            matrix = _resize_matrix(matrix.shape[0], n_out, align_corners) @ matrix
    nonzero = matrix > 0
    first = nonzero.to(torch.uint8).argmax(1)
    last = n_in - 1 - nonzero.flip(1).to(torch.uint8).argmax(1)
    window = int((last - first + 1).max())
    starts, group, counts = torch.unique_consecutive(first.clamp(max=n_in - window), return_inverse=True,
                                                     return_counts=True)  # fmt: skip
    members = (torch.cumsum(counts, 0) - counts)[:, None] + torch.minimum(
        torch.arange(int(counts.max()))[None], counts[:, None] - 1
    )
    taps = starts[:, None] + torch.arange(window)[None]
    weights = matrix[members[:, :, None], taps[:, None, :]]
    plan = (matrix.float(), starts, group, members, weights.float())
    matrix, starts, group, members, weights = (v.to(device) for v in plan)
    return _AxisPlan(matrix, window, starts, group, members, weights)


def labels_and_confidence(logits: Tensor, steps: Sequence[Resize]) -> tuple[Tensor, Tensor]:
    """Labels and confidence (float32) at the last size of ``steps`` from ``logits`` K×h×w (see the module docs).

    Labels are uint8 H×W for ≤ 256 classes, else int32. Empty ``steps``: at the logits' own resolution.
    """
    logits = logits.float()
    k, h, w = logits.shape
    py, px = (_axis_plan(n, tuple((s[axis], ac) for s, ac in steps), logits.device) for axis, n in ((0, h), (1, w)))
    if py.matrix.shape[0] == h and px.matrix.shape[0] == w and py.window == px.window == 1:
        return softmax_confidence(logits)
    if py.matrix.shape[0] * px.matrix.shape[0] <= h * w:  # no larger than the logits: dense is cheaper
        return _dense(logits, steps)
    labels_lr, conf_lr = softmax_confidence(logits)
    sy, sx = py.window, px.window
    win = labels_lr.unfold(0, sy, 1).unfold(1, sx, 1)[py.starts][:, px.starts].flatten(2)  # Gy×Gx×T
    mixed = ~(win == win[..., :1]).all(-1)
    labels = win[..., 0].index_select(0, py.group).index_select(1, px.group)
    confidence = py.matrix @ conf_lr @ px.matrix.T  # exact where a cell is uniform: the chosen class is the top
    cy, cx = mixed.nonzero(as_tuple=True)
    if not cy.numel():
        return labels, confidence
    n, taps = cy.numel(), sy * sx

    def windows(x: Tensor) -> Tensor:
        """The mixed cells' windows of K×h×w ``x``: n×K×T."""
        return x.unfold(1, sy, 1).unfold(2, sx, 1)[:, py.starts[cy], px.starts[cx]].reshape(k, n, taps).transpose(0, 1)

    values = windows(logits)
    # Class c can win somewhere in the cell only if its largest window value reaches the smallest value that the
    # best window-top class takes there: the maximum over classes is at least that everywhere in the cell.
    tops = win[cy, cx].long()  # n×T: each window pixel's top class
    floor = values.gather(1, tops[:, :, None].expand(n, taps, taps)).amin(2).amax(1)  # n
    alive = values.amax(2) >= floor[:, None]  # n×K
    m = int(alive.sum(1).max())
    if n * m * py.members.shape[1] * px.members.shape[1] > DENSE_FRACTION * k * labels.numel():
        return _dense(logits, steps)
    candidates = torch.argsort((~alive).to(torch.uint8), dim=1, stable=True)[:, :m]  # alive first, class order
    candidates = torch.where(alive.gather(1, candidates), candidates, candidates[:, :1])  # pad: repeat the first

    def through_steps(x: Tensor) -> Tensor:
        """Candidate values of n×K×T windows at the cells' pixels: m×n×Ny×Nx."""
        chosen = x.gather(1, candidates[:, :, None].expand(n, m, taps)).view(n, m, sy, sx)
        return torch.einsum("nyi,nmij,nxj->mnyx", py.weights[cy], chosen, px.weights[cx])

    best, _ = argmax_planes(through_steps(values))  # n×Ny×Nx, index into candidates
    best = best.long()
    rows = py.members[cy][:, :, None].expand_as(best)
    cols = px.members[cx][:, None, :].expand_as(best)
    labels[rows, cols] = candidates.gather(1, best.flatten(1)).view_as(best).to(labels.dtype)
    probabilities = windows(torch.softmax(logits, 0))
    confidence[rows, cols] = through_steps(probabilities).gather(0, best[None])[0]
    return labels, confidence


def _dense(logits: Tensor, steps: Sequence[Resize]) -> tuple[Tensor, Tensor]:
    """The definitions computed densely: every class (and its probability) through ``steps``."""
    labels, _ = argmax_planes(upsample(logits[None], steps)[0])
    probabilities = upsample(torch.softmax(logits, 0)[None], steps)[0]
    return labels, probabilities.gather(0, labels.long()[None])[0]
