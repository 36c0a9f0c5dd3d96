"""S-Conv, the spatial-information-guided convolution of SGNet (Chen et al., TIP 2021), on torchvision ops.

S-Conv is a modulated deformable convolution (DCNv2) whose offsets and modulation mask are inferred from
spatial information S (depth or XYZ) instead of from the features:

* spatial projector φ: three 3×3 conv-BN-ReLU layers, S (c'×h×w) → S' (64×h×w), at the feature's input size;
* offset generator η: one 3×3 conv S' → Δd (2K×h'×w'), **zero-initialised** so S-Conv starts as a plain conv;
* weight generator f: bilinear sampling of S' at the K shifted taps followed by a linear layer 64K → 64
  (exactly a DCNv1 ``deform_conv2d`` on S' with the same offsets), then a 1×1 conv 64 → K and a sigmoid;
* output: ``deform_conv2d(x, Δd, W, mask=σ(f(S*)))`` — offsets and mask are shared by all channels.

Where the paper and the authors' code (LinZhuoChen/SGNet) differ, this follows the code, because the
released weights and numbers come from it: no activation between the two layers of f (the paper says
"two fully connected layers"); BN inside φ; φ's first conv takes 1 channel for depth (the paper writes
Conv(3, 64)); the guidance is resized bilinearly with ``align_corners=True`` to the S-Conv's *input* size;
the mask's 1×1 layer keeps PyTorch's default init (mask ≈ 0.5 at start, not 1). Offsets use the DCNv2 /
torchvision layout: channel ``2k`` is the row (y) and ``2k + 1`` the column (x) shift of kernel tap ``k``
(row-major taps).

State-dict keys equal the authors' (``weight``, ``offset_generator.*``, ``weight_generator1.weight``,
``weight_generator2.*``, ``spatial_projector.{0,1,3,4,6,7}.*``), so ImageNet ``conv2`` weights load into
``weight`` by name.

Two implementations of the deformable convolutions, numerically the same operator, picked in one place
(:func:`sconv_implementation`): torchvision's ``deform_conv2d`` kernel, and on the CPU
:func:`deform_conv2d_gather`, bilinear sampling as one fused weighted gather (``F.embedding_bag``) plus one
matrix product. torchvision's CPU kernel spends most of its time in a serial im2col and its backward is slower
still; the gather path keeps its exact border and gradient conventions (see :func:`bilinear_taps`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d, deform_conv2d

NormLayer = Callable[[int], nn.Module]
IntPair = int | tuple[int, int]

GUIDE_CHANNELS = {"depth": 1, "xyz": 3}

#: Implementations of S-Conv's deformable convolutions (see :func:`sconv_implementation`).
IMPLEMENTATIONS = ("torchvision", "gather")
_FORCED: ContextVar[str | None] = ContextVar("sconv_implementation", default=None)

#: Rough CPU cost of one bilinear sample of one channel (4 gathered values) in multiply-accumulates of a large
#: matrix product; it only picks the cheaper order in :func:`deform_conv2d_taps`, never the result.
GATHER_COST_MACS = 64


def sconv_implementation(device: torch.device | str) -> str:
    """The implementation S-Conv uses for tensors on ``device``: ``"gather"`` or ``"torchvision"``.

    * ``"gather"`` (:func:`deform_conv2d_gather`) on the CPU, in training and inference: with it an SGNet-R18
      forward ran 2–3× and a training step 3–5× faster than with torchvision's CPU kernel on 1–2 threads
      (``benchmarks/sconv.py``).
    * ``"torchvision"`` (``torchvision.ops.deform_conv2d``) on every other device — on CUDA its fused kernel
      is kept because the gather path has not been measured on a GPU — and while ``torch.onnx`` exports or
      ``torch.compile``/``torch.export`` trace, so graphs keep the single operator (ONNX ``DeformConv``).
    * :func:`use_sconv_implementation` overrides both (benchmarks, tests, MAC counting).
    """
    forced = _FORCED.get()
    if forced is not None:
        return forced
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return "torchvision"
    return "gather" if torch.device(device).type == "cpu" else "torchvision"


@contextmanager
def use_sconv_implementation(name: str | None) -> Iterator[None]:
    """Run S-Convs with implementation ``name`` (one of :data:`IMPLEMENTATIONS`; None: the automatic choice)."""
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown S-Conv implementation {name!r}; expected one of {IMPLEMENTATIONS}")
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class BilinearTaps(NamedTuple):
    """Where and how a deformable convolution samples its input: the 2×2 bilinear corners of every tap.

    ``index``: B·H'·W'·K × 4 rows (int32, int64 for huge inputs) of :func:`padded_rows`: corners (y0, x0),
    (y0, x0+1), (y0+1, x0), (y0+1, x0+1); ``weight``: B×H'×W'×K×4 their bilinear weights, 0 for points with
    all corners outside; ``out_size``: (H', W').
    """

    index: Tensor
    weight: Tensor
    out_size: tuple[int, int]


def bilinear_taps(
    offset: Tensor,
    in_size: tuple[int, int],
    kernel_size: IntPair = 3,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> BilinearTaps:
    """Sampling corners and weights of ``deform_conv2d`` for ``offset`` B×2K×H'×W' on an input of ``in_size``.

    Tap k = (i, j) of output (y, x) samples p = (y·stride − padding + i·dilation + Δy, x·stride − padding +
    j·dilation + Δx), with Δy = offset[2k], Δx = offset[2k + 1] (pixels), bilinearly from its corners
    ⌊p⌋ + {0, 1}²; corners outside the image count as 0, so a point outside (−1, H) × (−1, W) samples 0.
    The position is rounded once and split with ``floor`` exactly as torchvision's kernel does, so values and
    the one-sided offset gradients at integer positions (every tap of a zero offset) are torchvision's.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    b, _, ho, wo = offset.shape
    h, w = in_size
    k = kh * kw
    if offset.shape[1] != 2 * k:
        raise ValueError(
            f"deform_conv2d_gather supports one offset group: offset needs {2 * k} channels, got {offset.shape[1]}"
        )
    dev, dtype = offset.device, offset.dtype
    # integer base positions (exact in float) + offset: the same single rounding as torchvision's kernel
    tap_y = (torch.arange(kh, device=dev) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=dev) * dw).repeat(kh)
    base_y = (torch.arange(ho, device=dev) * sh - ph).view(ho, 1, 1) + tap_y
    base_x = (torch.arange(wo, device=dev) * sw - pw).view(1, wo, 1) + tap_x
    off = offset.view(b, k, 2, ho, wo).permute(0, 3, 4, 2, 1).contiguous()  # B, H', W', (dy, dx), K
    py = off[..., 0, :] + base_y.to(dtype)  # B, H', W', K
    px = off[..., 1, :] + base_x.to(dtype)
    y0, x0 = py.floor(), px.floor()  # floor has no gradient: ly, lx carry it, as in the kernel
    # the table has a zero border of 1 px, so a point whose corners start at y0 ∈ [-1, H-1], x0 ∈ [-1, W-1]
    # reads zeros for its outside corners; any other point has all four corners outside: weight 0
    inside = (y0 >= -1) & (y0 <= h - 1) & (x0 >= -1) & (x0 <= w - 1)
    zero = torch.zeros((), dtype=dtype, device=dev)
    ly, lx = torch.where(inside, py - y0, zero), torch.where(inside, px - x0, zero)
    hy, hx = torch.where(inside, 1 - ly, zero), 1 - lx
    weight = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), dim=-1)
    hp, wp = h + 2, w + 2
    itype = torch.int32 if b * hp * wp * k < 2**31 else torch.int64  # int32: a faster embedding_bag
    top_left = (y0.clamp(-1, h - 1).to(itype) + 1) * wp + (x0.clamp(-1, w - 1).to(itype) + 1)
    batch_start = (torch.arange(b, device=dev, dtype=itype) * (hp * wp)).view(b, 1, 1, 1)
    top_left = torch.where(inside, top_left, 0) + batch_start
    index = (top_left.unsqueeze(-1) + torch.tensor([0, 1, wp, wp + 1], device=dev, dtype=itype)).view(-1, 4)
    return BilinearTaps(index, weight, (ho, wo))


