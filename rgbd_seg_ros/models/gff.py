"""Gated Fully Fusion (Li et al., AAAI 2020): a PSPNet with GFF + Dense Feature Pyramid, and GFF as a decoder.

**The paper's model** (:class:`GFFNet`, registry name ``gff``). A dilated ResNet-101 (output stride 8), a
pyramid pooling module (PPM), Gated Fully Fusion over the four stage outputs, a Dense Feature Pyramid, and a
classifier. An auxiliary FCN head on stage 3 has loss weight 0.4. It takes RGB only: ``model(rgb, None)``.

**Gated Fully Fusion** (:class:`GatedFullyFusion`, Eq. 5). Each level X_l is reduced to 256 channels by a 1×1
conv-BN-ReLU. A gate ``G_l = σ(w_l ∗ X_l)`` is computed from the *raw* level (w_l: a 1×1 conv C_l → 1, with
bias). All levels are then updated at once by
``X̃_l = (1 + G_l)·X_l + (1 − G_l)·Σ_{i≠l} R_l(G_i·X_i)``, where R_l bilinearly resizes to level l's size
after the gate multiply (the authors' order).

**Head** (:class:`GFFHead`). Each fused level is refined by two 3×3 conv-BN-ReLU. The DFP then runs top-down
and densely: level l gets the PPM output and every higher DFP output, resized, and applies
1×1 conv-BN-ReLU → 3×3 conv-BN-ReLU. The PPM output, the refined levels and the DFP outputs are all
concatenated at the finest level's size, and a 1×1 conv classifies them.

**Widths and parameter counts** (19 classes, auxiliary head excluded because it is dropped at test time):

==============================  ===========  ============  =================================================
model (``head=``)               this code    paper (T.3)   notes
==============================  ===========  ============  =================================================
``"psp"`` PSPNet-R101           65.58 M      65.6 M        torchvision 7×7 stem; PPM bins 1/2/3/6 → 512,
                                                           3×3 bottleneck 4096 → 512 (the original PSPNet)
``"gff"`` + GFF                 69.69 M      69.7 M        refinement width 192 (see below)
``"gff_dfp"`` + GFF + DFP       70.40 M      70.5 M        DFP bottleneck 128, growth 64
==============================  ===========  ============  =================================================

The paper fixes the 256-channel reduction, Eq. 5, "two 3×3 convs in each level", BN-ReLU after every conv, and
"all feature maps concatenated" after the DFP. It leaves the widths of the refinement convs, the DFP internals
and the classifier open. Read literally (two 3×3 convs of 256 channels per level), GFF alone would add 5.7 M,
not the 4.1 M of Table 3. Here the open sizes are chosen to land on Table 3: refinement 256 → 192 → 192, a
plain 1×1 classifier, and a DFP of 1×1 → 128 and 3×3 → 64 per level (dilation 1).

The **stem** is torchvision's 7×7. With the deep (3×3 ×3, 128-channel) stem of the original PSPNet the
baseline is 65.71 M. Both are within 0.2 % of 65.6 M, but only the 7×7 stem rounds to the reported figure.

**Paper vs the authors' later code** (``lxtGH/DecoupleSegNets``, a WideResNet-38 + ASPP variant with three
levels). These can be selected here: ``gate="channel"`` gives per-channel gates (C outputs) instead of the
paper's single-channel gate, and ``update="sequential"`` updates the levels in turn (each later level sees the
already updated ones) instead of simultaneously. The defaults follow the paper.

**GFF as released** (:class:`GFFWideResNet`, ``build_model("gff", 19, backbone="wider_resnet38")``). The only
released GFF weights ("GFFNet", Cityscapes) are for DecoupleSegNets' ``DeepWV3PlusGFFNet``, rebuilt here with the
authors' module names so their snapshot loads by name (333 keys, 141.10 M parameters at 19 classes, as their
model): a dilated WideResNet-38-A2 (:mod:`~rgbd_seg_ros.models.wider_resnet`, output stride 8, no ``bn_out``), an
ASPP that concatenates the image-pool branch first (rates 12/24/36, no projection), ``bot_aspp`` (a bare 3×3 conv
1280 → 256) and :class:`ReleasedGFFHead`: 128-channel per-channel gates on the raw levels [mod2 (1/2), mod5 (1/8),
ASPP], the sequential update, a three-layer DFP with dilations 3/6/9 and a two-conv classifier at 1/2 resolution,
upsampled (align_corners=True) to the input size. It takes ImageNet-normalised RGB only; there is no auxiliary
head.

**GFF as an RGB-D decoder** (:class:`GFFDecoder`; ``build_model("acnet" | "sagate", decoder="gff")``). This is
*our extension*: the paper is RGB-only. The decoder takes the multi-level *fused* features of an RGB-D encoder
(ACNet's fusion branch, SA-Gate's merged features), puts its own PPM on the top level as the context map,
and adds the stage-3 auxiliary head (weight 0.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbd_seg_ros.depth.encode import IMAGENET_MEAN, IMAGENET_STD, InputSpec, Normalization
from rgbd_seg_ros.models.backbones import resnet
from rgbd_seg_ros.models.coarse import CoarseLogits
from rgbd_seg_ros.models.heads import FCNHead, conv_norm_act
from rgbd_seg_ros.models.registry import register
from rgbd_seg_ros.models.wider_resnet import WiderResNet38, load_wider_resnet_imagenet

HeadType = Literal["psp", "gff", "gff_dfp"]
GateType = Literal["pixel", "channel"]
UpdateType = Literal["simultaneous", "sequential"]
ALIGN_CORNERS = True  # PSPNet / GFF authors' bilinear resizing
AUX_WEIGHT = 0.4
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "wider_resnet38")


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize to ``size`` (align_corners=True); returns ``x`` itself when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=ALIGN_CORNERS)


def cbr(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    """Conv (no bias) → BN → ReLU; keys ``0``, ``1``."""
    return nn.Sequential(*conv_norm_act(cin, cout, kernel))


def gff_update(feats: Sequence[Tensor], gates: Sequence[Tensor], update: UpdateType = "simultaneous") -> list[Tensor]:
    """Eq. 5 over L levels: ``X̃_l = (1 + G_l)·X_l + (1 − G_l)·Σ_{i≠l} R_l(G_i·X_i)``.

    Args:
        feats: L maps B×C×H_l×W_l (same C for all levels).
        gates: L maps B×1×H_l×W_l (or B×C×H_l×W_l) in [0, 1], at their level's size.
        update: ``"simultaneous"`` (paper: every level reads the un-updated X_i) or ``"sequential"`` (the
            authors' later code: level l reads the already updated levels < l).

    Returns:
        L fused maps, each at its own level's size.
    """
    if len(feats) != len(gates) or len(feats) < 2:
        raise ValueError(f"gff_update needs ≥ 2 levels and one gate per level, got {len(feats)} and {len(gates)}")
    if update not in ("simultaneous", "sequential"):
        raise ValueError(f"update must be 'simultaneous' or 'sequential', got {update!r}")
    sent = [g * x for g, x in zip(gates, feats)]
    out = []
    for level, (x, g) in enumerate(zip(feats, gates)):
        size = x.shape[-2:]
        incoming = sum(resize(sent[i], size) for i in range(len(feats)) if i != level)
        fused = (1 + g) * x + (1 - g) * incoming
        out.append(fused)
        if update == "sequential":
            sent[level] = g * fused
    return out


def kaiming_init(module: nn.Module) -> None:
    """He-normal (fan-in) convs with zero bias, BN to (1, 0): the GFF authors' ``initialize_weights``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GatedFullyFusion(nn.Module):
    """1×1 reduction of every level to ``channels``, gates from the raw levels, and the Eq. 5 update.

    ``forward(feats)`` takes L maps B×C_l×H_l×W_l and returns L maps B×channels×H_l×W_l; ``gates(feats)``
    returns the L gate maps (B×1×H_l×W_l, or B×channels×H_l×W_l with ``gate="channel"``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        gate: GateType = "pixel",
        update: UpdateType = "simultaneous",
    ) -> None:
        super().__init__()
        if gate not in ("pixel", "channel"):
            raise ValueError(f"gate must be 'pixel' or 'channel', got {gate!r}")
        if update not in ("simultaneous", "sequential"):
            raise ValueError(f"update must be 'simultaneous' or 'sequential', got {update!r}")
        gate_out = 1 if gate == "pixel" else channels
        self.reduce = nn.ModuleList(cbr(c, channels) for c in in_channels)
        self.gate_convs = nn.ModuleList(nn.Conv2d(c, gate_out, 1) for c in in_channels)
        self.update = update

    def gates(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [torch.sigmoid(conv(x)) for conv, x in zip(self.gate_convs, feats)]

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.reduce):
            raise ValueError(f"GFF was built for {len(self.reduce)} levels, got {len(feats)}")
        reduced = [r(x) for r, x in zip(self.reduce, feats)]
        return gff_update(reduced, self.gates(feats), self.update)


class DenseFeaturePyramid(nn.Module):
    """Top-down dense context: D_l = 3×3 CBR(1×1 CBR([X_l, R(P), R(D_L), …, R(D_{l+1})])), from the top level down.

    ``forward(feats, context)``: L maps B×level_channels×H_l×W_l and the context P (B×context_channels×h×w)
    → L maps B×growth×H_l×W_l (finest first).
    """

    def __init__(
        self, levels: int, level_channels: int, context_channels: int, bottleneck: int = 128, growth: int = 64
    ) -> None:
        super().__init__()
        layers = []
        for k in range(levels):  # k = number of DFP outputs above this level
            cin = level_channels + context_channels + k * growth
            layers.append(nn.Sequential(cbr(cin, bottleneck), cbr(bottleneck, growth, 3)))
        self.layers = nn.ModuleList(layers)  # layers[k] serves level L-1-k

    def forward(self, feats: Sequence[Tensor], context: Tensor) -> list[Tensor]:
        above: list[Tensor] = []
        for k, layer in enumerate(self.layers):
            x = feats[len(feats) - 1 - k]
            size = x.shape[-2:]
            above.append(layer(torch.cat([x, resize(context, size), *(resize(d, size) for d in above)], dim=1)))
        return above[::-1]


def adaptive_avg_pool(x: Tensor, bins: int) -> Tensor:
    """``nn.AdaptiveAvgPool2d(bins)`` as two matrix products: same bins (floor start, ceil end), but it also
    exports to ONNX when H or W is not a multiple of ``bins`` (e.g. 60×80 at 480×640 / 8 with 3 or 6 bins)."""

    def matrix(n: int) -> Tensor:  # built from Python numbers, so it traces to a constant
        rows = []
        for i in range(bins):
            start, end = (i * n) // bins, -((-(i + 1) * n) // bins)
            rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n)])
        return torch.tensor(rows, dtype=x.dtype, device=x.device)

    h, w = int(x.shape[-2]), int(x.shape[-1])
    return matrix(h) @ x @ matrix(w).t()


class PyramidPooling(nn.Module):
    """PSPNet's PPM: for each bin size, average-pool → 1×1 conv → BN → ReLU → upsample; concat with the input;
    3×3 conv-BN-ReLU bottleneck (+ Dropout2d). B×C×h×w → B×out_channels×h×w.

    The pooled BNs see 1×1 … 6×6 maps, so training needs a batch of at least 2.
    """

    def __init__(
        self, in_channels: int, out_channels: int = 512, bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(cbr(in_channels, out_channels) for _ in self.bins)
        self.bottleneck = nn.Sequential(
            cbr(in_channels + len(self.bins) * out_channels, out_channels, 3), nn.Dropout2d(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        priors = [resize(stage(adaptive_avg_pool(x, b)), size) for b, stage in zip(self.bins, self.stages)]
        return self.bottleneck(torch.cat([*priors, x], dim=1))


class GFFHead(nn.Module):
    """GFF (+ DFP) head: fuse L levels, refine each with two 3×3 CBR, optional DFP, concatenate, classify.

    Args:
        in_channels: channels of the L levels, finest first.
        num_classes: K; ``None`` makes ``forward`` return the concatenated features (``out_channels`` wide).
        context_channels: channels of the context map P (the PPM output).
        channels: GFF width (256 in the paper).
        refine_channels: width of the two 3×3 convs per level (192: see the module docstring).
        dfp: add the Dense Feature Pyramid.
        dfp_bottleneck, dfp_growth: DFP 1×1 and 3×3 widths.
        gate, update: see :class:`GatedFullyFusion`.

    ``forward(feats, context)`` → B×K×H_1×W_1 logits at the finest level's size (or features).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int | None,
        context_channels: int = 512,
        channels: int = 256,
        refine_channels: int = 192,
        dfp: bool = True,
        dfp_bottleneck: int = 128,
        dfp_growth: int = 64,
        gate: GateType = "pixel",
        update: UpdateType = "simultaneous",
    ) -> None:
        super().__init__()
        levels = len(in_channels)
        self.gff = GatedFullyFusion(in_channels, channels, gate, update)
        self.refine = nn.ModuleList(
            nn.Sequential(cbr(channels, refine_channels, 3), cbr(refine_channels, refine_channels, 3))
            for _ in range(levels)
        )
        self.dfp = (
            DenseFeaturePyramid(levels, refine_channels, context_channels, dfp_bottleneck, dfp_growth) if dfp else None
        )
        self.out_channels = context_channels + levels * (refine_channels + (dfp_growth if dfp else 0))
        self.classifier = nn.Conv2d(self.out_channels, num_classes, 1) if num_classes is not None else None

    def forward(self, feats: Sequence[Tensor], context: Tensor) -> Tensor:
        refined = [r(x) for r, x in zip(self.refine, self.gff(feats))]
        maps = [context, *refined]
        if self.dfp is not None:
            maps += self.dfp(refined, context)
        size = feats[0].shape[-2:]
        out = torch.cat([resize(m, size) for m in maps], dim=1)
        return self.classifier(out) if self.classifier is not None else out


