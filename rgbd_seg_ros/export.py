"""``rgbd-seg export``: a checkpoint to an ONNX file carrying its metadata (model, label set, input spec, size)."""

from __future__ import annotations

from pathlib import Path

from rgbd_seg_ros.backends import TorchBackend, export_model_onnx
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.settings import RunOptions, resolve_input_size

#: Export size of a checkpoint that records no input size and gets none: a VGA camera frame (H, W).
FALLBACK_EXPORT_SIZE = (480, 640)


def export_checkpoint_onnx(
    checkpoint: str | Path, out: str | Path, input_size: tuple[int, int] | None = None, coarse: bool = False
) -> tuple[Path, tuple[int, int]]:
    """Export ``checkpoint`` to ``out`` (atomically) at a fixed input size; returns (path, (h, w)).

    The graph returns logits at the input size, or with ``coarse`` the model's logits before its final upsampling
    where it has one (:mod:`rgbd_seg_ros.models.coarse`; recorded in the file, so this package's runtime upsamples
    them while it takes labels).

    The size follows :func:`~rgbd_seg_ros.settings.resolve_input_size` (explicit, else the checkpoint's, else
    :data:`FALLBACK_EXPORT_SIZE`), rounded to the model's size divisor. The example inputs are a synthetic frame
    prepared by the Segmenter, so the graph sees exactly the tensors the pipeline feeds it.
    """
    from rgbd_seg_ros.models.checkpoints import load_checkpoint
    from rgbd_seg_ros.synthetic import SceneGenerator

    checkpoint = Path(checkpoint)
    model, metadata = load_checkpoint(checkpoint)
    size = resolve_input_size(input_size, metadata, checkpoint.name) or FALLBACK_EXPORT_SIZE
    segmenter = Segmenter._from_metadata(
        TorchBackend(model, "cpu", "fp32"), metadata, size, "fast", RunOptions(backend="torch")
    )
    h, w = segmenter.model_size(size)
    inputs = segmenter.prepare(SceneGenerator(h, w, seed=0).sample(0).frame)
    return export_model_onnx(model, inputs, out, metadata, coarse=coarse), (h, w)
