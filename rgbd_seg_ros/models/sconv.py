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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d, deform_conv2d

NormLayer = Callable[[int], nn.Module]

GUIDE_CHANNELS = {"depth": 1, "xyz": 3}


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
        # f's first layer (DCNv1 64→64); only its kernel is used, fused with f's 1×1 (see offsets_and_mask).
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

    def offsets_and_mask(self, x_size: tuple[int, int], guide: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets B×2K×H'×W' (dy, dx per tap) and mask B×K×H'×W' in (0, 1) from guidance at size ``x_size``."""
        if guide.dim() != 4 or guide.shape[1] != self.guide_channels:
            raise ValueError(f"S-Conv expects guidance of shape B×{self.guide_channels}×H×W, got {tuple(guide.shape)}")
        s = self.spatial_projector(resize_guidance(guide, x_size))
        offset = self.offset_generator(s)
        # f's two layers are linear with nothing in between, so they run as one DCNv1 with the product
        # kernel K×64×3×3: the same function with a 7× smaller matrix product than 64→64 then 64→K.
        w2 = self.weight_generator2.weight.flatten(1)
        fused = torch.einsum("ko,oihw->kihw", w2, self.weight_generator1.weight)
        logits = deform_conv2d(s, offset, fused, self.weight_generator2.bias, stride=self.stride, padding=1)
        return offset, torch.sigmoid(logits)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        offset, mask = self.offsets_and_mask((x.shape[-2], x.shape[-1]), guide)
        d = self.dilation
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=d, dilation=d, mask=mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, dilation={self.dilation}, "
            f"guide_channels={self.guide_channels}, bias={self.bias is not None}"
        )
