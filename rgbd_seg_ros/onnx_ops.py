"""ONNX export of models that use ``torchvision.ops.deform_conv2d`` (SGNet's S-Conv).

The torch exporter has no translation for ``torchvision::deform_conv2d``; :data:`ONNX_TRANSLATIONS` maps it to
ONNX ``DeformConv`` (opset ≥ 19; inputs X, W, offset, B, mask). ONNX Runtime's CPU provider implements
``DeformConv`` with the same offset layout as torchvision ((dy, dx) per kernel tap, row-major taps);
``tests/test_sgnet.py`` checks the parity numerically with non-zero offsets.

Use :func:`export_onnx`, or pass ``custom_translation_table=ONNX_TRANSLATIONS`` to ``torch.onnx.export(...,
dynamo=True)`` yourself. Shapes are static (the pipeline feeds one fixed input size).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

MIN_OPSET = 19  # first opset with DeformConv


def _deform_conv2d_to_onnx(
    input,
    weight,
    offset,
    mask,
    bias,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    offset_groups: int,
    use_mask: bool,
):
    """``torchvision::deform_conv2d`` (its argument order) → ONNX ``DeformConv``."""
    from onnxscript import opset19 as op

    return op.DeformConv(
        input,
        weight,
        offset,
        bias,
        mask if use_mask else None,
        dilations=[dilation_h, dilation_w],
        group=groups,
        offset_group=offset_groups,
        pads=[pad_h, pad_w, pad_h, pad_w],
        strides=[stride_h, stride_w],
    )


def onnx_translations() -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` covering torchvision's ops we use."""
    import torchvision.ops  # noqa: F401 - registers torch.ops.torchvision

    return {torch.ops.torchvision.deform_conv2d.default: _deform_conv2d_to_onnx}


def export_onnx(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    opset: int = MIN_OPSET,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> Path:
    """Export ``model(*args)`` (put it in eval mode first) to ``path`` with the dynamo exporter at ``opset``.

    Raises:
        ValueError: ``opset`` < 19 (no ``DeformConv``).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX DeformConv needs opset >= {MIN_OPSET}, got {opset}")
    path = Path(path)
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        custom_translation_table=onnx_translations(),
        verbose=False,
    )
    program.save(str(path))
    return path
