"""From model logits to a label image and a confidence image at the frame's size, without upsampling every class.

Definitions (``logits`` K×h×w at the model's resolution, the frame H×W):

* **labels** = argmax over classes of the logits upsampled bilinearly to H×W (``align_corners=False``) — the same
  labels as ``F.interpolate`` followed by ``argmax``. Bilinear interpolation is a convex combination of the four
  neighbouring model pixels, so where all four have the same arg-max class that class is the arg-max of the
  combination as well; only the other pixels (near class boundaries) need the logits of every class.
* **confidence** = the model-resolution softmax probability of the chosen class, interpolated bilinearly from the
  same four neighbours (at the model's own resolution: exactly the softmax probability of the arg-max class).

The cost is a few H×W passes plus K per boundary pixel, instead of K×H×W interpolations, exponentials and
reductions (``benchmarks/postprocess.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Above this fraction of frame pixels near class boundaries, every class is interpolated instead (same result).
DENSE_FRACTION = 0.2


def _source_taps(size_in: int, size_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps of ``align_corners=False`` resizing: (i0, i1, weight of i1) per output index, as in torch."""
    scale = size_in / size_out
    src = ((torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().to(torch.long).clamp(max=size_in - 1)
    i1 = (i0 + 1).clamp(max=size_in - 1)
    return i0, i1, src - i0


def softmax_confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(labels, confidence) at the logits' own resolution: arg-max and its softmax probability (K×h×w → h×w).

    One pass over the class planes for the maximum and one for Σ exp(l − max): each plane is contiguous, which is
    2× faster on the CPU than reductions over the class axis. Labels are uint8 for K ≤ 256, else int32; ties go
    to the lowest class, as ``argmax``.
    """
    k = logits.shape[0]
    top = logits[0].clone()
    labels = torch.zeros(top.shape, dtype=torch.uint8 if k <= 256 else torch.int32, device=logits.device)
    for c in range(1, k):
        better = logits[c] > top
        torch.maximum(top, logits[c], out=top)
        labels.masked_fill_(better, c)
    total = torch.zeros_like(top)
    for c in range(k):
        total += torch.exp(logits[c] - top)
    return labels, total.reciprocal_()


def labels_and_confidence(logits: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Labels and confidence (float32) at the frame size ``height``×``width`` from ``logits`` K×h×w.

    Labels are uint8 H×W for ≤ 256 classes, else int32.

    See the module docstring for the definitions.
    """
    logits = logits.float()
    labels_lr, conf_lr = softmax_confidence(logits)
    k, h, w = logits.shape
    if (h, w) == (height, width):
        return labels_lr, conf_lr
    dev = logits.device
    y0, y1, wy = _source_taps(h, height, dev)
    x0, x1, wx = _source_taps(w, width, dev)

    def corners(grid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rows0, rows1 = grid.index_select(-2, y0), grid.index_select(-2, y1)
        pick = lambda rows, x: rows.index_select(-1, x)  # noqa: E731
        return pick(rows0, x0), pick(rows0, x1), pick(rows1, x0), pick(rows1, x1)

    a00, a01, a10, a11 = corners(labels_lr)
    mixed = ~((a00 == a01) & (a00 == a10) & (a00 == a11))
    # Confidence where all four neighbours agree: the interpolated probability of their common class.
    confidence = F.interpolate(conf_lr[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    iy, ix = mixed.nonzero(as_tuple=True)
    if not iy.numel():
        return a00, confidence
    ly, lx = wy[iy], wx[ix]
    i00, i01, i10, i11 = (y0[iy] * w + x0[ix], y0[iy] * w + x1[ix], y1[iy] * w + x0[ix], y1[iy] * w + x1[ix])

    def interpolate(rows: Tensor) -> Tensor:
        """Bilinear value at the mixed pixels of R×(h·w) ``rows``: the expression and order of torch's CPU kernel."""
        top = (1 - lx) * rows[:, i00] + lx * rows[:, i01]
        bottom = (1 - lx) * rows[:, i10] + lx * rows[:, i11]
        return (1 - ly) * top + ly * bottom

    if iy.numel() > DENSE_FRACTION * height * width:  # noisy logits: interpolating every class is cheaper
        up = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        labels, _ = softmax_confidence(up)
        chosen = labels[iy, ix].long()
    else:
        labels = a00
        chosen = interpolate(logits.reshape(k, h * w)).argmax(0)
        labels[iy, ix] = chosen.to(labels.dtype)
    probs = torch.softmax(logits, 0).reshape(k, h * w)
    corner = lambda i: probs[chosen, i]  # noqa: E731
    confidence[iy, ix] = (1 - ly) * ((1 - lx) * corner(i00) + lx * corner(i01)) + ly * (
        (1 - lx) * corner(i10) + lx * corner(i11)
    )
    return labels, confidence
