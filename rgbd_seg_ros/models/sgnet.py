"""SGNet (Chen et al., "Spatial Information Guided Convolution for Real-Time RGBD Semantic Segmentation",
TIP 2021): a dilated ResNet whose 3×3 convolutions in the first and the last two blocks of every stage are
S-Convs guided by depth (or XYZ), with an FCN head (SGNet) or ASPP head (SGNet*, ``sgnet_aspp``) and a
deep-supervision head on layer3.

Choices, following the authors' code (LinZhuoChen/SGNet) where it and the paper differ:

* Backbone: deep 3×3 stem (3→64 s2, 64→64, 64→128) and, at output stride 16, layer3 stride 2 *dilation 2*
  and layer4 stride 1 dilation 4 (a "standard" OS16 would use dilations 1 and 2). S-Convs ignore the stage
  dilation (padding 1, dilation 1), so layer3 blocks 0 and the last two, and all of layer4 (every block of a
  3-block stage is an S-Conv) run undilated; ``sconv_dilation=True`` dilates them instead (our option).
  Output stride 8 (SGNet-8s) uses layer3 stride 1 dilation 2, layer4 dilation 4; the authors did not
  release it, so that setting and its doubled ASPP rates (24, 48, 72) are our guess.
* Heads: ``dsn3`` on layer3 and ``head`` on layer4: 3×3 conv (bias) → BN → leaky ReLU 0.01 (InPlace-ABN's
  default) → Dropout2d 0.1 → 1×1 conv. SGNet* replaces ``head`` by ASPP(2048→256×5→512, rates 12/24/36,
  leaky ReLU 0.01) + 1×1 conv. Backbone and spatial-projector BNs use plain ReLU. Logits come out at 1/16
  and are upsampled bilinearly with ``align_corners=True`` (as the authors' evaluation) to the input size;
  the runtime takes them before that upsampling (:mod:`rgbd_seg_ros.models.coarse`).
* Auxiliary loss weight: not given by the paper or code; 0.4 (PSPNet's value, "same as PSPNet") is a guess.
* ResNet-18/34 variants are our extension for CPU robots: their BasicBlock's first 3×3 conv (``conv1``,
  the one that carries the stride, like the bottleneck's ``conv2``) becomes the S-Conv.
* Guidance: depth in metres (B×1×H×W; NaN/inf = invalid → 0, the raw-sensor convention) or XYZ in metres
  (B×3×H×W, camera frame). The authors feed XYZ but their depth S-Conv uses only Z (channel 2).
* Colour input (:func:`sgnet_input_spec`): by default the authors' caffe convention — BGR, 0..255 minus the
  per-channel means, no std — because their released weights (and CCNet-style deep-stem ImageNet weights)
  expect it; ``norm="imagenet"`` (RGB, /255, ImageNet mean/std) suits torchvision ImageNet backbones and is
  the default with ``stem="torchvision"``. The choice is a build option, stored with checkpoints.

Parameter counts (40 classes, both heads): R101 58.3 M, R101 ASPP 64.7 M, R50 39.3 M, as the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbd_seg_ros.depth.encode import IMAGENET_MEAN, IMAGENET_STD, InputSpec, Normalization
from rgbd_seg_ros.models.backbones import _LAYERS, BasicBlock, Bottleneck, ResNet, load_pretrained
from rgbd_seg_ros.models.coarse import CoarseLogits
from rgbd_seg_ros.models.heads import ASPP, FCNHead, leaky_relu
from rgbd_seg_ros.models.registry import register
from rgbd_seg_ros.models.sconv import GUIDE_CHANNELS, SConv

#: Caffe-style BGR means (B, G, R) of the authors' preprocessing, 0..255, no std division.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
#: InPlace-ABN's eps: at inference it scales by ``|weight| + eps``.
ABN_EPS = 1e-5
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class SConvBottleneck(Bottleneck):
    """Bottleneck whose 3×3 ``conv2`` is an :class:`SConv`; ``forward(x, guide)``."""

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, downsample, guide_channels: int, proj: int = 64
    ):
        super().__init__(inplanes, planes, stride, dilation, downsample)
        self.conv2 = SConv(planes, planes, stride, dilation, guide_channels, proj_channels=proj)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out, guide)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class SConvBasicBlock(BasicBlock):
    """BasicBlock whose first 3×3 ``conv1`` (the strided one) is an :class:`SConv`; ``forward(x, guide)``."""

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, downsample, guide_channels: int, proj: int = 64
    ):
        super().__init__(inplanes, planes, stride, dilation, downsample)
        self.conv1 = SConv(inplanes, planes, stride, dilation, guide_channels, proj_channels=proj)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x, guide)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


_GUIDED_BLOCKS = (SConvBottleneck, SConvBasicBlock)


def sconv_block_indices(n_blocks: int) -> set[int]:
    """Blocks of a stage that get an S-Conv: the first and the last two (the paper's final configuration)."""
    return {0, n_blocks - 2, n_blocks - 1}


def sgnet_stages(output_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of layer1..4 as the authors (OS16: layer3 s2 d2, layer4 s1 d4); OS8 is our guess."""
    if output_stride == 16:
        return ((1, 1), (2, 1), (2, 2), (1, 4))
    if output_stride == 8:
        return ((1, 1), (2, 1), (1, 2), (1, 4))
    raise ValueError(f"SGNet supports output_stride 16 or 8, got {output_stride}")


class SGNet(ResNet, CoarseLogits):
    """SGNet / SGNet* on a dilated ResNet (keys as the authors' model: ``conv1``…``layer4``, ``dsn3``, ``head``).

    Args:
        num_classes: K.
        depth: ResNet depth 18, 34, 50 or 101.
        guidance: ``"depth"`` (B×1×H×W metres) or ``"xyz"`` (B×3×H×W metres).
        aspp: SGNet* (ASPP head) instead of the FCN head.
        output_stride: 16 (paper default) or 8.
        stem: ``"deep"`` (authors) or ``"torchvision"`` (7×7, to load torchvision ImageNet weights).
        sconv_stages: stages (1..4) that get S-Convs; ``()`` gives the paper's baseline (56.8 M for R101).
        sconv_dilation: dilate S-Convs like the stage's plain convs (the authors do not: False).
        aux_weight: loss weight of the layer3 ``dsn3`` logits (guess 0.4).
        width, head_channels, proj_channels: trunk width (ResNet ``width``, 64), FCN head width (512) and S-Conv
            projector width (64); smaller values make compact CPU models (our extension, no pretrained weights).

    ``forward(rgb, guide)``: rgb B×3×H×W (normalised per :attr:`input_spec`), guide B×c'×H×W → eval: logits
    B×K×H×W; train: ``{"out": B×K×H×W, "aux": [dsn3 logits B×K×H×W]}`` with weights :attr:`aux_weights`.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        guidance: str = "depth",
        aspp: bool = False,
        output_stride: int = 16,
        stem: str = "deep",
        sconv_stages: Sequence[int] = (1, 2, 3, 4),
        sconv_dilation: bool = False,
        aux_weight: float = 0.4,
        width: int = 64,
        head_channels: int = 512,
        proj_channels: int = 64,
    ) -> None:
        if guidance not in GUIDE_CHANNELS:
            raise ValueError(f"guidance must be one of {sorted(GUIDE_CHANNELS)}, got {guidance!r}")
        if depth not in (18, 34, 50, 101):
            raise ValueError(f"SGNet supports ResNet depth 18, 34, 50 or 101, got {depth}")
        bad = set(sconv_stages) - {1, 2, 3, 4}
        if bad:
            raise ValueError(f"sconv_stages must be a subset of (1, 2, 3, 4), got {tuple(sconv_stages)}")
        guide_channels = GUIDE_CHANNELS[guidance]
        blocks_per_stage = _LAYERS[depth]
        use_sconv = frozenset(sconv_stages)
        guided = SConvBottleneck if depth >= 50 else SConvBasicBlock
        plain = Bottleneck if depth >= 50 else BasicBlock

        def block_factory(stage, index, inplanes, planes, stride, dilation, downsample) -> nn.Module:
            if stage in use_sconv and index in sconv_block_indices(blocks_per_stage[stage - 1]):
                d = dilation if sconv_dilation else 1
                return guided(inplanes, planes, stride, d, downsample, guide_channels, proj_channels)
            return plain(inplanes, planes, stride, dilation, downsample)

        super().__init__(depth, stem=stem, stages=sgnet_stages(output_stride), block_factory=block_factory, width=width)
        self.guidance, self.guide_channels, self.num_classes = guidance, guide_channels, num_classes
        c3, c4 = self.out_channels[2], self.out_channels[3]
        fcn = dict(mid_channels=head_channels, dropout=0.1, conv_bias=True, act_layer=leaky_relu)
        self.dsn3 = FCNHead(c3, num_classes, **fcn)
        if aspp:
            rates = (12, 24, 36) if output_stride == 16 else (24, 48, 72)
            self.head = nn.Sequential(
                ASPP(c4, 256, 512, rates, dropout=0.1, act_layer=leaky_relu), nn.Conv2d(512, num_classes, 1)
            )
        else:
            self.head = FCNHead(c4, num_classes, **fcn)
        self.aux_weights = (float(aux_weight),)

    def _check_inputs(self, rgb: Tensor, guide: Tensor) -> None:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"SGNet expects rgb of shape B×3×H×W, got {tuple(rgb.shape)}")
        expected = (rgb.shape[0], self.guide_channels, rgb.shape[2], rgb.shape[3])
        if guide is None or tuple(guide.shape) != expected:
            got = None if guide is None else tuple(guide.shape)
            raise ValueError(f"SGNet ({self.guidance} guidance) expects depth_input of shape {expected}, got {got}")

    def features(self, rgb: Tensor, guide: Tensor) -> list[Tensor]:
        """Stage outputs [c1, c2, c3, c4] (strides 4, 8, 16, 16 at OS16); guide already sanitised."""
        x = self.forward_stem(rgb)
        feats = []
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                x = block(x, guide) if isinstance(block, _GUIDED_BLOCKS) else block(x)
            feats.append(x)
        return feats

    def forward(self, rgb: Tensor, depth_input: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        self._check_inputs(rgb, depth_input)
        guide = torch.nan_to_num(depth_input, nan=0.0, posinf=0.0, neginf=0.0)
        *_, c3, c4 = self.features(rgb, guide)
        size = (rgb.shape[-2], rgb.shape[-1])
        out = self.upsample_logits(self.head(c4), size)
        if not self.training:
            return out
        aux = F.interpolate(self.dsn3(c3), size=size, mode="bilinear", align_corners=True)
        return {"out": out, "aux": [aux]}

    def convert_official(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The authors' checkpoint keys (``module.`` already stripped) → this model's state dict.

        * ``dsn4.*`` → ``head.*``; the FCN classifier index ``3`` → ``4`` (our head has an explicit activation);
        * InPlace-ABN → BatchNorm2d: ``weight ← |weight| + 1e-5`` (the scale InPlace-ABN applies at inference);
          ``num_batches_tracked`` is absent in the file and left to the model;
        * the frozen all-zero S-Conv ``bias`` is dropped (a non-zero one is an error: it would be lost).
        """
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            if key.startswith("dsn4."):
                key = "head." + key[len("dsn4.") :]
            parts = key.split(".")
            if parts[0] in ("dsn3", "head") and isinstance(self.get_submodule(parts[0]), FCNHead) and parts[1] == "3":
                key = ".".join([parts[0], "4", *parts[2:]])
            out[key] = value
        for name, module in self.named_modules():
            if isinstance(module, nn.BatchNorm2d) and f"{name}.weight" in out:
                out[f"{name}.weight"] = out[f"{name}.weight"].abs() + ABN_EPS
            if isinstance(module, SConv) and module.bias is None and f"{name}.bias" in out:
                bias = out.pop(f"{name}.bias")
                if bias.abs().max() > 0:
                    raise ValueError(f"{name}.bias is non-zero in the checkpoint, but this S-Conv has no bias")
        return out


def sgnet_input_spec(guidance: str = "depth", norm: str | None = None, stem: str = "deep", **_options) -> InputSpec:
    """SGNet's inputs: ``norm="caffe"`` (the authors' and their weights'): BGR 0..255 minus the caffe means
    (:data:`CAFFE_BGR_MEAN`, listed in the model's B, G, R channel order), no std; ``norm="imagenet"``: RGB
    /255 with ImageNet mean/std (torchvision ImageNet weights). None = caffe for the deep stem, imagenet for
    the torchvision stem. Guidance: depth or XYZ in metres, not normalised.
    """
    norm = norm or ("imagenet" if stem == "torchvision" else "caffe")
    if norm == "caffe":
        rgb_order, rgb_norm = "bgr", Normalization(scale=1.0, mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0))
    elif norm == "imagenet":
        rgb_order, rgb_norm = "rgb", Normalization(scale=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    else:
        raise ValueError(f"norm must be 'caffe' or 'imagenet', got {norm!r}")
    return InputSpec(depth_encoding=guidance, rgb_order=rgb_order, rgb_norm=rgb_norm, depth_norm=None)


def _build(num_classes: int, backbone: str, pretrained: str | None, aspp: bool, norm: str | None = None, **options):
    sgnet_input_spec(norm=norm)  # validates ``norm``; the spec itself is attached by the registry
    if "sconv_stages" in options:
        options["sconv_stages"] = tuple(options["sconv_stages"])  # JSON round trip gives a list
    model = SGNet(num_classes, depth=int(backbone.removeprefix("resnet")), aspp=aspp, **options)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


_REG = dict(input_spec=sgnet_input_spec, default_backbone="resnet101", backbones=BACKBONES)


@register("sgnet", description="SGNet: S-Conv ResNet + FCN head (depth/XYZ guidance)", **_REG)
def build_sgnet(num_classes: int, backbone: str = "resnet101", pretrained: str | None = None, **options) -> SGNet:
    """SGNet. Options: guidance, output_stride, stem, norm, sconv_stages, sconv_dilation, aux_weight (see SGNet)."""
    return _build(num_classes, backbone, pretrained, aspp=False, **options)


@register("sgnet_aspp", description="SGNet*: S-Conv ResNet + ASPP head (depth/XYZ guidance)", **_REG)
def build_sgnet_aspp(num_classes: int, backbone: str = "resnet101", pretrained: str | None = None, **options) -> SGNet:
    """SGNet* (ASPP head). Options as :func:`build_sgnet`."""
    return _build(num_classes, backbone, pretrained, aspp=True, **options)
