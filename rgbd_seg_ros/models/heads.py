"""Segmentation heads shared by the models: the FCN-style head (also used as deep-supervision "dsn" head),
DeepLabV3's ASPP, the Mapillary-style ASPP (:class:`PooledSumASPP`, SA-Gate) and the DeepLabV3+ decoder.
Every head takes its norm and activation as factories so a model can match its authors' choice
(e.g. InPlace-ABN's leaky ReLU 0.01: ``act_layer=leaky_relu``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]

#: InPlace-ABN's default activation (SGNet, GFF heads): leaky ReLU with slope 0.01.
leaky_relu: ActLayer = partial(nn.LeakyReLU, 0.01, inplace=True)
relu: ActLayer = partial(nn.ReLU, inplace=True)


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    dilation: int = 1,
    bias: bool = False,
    norm_layer: NormLayer = nn.BatchNorm2d,
    act_layer: ActLayer = relu,
) -> list[nn.Module]:
    """``[conv, norm, act]`` ("same" padding), to be placed in an ``nn.Sequential``."""
    pad = dilation * (kernel_size // 2)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=bias)
    return [conv, norm_layer(out_channels), act_layer()]


class FCNHead(nn.Sequential):
    """3×3 conv → norm → act → Dropout2d → 1×1 classifier; B×C_in×h×w → B×K×h×w.

    Keys: ``0`` conv, ``1`` norm, ``4`` classifier. SGNet's ``dsn3``/``dsn4`` heads are this with
    ``mid_channels=512, conv_bias=True, act_layer=leaky_relu, dropout=0.1``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mid_channels: int = 512,
        dropout: float = 0.1,
        conv_bias: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = relu,
    ) -> None:
        super().__init__(
            *conv_norm_act(in_channels, mid_channels, 3, bias=conv_bias, norm_layer=norm_layer, act_layer=act_layer),
            nn.Dropout2d(dropout),
            nn.Conv2d(mid_channels, num_classes, 1, bias=True),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): image pooling, 1×1 and dilated 3×3 branches → concat → 1×1.

    Args:
        in_channels: C_in.
        inner_channels: width of each branch.
        out_channels: width after the projection (``bottleneck``).
        dilations: one dilated 3×3 branch per rate (e.g. (12, 24, 36) at output stride 16, as SGNet*).
        dropout: Dropout2d after the projection.
        norm_layer, act_layer: used after every conv (the pooled branch included).

    Branch names follow the SGNet* code: ``conv1`` image pooling (keys ``conv1.1`` conv, ``conv1.2`` norm),
    ``conv2`` 1×1, ``conv3``… dilated 3×3, ``bottleneck`` projection. ``forward``: B×C_in×h×w →
    B×out_channels×h×w. The pooled branch is broadcast back to h×w (what bilinear upsampling of a 1×1 map
    gives). In training its norm sees one value per channel and sample, so batches need ≥ 2 images.
    """

    def __init__(
        self,
        in_channels: int,
        inner_channels: int = 256,
        out_channels: int = 512,
        dilations: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = relu,
    ) -> None:
        super().__init__()
        block = partial(conv_norm_act, norm_layer=norm_layer, act_layer=act_layer)
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *block(in_channels, inner_channels, 1))
        self.conv2 = nn.Sequential(*block(in_channels, inner_channels, 1))
        self.dilations = tuple(dilations)
        for i, rate in enumerate(self.dilations):
            setattr(self, f"conv{i + 3}", nn.Sequential(*block(in_channels, inner_channels, 3, dilation=rate)))
        n_branches = 2 + len(self.dilations)
        self.bottleneck = nn.Sequential(*block(inner_channels * n_branches, out_channels, 1), nn.Dropout2d(dropout))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv1(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        branches = [pooled, self.conv2(x)]
        branches += [getattr(self, f"conv{i + 3}")(x) for i in range(len(self.dilations))]
        return self.bottleneck(torch.cat(branches, dim=1))


class PooledSumASPP(nn.Module):
    """ASPP in the Mapillary (InPlace-ABN ``DeeplabV3``) style, as SA-Gate's authors use it.

    Unlike :class:`ASPP`: the 1×1 and dilated 3×3 branches have no norm of their own — one norm + act runs over
    their concatenation, a 1×1 conv (``red_conv``) projects it, and the image-pooling branch (GAP → 1×1 →
    norm → act → 1×1 ``pool_red_conv``) is *added* before the final norm + act (``red_bn``).

    Args:
        in_channels: C_in.
        out_channels: output width.
        dilations: rates of the 3×3 branches ((6, 12, 18) at output stride 16 for SA-Gate).
        hidden_channels: width of every branch.
        act_layer: activation after each norm (SA-Gate: leaky ReLU 0.01).

    Keys: ``map_convs.{0..}``, ``map_bn``, ``global_pooling_conv``, ``global_pooling_bn``, ``red_conv``,
    ``pool_red_conv``, ``red_bn`` (the authors'). B×C_in×h×w → B×out_channels×h×w.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        dilations: Sequence[int] = (6, 12, 18),
        hidden_channels: int = 256,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = leaky_relu,
    ) -> None:
        super().__init__()
        convs = [nn.Conv2d(in_channels, hidden_channels, 1, bias=False)]
        convs += [nn.Conv2d(in_channels, hidden_channels, 3, padding=r, dilation=r, bias=False) for r in dilations]
        self.map_convs = nn.ModuleList(convs)
        self.map_bn = norm_layer(hidden_channels * len(convs))
        self.global_pooling_conv = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.global_pooling_bn = norm_layer(hidden_channels)
        self.red_conv = nn.Conv2d(hidden_channels * len(convs), out_channels, 1, bias=False)
        self.pool_red_conv = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.red_bn = norm_layer(out_channels)
        self.act = act_layer()

    def forward(self, x: Tensor) -> Tensor:
        out = self.red_conv(self.act(self.map_bn(torch.cat([conv(x) for conv in self.map_convs], dim=1))))
        pool = self.act(self.global_pooling_bn(self.global_pooling_conv(x.mean(dim=(2, 3), keepdim=True))))
        return self.act(self.red_bn(out + self.pool_red_conv(pool)))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder: context module on the deep features, fused with reduced low-level features.

    ``forward(high, low)``: ``aspp(high)`` is upsampled (bilinear, ``align_corners``) to ``low``'s size,
    concatenated with ``reduce(low)`` (1×1 → ``low_out`` channels, norm, ReLU), refined by two 3×3 conv-norm-ReLU
    (``last_conv``, then Dropout2d) and classified by a 1×1 conv (``classify``) → B×K×h_low×w_low.

    Args:
        aspp: the context module (e.g. :class:`PooledSumASPP` or :class:`ASPP`); outputs ``aspp_channels``.
        low_channels: channels of the low-level features.
        num_classes: K.
        low_out: width of the reduced low-level features (48 in DeepLabV3+).
        channels: width of ``last_conv``.

    Keys (SA-Gate authors'): ``aspp.*``, ``reduce.{0,1}``, ``last_conv.{0,1,3,4}``, ``classify``.
    """

    def __init__(
        self,
        aspp: nn.Module,
        aspp_channels: int,
        low_channels: int,
        num_classes: int,
        low_out: int = 48,
        channels: int = 256,
        dropout: float = 0.1,
        align_corners: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.aspp = aspp
        self.reduce = nn.Sequential(*conv_norm_act(low_channels, low_out, 1, norm_layer=norm_layer))
        self.last_conv = nn.Sequential(
            *conv_norm_act(aspp_channels + low_out, channels, 3, norm_layer=norm_layer),
            *conv_norm_act(channels, channels, 3, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
        )
        self.classify = nn.Conv2d(channels, num_classes, 1, bias=True)
        self.align_corners = align_corners

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        x = nn.functional.interpolate(
            self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        return self.classify(self.last_conv(torch.cat((x, self.reduce(low)), dim=1)))
