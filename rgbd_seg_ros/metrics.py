"""Segmentation metrics from one global confusion matrix accumulated over a whole evaluation set.

Protocol (the one SGNet's and SA-Gate's evaluation code use: a global histogram, ``nanmean`` over classes):

* Rows are ground truth, columns predictions: ``matrix[g, p]`` counts pixels of class ``g`` predicted ``p``.
  Pixels whose *target* is ``ignore_index`` are skipped; predictions are only read where the target is
  valid, and there they must be a class id (a prediction of ``ignore_index`` is an error, not a miss).
* Per-class IoU ``= tp / (tp + fp + fn)``; a class absent from both prediction and ground truth has no IoU
  (NaN) and is **excluded** from the mean (``absent="exclude"``, the default; torchmetrics'
  ``MulticlassJaccardIndex(average="macro")`` does the same). ``absent="zero"`` instead counts such classes
  as IoU 0 over all ``K`` classes, as SSMA's code (and a CSAIL-style ``I / (U + eps)`` mean) does.
* Pixel accuracy ``= Σ tp / #valid pixels``. Mean accuracy = mean over classes *present in the ground
  truth* of ``tp / #ground-truth pixels`` (SGNet eq. 8; a class only predicted, never labelled, is excluded).
* Every metric is NaN when nothing has been counted yet.

Over the NYUv2 / SUN RGB-D test sets every class occurs, so the conventions only differ on small subsets.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from rgbd_seg_ros.labels import to_numpy

__all__ = ["ConfusionMatrix"]


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64 with NaN where ``den == 0`` (no warnings)."""
    num = num.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class ConfusionMatrix:
    """``K × K`` int64 confusion matrix (rows = ground truth, columns = prediction) with ignore pixels."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class id (num_classes={num_classes})")
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.matrix[:] = 0

    def update(self, pred: Any, target: Any) -> ConfusionMatrix:
        """Count one batch: ``pred`` and ``target`` are integer label arrays or tensors of the same shape.

        Raises ``TypeError`` for non-integer input (e.g. logits) and ``ValueError`` for a shape mismatch,
        a target value that is neither a class nor ``ignore_index``, or a prediction outside ``0..K-1``
        at a valid pixel.
        """
        p, t = to_numpy(pred), to_numpy(target)
        for name, a in (("pred", p), ("target", t)):
            if not np.issubdtype(a.dtype, np.integer):
                hint = " (pass argmax labels, not logits or probabilities)" if a.dtype.kind == "f" else ""
                raise TypeError(f"{name} must hold integer class ids, got dtype {a.dtype}{hint}")
        if p.shape != t.shape:
            raise ValueError(f"pred shape {p.shape} does not match target shape {t.shape}")
        t, p = t.reshape(-1), p.reshape(-1)
        ignored = t == self.ignore_index if self.ignore_index is not None else None
        self._check_range(t, ignored, "target", extra=f" or ignore_index {self.ignore_index}")
        self._check_range(p, ignored, "pred", extra=" at pixels with a valid target")
        k = self.num_classes
        # Flat bin g·K + p; ignored pixels go to one extra bin that is dropped (cheaper than compacting).
        flat = t.astype(np.intp) * k
        np.add(flat, p, out=flat, casting="unsafe")
        if ignored is not None:
            flat[ignored] = k * k
        self.matrix += np.bincount(flat, minlength=k * k + 1)[: k * k].reshape(k, k)
        return self

    def _check_range(self, values: np.ndarray, ignored: np.ndarray | None, name: str, extra: str) -> None:
        """Raise if ``values`` outside the ``ignored`` pixels fall outside ``0..K-1``."""
        if values.size == 0 or (int(values.min()) >= 0 and int(values.max()) < self.num_classes):
            return
        bad = (values < 0) | (values >= self.num_classes)
        if ignored is not None:
            bad &= ~ignored
        if bad.any():
            shown = np.unique(values[bad])[:8].tolist()
            raise ValueError(f"{name} holds values outside 0..{self.num_classes - 1}{extra}: {shown}")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (same ``num_classes`` and ``ignore_index``) into this one."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a ConfusionMatrix({other.num_classes}, ignore_index={other.ignore_index}) into "
                f"ConfusionMatrix({self.num_classes}, ignore_index={self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ``torch.distributed`` ranks in place; a no-op without an initialised group."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = "cpu"
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = torch.from_numpy(self.matrix).to(device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self.matrix[:] = counts.cpu().numpy()
        return self

    @property
    def total(self) -> int:
        """Number of valid (non-ignored) pixels counted."""
        return int(self.matrix.sum())

    def _tp_gt_pred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.diag(self.matrix), self.matrix.sum(axis=1), self.matrix.sum(axis=0)

    def per_class_iou(self) -> np.ndarray:
        """``K`` IoUs (float64); NaN for classes absent from both prediction and ground truth."""
        tp, gt, pred = self._tp_gt_pred()
        return _divide(tp, gt + pred - tp)

    def per_class_accuracy(self) -> np.ndarray:
        """``K`` recalls ``tp / #ground-truth pixels`` (float64); NaN for classes absent from the ground truth."""
        tp, gt, _ = self._tp_gt_pred()
        return _divide(tp, gt)

    def miou(self, absent: Literal["exclude", "zero"] = "exclude") -> float:
        """Mean IoU over classes; ``absent`` says what classes never seen in prediction or truth count as."""
        iou = self.per_class_iou()
        if absent == "exclude":
            return _nanmean(iou)
        if absent == "zero":
            return float(np.nan_to_num(iou, nan=0.0).mean()) if self.total else float("nan")
        raise ValueError(f"absent must be 'exclude' or 'zero', got {absent!r}")

    def pixel_accuracy(self) -> float:
        """Fraction of valid pixels predicted correctly."""
        total = self.total
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def mean_accuracy(self) -> float:
        """Mean per-class recall over classes present in the ground truth."""
        return _nanmean(self.per_class_accuracy())

    def as_dict(self, class_names: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary in **percent** (0–100; NaN → ``None``), the one unit of every log, report and
        ``metrics.json``: ``miou``, ``pixel_accuracy``, ``mean_accuracy``, ``per_class_iou`` and
        ``per_class_accuracy`` (lists in class order), ``unit`` (``"percent"``), ``num_pixels``,
        ``confusion_matrix`` (pixel counts, rows = ground truth, columns = prediction), and ``class_names`` when
        given. The methods (:meth:`miou`, ...) return fractions."""

        def percent(x: float) -> float | None:
            return None if np.isnan(x) else 100.0 * float(x)

        out: dict[str, Any] = {
            "miou": percent(self.miou()),
            "pixel_accuracy": percent(self.pixel_accuracy()),
            "mean_accuracy": percent(self.mean_accuracy()),
            "per_class_iou": [percent(v) for v in self.per_class_iou()],
            "per_class_accuracy": [percent(v) for v in self.per_class_accuracy()],
            "unit": "percent",
            "num_pixels": self.total,
            "confusion_matrix": self.matrix.tolist(),
        }
        if class_names is not None:
            if len(class_names) != self.num_classes:
                raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
            out["class_names"] = list(class_names)
        return out

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={self.total}, miou={self.miou():.4f})"
        )