def padded_rows(x: Tensor) -> Tensor:
    """B×C×H×W → (B·(H+2)·(W+2))×C: channels-last rows with a 1-px zero border (the table of the taps)."""
    b, c, h, w = x.shape
    rows = x.new_zeros(b, h + 2, w + 2, c)  # contiguous rows: embedding_bag's fast path needs them
    rows[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    return rows.view(b * (h + 2) * (w + 2), c)


def deform_conv2d_taps(
    rows: Tensor,
    taps: BilinearTaps,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    order: str | None = None,
) -> Tensor:
    """Modulated deformable convolution of the input given as :func:`padded_rows` at :func:`bilinear_taps`.

    ``weight`` C_out×C×kh×kw, ``mask`` B×K×H'×W' or None → B×C_out×H'×W'. ``order``: ``"sample_first"``
    (columns B·H'·W'×K·C as im2col, then one GEMM) or ``"gemm_first"`` (the K per-tap 1×1 products at input
    resolution, then one gather that sums taps and corners) — the same sums, regrouped; None picks the one
    with the smaller estimated cost (GEMM-first for few output channels, e.g. the mask's K).
    """
    cout, cin, kh, kw = weight.shape
    k = kh * kw
    b, ho, wo = taps.weight.shape[:3]
    if rows.shape[1] != cin:
        raise ValueError(
            f"deform_conv2d_gather supports groups=1: weight takes {cin} channels, input has {rows.shape[1]}"
        )
    if mask is None:
        corner_weight = taps.weight
    else:  # mask as B, H', W', K first: the product then keeps taps.weight's contiguous layout
        corner_weight = taps.weight * mask.permute(0, 2, 3, 1).contiguous().unsqueeze(-1)
    in_pixels = rows.shape[0]
    sample_first = cin * k * b * ho * wo * (GATHER_COST_MACS + cout)
    gemm_first = cout * k * (b * ho * wo * GATHER_COST_MACS + in_pixels * cin)
    if order not in (None, "sample_first", "gemm_first"):
        raise ValueError(f"order must be 'sample_first', 'gemm_first' or None, got {order!r}")
    if order == "sample_first" or (order is None and sample_first <= gemm_first):
        cols = F.embedding_bag(taps.index, rows, per_sample_weights=corner_weight.reshape(-1, 4), mode="sum")
        out = torch.matmul(weight.permute(0, 2, 3, 1).reshape(cout, k * cin), cols.view(b, ho * wo, k * cin).mT)
    else:
        table = (rows @ weight.permute(1, 2, 3, 0).reshape(cin, k * cout)).view(in_pixels * k, cout)
        taps_k = torch.arange(k, device=rows.device, dtype=taps.index.dtype).view(k, 1)
        pick = torch.add(taps_k, taps.index.view(-1, k, 4), alpha=k)  # table row pixel·K + k
        out = F.embedding_bag(
            pick.view(-1, 4 * k), table, per_sample_weights=corner_weight.reshape(-1, 4 * k), mode="sum"
        )
        out = out.view(b, ho * wo, cout).mT
    out = out.reshape(b, cout, ho, wo)
    return out if bias is None else out + bias.view(1, cout, 1, 1)


def deform_conv2d_gather(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """``torchvision.ops.deform_conv2d`` (same arguments, one weight and offset group) as bilinear gather + GEMM.

    Forward and backward are torchvision's operator (border, rounding and one-sided gradient conventions
    included) up to float summation order; built from differentiable PyTorch ops on any device.
    """
    taps = bilinear_taps(offset, (input.shape[-2], input.shape[-1]), weight.shape[-2:], stride, padding, dilation)
    return deform_conv2d_taps(padded_rows(input), taps, weight, bias, mask)


def spatial_projector(in_channels: int, channels: int = 64, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """φ: three 3×3 conv (with bias) → BN → ReLU layers, ``in_channels`` → ``channels``, stride 1."""
    layers: list[nn.Module] = []
    for cin in (in_channels, channels, channels):
        layers += [nn.Conv2d(cin, channels, 3, padding=1, bias=True), norm_layer(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def resize_guidance(guide: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize guidance B×c'×H×W to ``size`` (align_corners=True, as the authors' code)."""
    if tuple(guide.shape[-2:]) == tuple(size):
        return guide
    return F.interpolate(guide, size=size, mode="bilinear", align_corners=True)


class SConv(nn.Module):
    """Spatial-information-guided 3×3 convolution.

    Args:
        in_channels, out_channels: feature channels C_in → C_out.
        stride: stride of the main conv, the offset generator and the weight generator.
        dilation: dilation of the main deformable conv only (padding = dilation). The authors' S-Convs use 1
            everywhere, even inside dilated stages; SGNet keeps that by default.
        guide_channels: c' of the guidance S: 1 (depth, metres) or 3 (XYZ, metres).
        proj_channels: width of the projected guidance S' (64 in the paper).
        bias: add a learnable bias to the main conv (the authors carry a frozen all-zero bias; we drop it).
        norm_layer: BN factory used inside φ.

    ``forward(x, guide)``: x B×C_in×H×W, guide B×c'×H_s×W_s (any size, resized to H×W) →
    B×C_out×H'×W' with H' = ⌊(H − 1) / stride⌋ + 1.
    """

    kernel_size = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        guide_channels: int = 1,
        proj_channels: int = 64,
        bias: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        k = self.kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.dilation, self.guide_channels = stride, dilation, guide_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.spatial_projector = spatial_projector(guide_channels, proj_channels, norm_layer)
        self.offset_generator = nn.Conv2d(proj_channels, 2 * k * k, k, stride=stride, padding=1, bias=True)
        # f's first layer (DCNv1 64→64); only its kernel is used, fused with f's 1×1 (see _offsets_and_logits).
        self.weight_generator1 = DeformConv2d(proj_channels, proj_channels, k, stride=stride, padding=1, bias=False)
        self.weight_generator2 = nn.Conv2d(proj_channels, k * k, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Main weight as ``nn.Conv2d``; η zero (start as a plain convolution)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.offset_generator.weight)
        nn.init.zeros_(self.offset_generator.bias)

    def _offsets_and_logits(
        self, x_size: tuple[int, int], guide: Tensor, impl: str
    ) -> tuple[Tensor, Tensor, BilinearTaps | None]:
        """Offsets, mask logits and (gather path) the taps they sample, from guidance at size ``x_size``."""
        if guide.dim() != 4 or guide.shape[1] != self.guide_channels:
            raise ValueError(f"S-Conv expects guidance of shape B×{self.guide_channels}×H×W, got {tuple(guide.shape)}")
        s = self.spatial_projector(resize_guidance(guide, x_size))
        offset = self.offset_generator(s)
        # f's two layers are linear with nothing in between, so they run as one DCNv1 with the product
        # kernel K×64×3×3: the same function with a 7× smaller matrix product than 64→64 then 64→K.
        w2 = self.weight_generator2.weight.flatten(1)
        fused = torch.einsum("ko,oihw->kihw", w2, self.weight_generator1.weight)
        bias = self.weight_generator2.bias
        if impl == "torchvision":
            return offset, deform_conv2d(s, offset, fused, bias, stride=self.stride, padding=1), None
        taps = bilinear_taps(offset, x_size, self.kernel_size, self.stride, padding=1)
        return offset, deform_conv2d_taps(padded_rows(s), taps, fused, bias), taps

    def offsets_and_mask(self, x_size: tuple[int, int], guide: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets B×2K×H'×W' (dy, dx per tap) and mask B×K×H'×W' in (0, 1) from guidance at size ``x_size``."""
        offset, logits, _ = self._offsets_and_logits(x_size, guide, sconv_implementation(guide.device))
        return offset, torch.sigmoid(logits)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        impl = sconv_implementation(x.device)
        offset, logits, taps = self._offsets_and_logits((x.shape[-2], x.shape[-1]), guide, impl)
        mask, d = torch.sigmoid(logits), self.dilation
        if impl == "torchvision":
            return deform_conv2d(
                x, offset, self.weight, self.bias, stride=self.stride, padding=d, dilation=d, mask=mask
            )
        if d != 1:  # the weight generator samples undilated taps; the main conv needs its own
            taps = bilinear_taps(offset, x.shape[-2:], self.kernel_size, self.stride, padding=d, dilation=d)
        return deform_conv2d_taps(padded_rows(x), taps, self.weight, self.bias, mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, dilation={self.dilation}, "
            f"guide_channels={self.guide_channels}, bias={self.bias is not None}"
        )
