"""Parameter and multiply-accumulate counts of every registered model and backbone (``rgbd-seg models``).

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a forward pass in eval mode (MACs =
FLOPs / 2 for convolutions and matrix products; element-wise ops, norms, pooling and resizing are not counted).
``torchvision::deform_conv2d`` (S-Conv) is counted like a convolution of the same shape; its bilinear
sampling is not counted. Models are built and run on the ``meta`` device (no memory, no arithmetic), falling
back to a real CPU forward for a model whose forward does not run on ``meta``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _deform_conv2d_flops(x_shape, w_shape, *_args, out_shape=None, **_kwargs) -> int:
    """FLOPs (2 × MACs) of ``torchvision::deform_conv2d``: as a dense conv producing ``out_shape``."""
    cout, cin_per_group, kh, kw = w_shape
    batch, _, h_out, w_out = out_shape
    return 2 * batch * cout * cin_per_group * kh * kw * h_out * w_out


def _custom_flops() -> dict:
    import torchvision.ops  # noqa: F401 - registers torch.ops.torchvision

    return {torch.ops.torchvision.deform_conv2d: _deform_conv2d_flops}


def count_macs(model: nn.Module, *inputs: torch.Tensor | None) -> int:
    """Multiply-accumulates of one ``model(*inputs)`` forward (eval mode, no grad)."""
    from rgbd_seg_ros.models.sconv import use_sconv_implementation

    was_training = model.training
    model.eval()
    try:  # S-Conv counted as the operator (torchvision's), not as the CPU gather path's regrouped products
        with (
            torch.no_grad(),
            use_sconv_implementation("torchvision"),
            FlopCounterMode(display=False, custom_mapping=_custom_flops()) as counter,
        ):
            model(*inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module, skip_aux: bool = False) -> int:
    """Number of parameters (shared ones counted once, frozen ones included).

    ``skip_aux`` leaves out training-only auxiliary heads (parameters with ``aux`` in their name), as papers
    that count "without the auxiliary head" do.
    """
    return sum(p.numel() for n, p in model.named_parameters() if not (skip_aux and "aux" in n))


@dataclass(frozen=True)
class ModelRow:
    """One line of :func:`model_table`: counts at ``size`` for ``num_classes`` classes."""

    model: str
    backbone: str | None
    params_m: float
    gmacs: float | None  # None when the forward failed (see ``note``)
    params_no_aux_m: float | None = None  # without training-only ``aux`` heads
    note: str = ""


def _inputs(model: nn.Module, size: tuple[int, int], device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    channels = model.input_spec.depth_channels
    rgb = torch.zeros(1, 3, *size, device=device)
    depth = torch.ones(1, channels, *size, device=device) if channels else None
    return rgb, depth


def model_row(
    name: str,
    backbone: str | None,
    size: tuple[int, int] = (480, 640),
    num_classes: int = 40,
    macs: bool = True,
    **options,
) -> ModelRow:
    """Params and GMACs of ``build_model(name, num_classes, backbone, **options)`` at input ``size`` (H, W).

    ``macs=False`` skips the forward pass (GMACs None).
    """
    from rgbd_seg_ros.models.registry import build_model

    with torch.device("meta"):
        model = build_model(name, num_classes, backbone=backbone, **options)
    params, no_aux = count_params(model), count_params(model, skip_aux=True) / 1e6
    if not macs:
        return ModelRow(name, backbone, params / 1e6, None, no_aux)
    note = ""
    try:
        macs = count_macs(model, *_inputs(model, size, "meta"))
    except (NotImplementedError, RuntimeError):  # data-dependent ops have no meta kernel: run for real
        model = build_model(name, num_classes, backbone=backbone, **options)
        try:
            macs = count_macs(model, *_inputs(model, size, "cpu"))
        except Exception as exc:  # a table row must not hide the others; the error goes in the note
            macs, note = None, f"forward failed: {type(exc).__name__}: {exc}"[:120]
    return ModelRow(name, backbone, params / 1e6, None if macs is None else macs / 1e9, no_aux, note)


def model_table(
    size: tuple[int, int] = (480, 640), num_classes: int = 40, models: Sequence[str] | None = None, macs: bool = True
) -> list[ModelRow]:
    """One :class:`ModelRow` per registered model × supported backbone (default options), at ``size``.

    ``models`` restricts the table to those names; ``macs=False`` counts parameters only (fast).
    """
    from rgbd_seg_ros.models.registry import get_entry, list_models

    rows = []
    for name in models or list_models():
        entry = get_entry(name)
        for backbone in entry.backbones or (entry.default_backbone,):
            rows.append(model_row(name, backbone, size, num_classes, macs))
    return rows


def format_model_table(rows: Sequence[ModelRow], size: tuple[int, int] = (480, 640)) -> str:
    """A plain-text table of ``rows``."""
    wm = max([len("model"), *(len(r.model) for r in rows)])
    wb = max([len("backbone"), *(len(r.backbone or "-") for r in rows)])
    head = (
        f"{'model':<{wm}} {'backbone':<{wb}} {'params (M)':>10} {'w/o aux (M)':>11} "
        f"{f'GMACs @{size[0]}x{size[1]}':>16}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        gmacs = "n/a" if r.gmacs is None or math.isnan(r.gmacs) else f"{r.gmacs:.1f}"
        no_aux = "n/a" if r.params_no_aux_m is None else f"{r.params_no_aux_m:.2f}"
        lines.append(
            f"{r.model:<{wm}} {r.backbone or '-':<{wb}} {r.params_m:>10.2f} {no_aux:>11} {gmacs:>16}  {r.note}"
        )
    return "\n".join(lines)


def print_model_table(size: tuple[int, int] = (480, 640), num_classes: int = 40, macs: bool = True) -> None:
    """Print :func:`model_table` (the ``rgbd-seg models`` command)."""
    print(format_model_table(model_table(size, num_classes, macs=macs), size))
