"""ACNet (Hu et al., ICIP 2019): three ResNet branches fused by Attention Complementary Modules.

Structure (paper + the authors' ``ACNet_models_V1.py``; attribute names follow the authors' code so their
released checkpoint loads by name):

* RGB branch ``conv1, bn1, layer1..4``; depth branch ``conv1_d, bn1_d, layer1_d..4_d`` (1-channel stem,
  ImageNet-initialised with the channel mean of the RGB stem); fusion branch ``layer1_m..4_m`` without a stem.
* ACM ``atten_{rgb,depth}_k`` (k = 0..4): GAP → 1×1 conv C→C (bias) → sigmoid, multiplied onto its input.
  ``M0 = ACM(r0) + ACM(d0)`` after the stems; ``Mk = layer_k_m(M(k-1)) + ACM(rk) + ACM(dk)`` (max-pool before
  layer1 in every branch).
* RedNet-style decoder: ``agant0..4`` (1×1 conv-BN-ReLU skips), ``deconv1..4`` (transposed residual
  blocks, ×2 each), ``final_conv`` and ``final_deconv`` (2×2 stride-2 transposed conv to K classes), so the
  logits come out at input resolution with no interpolation. Input height and width must be multiples of 32.
* Train mode adds the deep-supervision logits ``out2_conv..out5_conv`` at 1/2, 1/4, 1/8, 1/16 of the input,
  taken before each skip is added.

Paper vs code: the paper *averages* the five losses; the authors' training script *sums* them. The relative
weights are 1:1 either way; :attr:`ACNet.aux_weights` follows the code (1.0 each), so the released weights'
recipe is reproduced by ``loss = CE(out) + Σ w·CE(aux)`` with labels nearest-downsampled to each aux size.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor, nn

from rgbd_seg_ros.depth.encode import InputSpec, Normalization
from rgbd_seg_ros.models.backbones import ResNet, conv3x3, load_pretrained
from rgbd_seg_ros.models.gff import GFFDecoder
from rgbd_seg_ros.models.registry import register

# The authors' NYUv2 statistics (ACNet_data_nyuv2.py): RGB after /255, depth in metres.
ACNET_RGB_MEAN = (0.4850042694973687, 0.41627756261047333, 0.3981809741523051)
ACNET_RGB_STD = (0.26415541082494515, 0.2728415392982039, 0.2831175140191598)
ACNET_DEPTH_MEAN_M = 2.8424503515351494
ACNET_DEPTH_STD_M = 0.9932836506164299

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
_DECODER_BLOCKS = (6, 4, 3, 3)  # transposed blocks of deconv1..4 (RedNet's reversed ResNet-34 layout)
_FINAL_BLOCKS = 3


class AttentionComplementary(nn.Sequential):
    """ACM: ``U = A · σ(φ(GAP(A)))`` with φ a 1×1 conv C→C with bias (Eq. 1–2); B×C×H×W → B×C×H×W.

    Indices 0/1/2 (pool, conv, sigmoid) match the authors' ``atten_*`` Sequential keys.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def weights(self, x: Tensor) -> Tensor:
        """Channel weights V ∈ (0, 1), shape B×C×1×1."""
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


class TransBasicBlock(nn.Module):
    """RedNet decoder block: 3×3 conv-BN-ReLU → 3×3 conv (or 3×3 stride-2 transposed conv)-BN, plus shortcut.

    The shortcut is identity, or ``upsample`` (2×2 stride-2 transposed conv + BN, or 1×1 conv + BN when only
    the width changes). B×C_in×H×W → B×C_out×(sH)×(sW).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, inplanes)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1:
            self.conv2 = nn.ConvTranspose2d(inplanes, planes, 3, stride, padding=1, output_padding=1, bias=False)
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(inplanes, planes, 2, stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.conv2 = conv3x3(inplanes, planes)
            self.upsample = (
                nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
                if inplanes != planes
                else None
            )
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _transpose_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks - 1`` width-keeping blocks, then one that changes width (and upsamples when stride 2)."""
    layers = [TransBasicBlock(inplanes, inplanes) for _ in range(blocks - 1)]
    layers.append(TransBasicBlock(inplanes, planes, stride))
    return nn.Sequential(*layers)