class GFFDecoder(nn.Module):
    """A PPM on the top level, a :class:`GFFHead` over all levels, and an auxiliary FCN head on one level.

    Usable on any encoder that yields multi-level features (finest first), RGB or fused RGB-D.

    Args:
        in_channels: channels of the L input levels, finest first (e.g. (256, 512, 1024, 2048)).
        num_classes: K.
        head: ``"gff_dfp"`` (full model), ``"gff"`` (no DFP) or ``"psp"`` (PSPNet baseline: classify the
            PPM output only; the lower levels are unused).
        ppm_channels: PPM width (512).
        aux_level: index of the level the auxiliary head reads (2 = stage 3, the paper's), or None for none.
        head_options: passed to :class:`GFFHead` (channels, refine_channels, gate, update, …).

    ``forward(feats, out_size=None)`` → ``(logits, aux)``: logits B×K at ``out_size`` (default: the finest
    level's size). ``aux`` is ``[aux logits at out_size]`` in train mode with an auxiliary head, else ``[]``.
    :attr:`aux_weights` is ``(0.4,)`` (or ``()``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        head: HeadType = "gff_dfp",
        ppm_channels: int = 512,
        aux_level: int | None = 2,
        dropout: float = 0.1,
        **head_options,
    ) -> None:
        super().__init__()
        if head not in ("psp", "gff", "gff_dfp"):
            raise ValueError(f"head must be 'psp', 'gff' or 'gff_dfp', got {head!r}")
        in_channels = tuple(in_channels)
        self.levels = len(in_channels)
        self.ppm = PyramidPooling(in_channels[-1], ppm_channels, dropout=dropout)
        if head == "psp":
            self.head = None
            self.classifier = nn.Conv2d(ppm_channels, num_classes, 1)
        else:
            self.head = GFFHead(in_channels, num_classes, ppm_channels, dfp=head == "gff_dfp", **head_options)
            self.classifier = None
        self.aux_level = aux_level
        self.aux_head = (
            FCNHead(in_channels[aux_level], num_classes, mid_channels=256, dropout=dropout)
            if aux_level is not None
            else None
        )
        self.aux_weights = (AUX_WEIGHT,) if aux_level is not None else ()
        kaiming_init(self)

    def forward(self, feats: Sequence[Tensor], out_size: Sequence[int] | None = None) -> tuple[Tensor, list[Tensor]]:
        if len(feats) != self.levels:
            raise ValueError(f"GFFDecoder was built for {self.levels} levels, got {len(feats)}")
        size = tuple(out_size) if out_size is not None else tuple(feats[0].shape[-2:])
        context = self.ppm(feats[-1])
        logits = self.classifier(context) if self.head is None else self.head(feats, context)
        aux = []
        if self.training and self.aux_head is not None:
            aux = [resize(self.aux_head(feats[self.aux_level]), size)]
        return resize(logits, size), aux


class GFFNet(nn.Module):
    """The paper's model: dilated ResNet (output stride 8) + :class:`GFFDecoder`; RGB only.

    ``forward(rgb, depth_input=None)`` with rgb B×3×H×W (ImageNet-normalised) → B×K×H×W logits (eval), or
    ``{"out", "aux": [stage-3 aux logits]}`` (train, :attr:`aux_weights` ``(0.4,)``). ``depth_input`` is ignored.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        stem: Literal["torchvision", "deep"] = "torchvision",
        output_stride: int = 8,
        head: HeadType = "gff_dfp",
        pretrained: str | None = None,
        **head_options,
    ) -> None:
        super().__init__()
        self.backbone = resnet(depth, pretrained=pretrained, stem=stem, output_stride=output_stride)
        self.decoder = GFFDecoder(self.backbone.out_channels, num_classes, head=head, **head_options)
        self.aux_weights = self.decoder.aux_weights

    def forward(self, rgb: Tensor, depth_input: Tensor | None = None) -> Tensor | dict[str, Tensor | list[Tensor]]:
        if not isinstance(rgb, Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3:
            shape = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
            raise ValueError(f"GFF expects rgb of shape B×3×H×W, got {shape}")
        out, aux = self.decoder(self.backbone(rgb), out_size=rgb.shape[-2:])
        if self.training:
            return {"out": out, "aux": aux}
        return out


# --- GFF as released: WideResNet-38 + ASPP + GFF/DFP head (lxtGH/DecoupleSegNets "GFFNet") ---------------------


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) → BN → ReLU; keys ``0``, ``1`` (the authors' ``conv_bn_relu``)."""
    return nn.Sequential(*conv_norm_act(cin, cout, kernel, dilation))


class ImagePoolASPP(nn.Module):
    """The DecoupleSegNets ASPP: image pooling *first*, then a 1×1 and three 3×3 atrous branches, concatenated.

    Keys ``img_conv.{0,1}`` and ``features.{0..3}.{0,1}``; every branch is conv (no bias) + BN + ReLU.
    ``forward``: B×cin×h×w → B×(5·channels)×h×w (no projection; the model's ``bot_aspp`` follows).
    """

    def __init__(self, cin: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.img_conv = conv_bn_relu(cin, channels)
        self.features = nn.ModuleList(
            [conv_bn_relu(cin, channels), *(conv_bn_relu(cin, channels, 3, r) for r in rates)]
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = resize(self.img_conv(x.mean((2, 3), keepdim=True)), x.shape[-2:])
        return torch.cat([pooled, *(f(x) for f in self.features)], dim=1)


class DenseDFPBlock(nn.Sequential):
    """One DFP layer of the released head: BN-ReLU → 1×1 conv (bias) → BN-ReLU → 3×3 conv at ``dilation`` (bias).

    Keys ``norm1``, ``conv1``, ``norm2``, ``conv2`` (the authors' ``DenseBlock``).
    """

    def __init__(self, cin: int, mid: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, mid, 1)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, cout, 3, padding=dilation, dilation=dilation)


class ReleasedGFFHead(nn.Module):
    """The released GFF + DFP head over three levels [m2 (1/2), m5 (1/8), ASPP (1/8)], 128 channels wide.

    * ``gate{1,2,3}``: 1×1 conv (bias) + sigmoid on the *raw* level → 128 per-channel gates;
    * ``d_in{1,2,3}``: 1×1 conv-BN-ReLU → 128 channels;
    * the Eq. 5 update applied in turn (:func:`gff_update` with ``"sequential"``: ASPP reads the updated m2, m5);
    * DFP at the m2 size: ``d3 = dense_3(ASPP_fused)``, ``d6 = dense_6([d3, m5_fused])``,
      ``d9 = dense_9([d3, d6, m2_fused])`` (dilations 3, 6, 9);
    * ``cls`` on ``[d3, ASPP_unfused, d6, d9]`` (512 ch): 3×3 CBR → 3×3 CBR → 1×1 (no bias).

    ``forward([m2, m5, aspp])`` → B×K logits at m2's size.
    """

    def __init__(self, num_classes: int, in_channels: Sequence[int] = (128, 1024, 256), channels: int = 128) -> None:
        super().__init__()
        for i, cin in enumerate(in_channels, start=1):
            setattr(self, f"d_in{i}", conv_bn_relu(cin, channels))
            setattr(self, f"gate{i}", nn.Sequential(nn.Conv2d(cin, channels, 1), nn.Sigmoid()))
        self.dense_3 = DenseDFPBlock(channels, channels, channels, 3)
        self.dense_6 = DenseDFPBlock(2 * channels, channels, channels, 6)
        self.dense_9 = DenseDFPBlock(3 * channels, channels, channels, 9)
        self.cls = nn.Sequential(
            *conv_bn_relu(4 * channels, 256, 3), *conv_bn_relu(256, 256, 3), nn.Conv2d(256, num_classes, 1, bias=False)
        )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        gates = [getattr(self, f"gate{i}")(x) for i, x in enumerate(feats, start=1)]
        reduced = [getattr(self, f"d_in{i}")(x) for i, x in enumerate(feats, start=1)]
        m2, m5, aspp_fused = gff_update(reduced, gates, "sequential")
        size = m2.shape[-2:]
        d3 = self.dense_3(resize(aspp_fused, size))
        d6 = self.dense_6(torch.cat([d3, resize(m5, size)], dim=1))
        d9 = self.dense_9(torch.cat([d3, d6, m2], dim=1))
        return self.cls(torch.cat([d3, resize(reduced[2], size), d6, d9], dim=1))


class GFFWideResNet(WiderResNet38, CoarseLogits):
    """GFF as released (DecoupleSegNets ``DeepWV3PlusGFFNet``): WideResNet-38-A2 (output stride 8), an
    image-pool-first ASPP (rates 12/24/36) on ``mod7``, ``bot_aspp`` (a bare 3×3 conv 1280 → 256) and
    :class:`ReleasedGFFHead` on ``[mod2, mod5, bot_aspp]``. RGB only; no auxiliary head.

    Keys are the authors' (``mod1.conv1.weight``, ``aspp.features.0.0.weight``, ``bot_aspp.weight``,
    ``gff_head.gate1.0.weight``, …). ``forward(rgb, depth_input=None)``: rgb B×3×H×W (ImageNet-normalised, H and
    W multiples of 8) → B×K×H×W logits (eval) or ``{"out", "aux": []}`` (train); the head's 1/2-resolution
    logits are upsampled bilinearly (align_corners=True), as the authors' ``forward``.
    """

    aux_weights: tuple[float, ...] = ()

    def __init__(self, num_classes: int, pretrained: str | None = None) -> None:
        super().__init__()
        if pretrained is not None:
            load_wider_resnet_imagenet(self, pretrained)
        self.aspp = ImagePoolASPP(4096, 256, (12, 24, 36))
        self.bot_aspp = nn.Conv2d(1280, 256, 3, padding=1, bias=False)
        self.gff_head = ReleasedGFFHead(num_classes)
        kaiming_init(self.gff_head)

    def forward(self, rgb: Tensor, depth_input: Tensor | None = None) -> Tensor | dict[str, Tensor | list[Tensor]]:
        if not isinstance(rgb, Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3:
            shape = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
            raise ValueError(f"GFF expects rgb of shape B×3×H×W, got {shape}")
        feats = super().forward(rgb)
        aspp = self.bot_aspp(self.aspp(feats["mod7"]))
        out = self.upsample_logits(self.gff_head([feats["mod2"], feats["mod5"], aspp]), rgb.shape[-2:])
        return {"out": out, "aux": []} if self.training else out

    def convert_official(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The authors' snapshot ``state_dict`` (``module.`` stripped) is already in this model's layout."""
        return dict(state)


def input_spec(**_options) -> InputSpec:
    """RGB /255 with ImageNet mean/std, no depth input."""
    return InputSpec(depth_encoding="none", rgb_norm=Normalization(255.0, IMAGENET_MEAN, IMAGENET_STD))


@register(
    "gff",
    input_spec=input_spec,
    default_backbone="resnet101",
    backbones=BACKBONES,
    description="GFF: ResNet PSPNet (paper) or WideResNet-38 + ASPP (released) with Gated Fully Fusion, RGB only",
)
def build_gff(
    num_classes: int, backbone: str = "resnet101", pretrained: str | None = None, **options
) -> GFFNet | GFFWideResNet:
    """Registry builder. ``backbone="resnet…"``: the paper's model, ``options`` as :class:`GFFNet` (stem,
    output_stride, head, gate, update, …). ``backbone="wider_resnet38"``: the authors' released model
    (:class:`GFFWideResNet`), which takes no options."""
    if backbone == "wider_resnet38":
        if options:
            raise ValueError(
                f"GFF with wider_resnet38 is the authors' released model and takes no options, got {options}"
            )
        return GFFWideResNet(num_classes, pretrained=pretrained)
    return GFFNet(num_classes, depth=int(backbone.removeprefix("resnet")), pretrained=pretrained, **options)


__all__ = [
    "DenseFeaturePyramid",
    "GFFDecoder",
    "GFFHead",
    "GFFNet",
    "GFFWideResNet",
    "GatedFullyFusion",
    "ImagePoolASPP",
    "PyramidPooling",
    "ReleasedGFFHead",
    "adaptive_avg_pool",
    "build_gff",
    "gff_update",
]