def _agant(cin: int, cout: int) -> nn.Sequential:
    """Skip adapter: 1×1 conv (no bias) → BN → ReLU (keys ``agantK.{0,1}``)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ACNet(nn.Module):
    """ACNet: ``forward(rgb, depth)`` with rgb B×3×H×W and depth B×1×H×W (H, W multiples of 32).

    Returns logits B×K×H×W in eval mode; in train mode ``{"out": logits, "aux": [o2, o3, o4, o5]}`` with the
    deep-supervision logits at 1/2, 1/4, 1/8, 1/16 of the input (weights :attr:`aux_weights`).

    Args:
        num_classes: K.
        depth: ResNet depth of all three branches (50 in the paper; 18/34 are CPU stand-ins, our extension).
        pretrained: local ImageNet ResNet checkpoint (torchvision layout) copied into all three branches;
            the depth stem gets the RGB stem's mean over input channels.
        decoder: ``"rednet"`` (the paper's) or ``"gff"``: :class:`~rgbd_seg_ros.models.gff.GFFDecoder` over
            M1..M4 with a stage-3 auxiliary head (``aux_weights`` (0.4,)) — our extension, not in either paper.
    """

    size_divisor = 32
    aux_weights = (1.0, 1.0, 1.0, 1.0)

    def __init__(
        self, num_classes: int, depth: int = 50, pretrained: str | Path | None = None, decoder: str = "rednet"
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        rgb, dep, merge = (ResNet(depth, stem="torchvision", output_stride=32, in_channels=c) for c in (3, 1, 3))
        self.conv1, self.bn1 = rgb.conv1, rgb.bn1
        self.conv1_d, self.bn1_d = dep.conv1, dep.bn1
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for k in range(1, 5):
            setattr(self, f"layer{k}", getattr(rgb, f"layer{k}"))
            setattr(self, f"layer{k}_d", getattr(dep, f"layer{k}"))
            setattr(self, f"layer{k}_m", getattr(merge, f"layer{k}"))
        channels = (64, *rgb.out_channels)  # M0..M4
        self.feature_channels = channels
        for k, c in enumerate(channels):
            setattr(self, f"atten_rgb_{k}", AttentionComplementary(c))
            setattr(self, f"atten_depth_{k}", AttentionComplementary(c))

        if decoder not in ("rednet", "gff"):
            raise ValueError(f"decoder must be 'rednet' or 'gff', got {decoder!r}")
        self.gff = GFFDecoder(channels[1:], num_classes) if decoder == "gff" else None
        if self.gff is not None:
            self.aux_weights = self.gff.aux_weights
        if self.gff is None:
            widths = (64, 64, 128, 256, 512)  # decoder width at 1/2 … 1/32
            for k, (c, w) in enumerate(zip(channels, widths)):
                setattr(self, f"agant{k}", _agant(c, w))
            for k, blocks in enumerate(_DECODER_BLOCKS, start=1):
                setattr(self, f"deconv{k}", _transpose_stage(widths[5 - k], widths[4 - k], blocks, stride=2))
            self.final_conv = _transpose_stage(64, 64, _FINAL_BLOCKS, stride=1)
            self.final_deconv = nn.ConvTranspose2d(64, num_classes, 2, stride=2, bias=True)
            for k in range(1, 5):  # deep supervision after deconv k: out5 (1/16) … out2 (1/2)
                setattr(self, f"out{6 - k}_conv", nn.Conv2d(widths[4 - k], num_classes, 1, bias=True))

        self._init_weights()
        if pretrained is not None:
            for branch in (rgb, dep, merge):  # modules are shared with self, so this loads in place
                load_pretrained(branch, pretrained)

    def _init_weights(self) -> None:
        """The authors' init: He-normal (fan-out) for every Conv2d, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, rgb: Tensor, depth: Tensor) -> list[Tensor]:
        """Fused features ``[M0..M4]`` at 1/2, 1/4, 1/8, 1/16, 1/32 (channels :attr:`feature_channels`)."""
        r = self.relu(self.bn1(self.conv1(rgb)))
        d = self.relu(self.bn1_d(self.conv1_d(depth)))
        m = self.atten_rgb_0(r) + self.atten_depth_0(d)
        feats = [m]
        r, d, m = self.maxpool(r), self.maxpool(d), self.maxpool(m)
        for k in range(1, 5):
            r = getattr(self, f"layer{k}")(r)
            d = getattr(self, f"layer{k}_d")(d)
            m = (
                getattr(self, f"layer{k}_m")(m)
                + getattr(self, f"atten_rgb_{k}")(r)
                + getattr(self, f"atten_depth_{k}")(d)
            )
            feats.append(m)
        return feats

    def decode(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """RedNet decoder: ``[M0..M4]`` → (logits at 2× M0's size, deep-supervision logits [o2, o3, o4, o5]).

        The deep-supervision logits are only computed in train mode (empty list otherwise). With
        ``decoder="gff"``: GFF over M1..M4 → (logits at 2× M0's size, [stage-3 aux logits] in train mode).
        """
        if self.gff is not None:
            return self.gff(feats[1:], out_size=tuple(2 * n for n in feats[0].shape[-2:]))
        x = self.agant4(feats[4])
        aux = []
        for k in range(1, 5):
            x = getattr(self, f"deconv{k}")(x)
            if self.training:
                aux.append(getattr(self, f"out{6 - k}_conv")(x))
            x = x + getattr(self, f"agant{4 - k}")(feats[4 - k])
        out = self.final_deconv(self.final_conv(x))
        return out, aux[::-1]

    def forward(self, rgb: Tensor, depth: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        _check_inputs(rgb, depth, self.size_divisor)
        out, aux = self.decode(self.encode(rgb, depth))
        if self.training:
            return {"out": out, "aux": aux}
        return out

    def convert_official(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The authors' released checkpoint keys → this model's (see :func:`convert_official_state_dict`)."""
        return convert_official_state_dict(state)


def _check_inputs(rgb: Tensor, depth: Tensor, divisor: int) -> None:
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"ACNet expects rgb of shape B×3×H×W, got {tuple(rgb.shape)}")
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"ACNet expects depth of shape B×1×H×W (metres, z-scored), got {tuple(depth.shape)}")
    if rgb.shape[0] != depth.shape[0] or rgb.shape[2:] != depth.shape[2:]:
        raise ValueError(f"rgb {tuple(rgb.shape)} and depth {tuple(depth.shape)} differ in batch or size")
    h, w = rgb.shape[2:]
    if h % divisor or w % divisor:
        raise ValueError(f"ACNet needs height and width divisible by {divisor}, got {h}×{w}")


def convert_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ACNet authors' ``state_dict`` (``ckpt['state_dict']``) → this model's keys.

    The attribute names are the authors', so this only strips a ``module.`` (DataParallel) prefix.
    """
    return {k.removeprefix("module."): v for k, v in state.items()}


def input_spec(**_options) -> InputSpec:
    """RGB /255 with ACNet's NYUv2 mean/std; depth B×1×H×W in metres z-scored (2.8424, 0.9933); H, W % 32 == 0."""
    return InputSpec(
        depth_encoding="depth",
        rgb_norm=Normalization(255.0, ACNET_RGB_MEAN, ACNET_RGB_STD),
        depth_norm=Normalization(1.0, (ACNET_DEPTH_MEAN_M,), (ACNET_DEPTH_STD_M,)),
        size_divisor=32,
    )


@register(
    "acnet",
    input_spec=input_spec,
    default_backbone="resnet50",
    backbones=BACKBONES,
    description="ACNet: three ResNet branches + attention complementary modules, RedNet decoder",
)
def build_acnet(
    num_classes: int, backbone: str = "resnet50", pretrained: str | None = None, decoder: str = "rednet"
) -> ACNet:
    """Registry builder: ``backbone`` ∈ :data:`BACKBONES` (ResNet-50 in the paper); ``decoder`` "rednet" | "gff"."""
    return ACNet(num_classes, depth=int(backbone.removeprefix("resnet")), pretrained=pretrained, decoder=decoder)


__all__ = ["ACNet", "AttentionComplementary", "TransBasicBlock", "build_acnet", "convert_official_state_dict"]
