"""SA-Gate (Chen et al., ECCV 2020): dual RGB/HHA ResNet with Separation-and-Aggregation Gates, DeepLabV3+.

Structure (paper §3 + the authors' ``SA-Gate.nyu`` code; attribute names follow that code so its training
checkpoints load with a stem rename only):

* :class:`DualResNet` (``backbone``): two ResNet streams in one trunk; every block holds ``conv1..`` for RGB
  and ``hha_conv1..`` for HHA. Deep "v1c" stem (3→64→64→128) per stream, layer4 dilated with multi-grid
  2/4/8 (output stride 16).
* :class:`SAGate` (``backbone.sagates.{0..3}``) after each stage: feature separation (Eq. 1–4, a per-direction
  MLP 2C→C/16→C with sigmoid on GAP([guide ‖ main]), additive recalibration ``main + w·guide``), feature
  aggregation (Eq. 5–8, two 1×1 convs 2C→1 on the recalibrated pair, per-pixel softmax over the two,
  applied to the *input* features) and bi-directional propagation ``ReLU((x + M) / 2)`` into the next stage.
* DeepLabV3+ decoder (``head``) on M⁴ (ASPP rates 6/12/18) with M¹ as low-level features; FCN auxiliary head
  (``aux_head``) on M⁴, loss weight 0.2 (:attr:`SAGateDeepLab.aux_weights`).

Paper vs code, and what is chosen here:

* The ReLU after the propagation average is in the code only; kept (the next block expects x ≥ 0).
* The authors' code *ties* the first-block projection shortcut (``downsample`` is ``hha_downsample``) of every
  stage between the two streams; the paper's 63.4 M parameters (Table 1, R50) only hold with the tie, so
  ``share_shortcut=True`` is the default. ``False`` gives each stream its own shortcut (≈ +2.8 M at R50).
* The auxiliary head is not in the paper; its 0.2 weight is the code's. Logits are upsampled bilinearly with
  ``align_corners=True`` as in the code.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbd_seg_ros.depth.encode import InputSpec, Normalization
from rgbd_seg_ros.models.backbones import ResNet, load_pretrained
from rgbd_seg_ros.models.coarse import CoarseLogits
from rgbd_seg_ros.models.gff import GFFDecoder
from rgbd_seg_ros.models.heads import DeepLabV3PlusDecoder, FCNHead, PooledSumASPP
from rgbd_seg_ros.models.registry import register

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class ChannelFilter(nn.Module):
    """Global descriptor → channel weights: GAP, Linear(C_in → C_out/r), ReLU, Linear(→ C_out), sigmoid.

    B×C_in×H×W → B×C_out×1×1 in (0, 1). ``fc.{0,2}`` are the authors' key names.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(out_channels // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class FeatureSeparation(nn.Module):
    """One FS direction (Eq. 1–4): ``main + guide · σ(MLP(GAP([guide ‖ main])))``, B×C×H×W → B×C×H×W."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.filter = ChannelFilter(2 * channels, channels, reduction)

    def weights(self, guide: Tensor, main: Tensor) -> Tensor:
        """Channel weights applied to ``guide`` (W_hha when ``main`` is RGB), B×C×1×1."""
        return self.filter(torch.cat((guide, main), dim=1))

    def forward(self, guide: Tensor, main: Tensor) -> Tensor:
        return main + self.weights(guide, main) * guide


class SAGate(nn.Module):
    """Separation-and-Aggregation Gate on a stage's (RGB, HHA) pair, both B×C×H×W.

    ``forward(rgb, hha)`` returns ``((rgb_out, hha_out), merged)``: ``merged = rgb·A_rgb + hha·A_hha`` (Eq. 8)
    and the propagated streams ``ReLU((x + merged) / 2)``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fsp_rgb = FeatureSeparation(channels, reduction)  # RGB_rec = RGB + W_hha · HHA
        self.fsp_hha = FeatureSeparation(channels, reduction)  # HHA_rec = HHA + W_rgb · RGB
        self.gate_rgb = nn.Conv2d(2 * channels, 1, 1)
        self.gate_hha = nn.Conv2d(2 * channels, 1, 1)
        self.relu = nn.ReLU()

    def recalibrate(self, rgb: Tensor, hha: Tensor) -> tuple[Tensor, Tensor]:
        """Feature separation: (RGB_rec, HHA_rec), each B×C×H×W."""
        return self.fsp_rgb(hha, rgb), self.fsp_hha(rgb, hha)

    def aggregation_weights(self, rgb: Tensor, hha: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel (A_rgb, A_hha), each B×1×H×W, summing to 1 (Eq. 5–7)."""
        rec = torch.cat(self.recalibrate(rgb, hha), dim=1)
        attention = torch.softmax(torch.cat((self.gate_rgb(rec), self.gate_hha(rec)), dim=1), dim=1)
        return attention[:, :1], attention[:, 1:]

    def forward(self, rgb: Tensor, hha: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        a_rgb, a_hha = self.aggregation_weights(rgb, hha)
        merged = rgb * a_rgb + hha * a_hha
        return (self.relu((rgb + merged) / 2), self.relu((hha + merged) / 2)), merged


class DualBlock(nn.Module):
    """A ResNet block per stream, registered as ``conv1, bn1, …, downsample`` (RGB) and ``hha_*`` (HHA).

    Built from two single-stream blocks of the backbone (BasicBlock: 2 convs, Bottleneck: 3); their layers are
    re-registered under the authors' names. ``forward((rgb, hha))`` → (rgb, hha).
    """

    def __init__(self, rgb: nn.Module, hha: nn.Module) -> None:
        super().__init__()
        self.num_convs = 3 if hasattr(rgb, "conv3") else 2
        for prefix, block in (("", rgb), ("hha_", hha)):
            for i in range(1, self.num_convs + 1):
                setattr(self, f"{prefix}conv{i}", getattr(block, f"conv{i}"))
                setattr(self, f"{prefix}bn{i}", getattr(block, f"bn{i}"))
            setattr(self, f"{prefix}downsample", block.downsample)
        self.relu = nn.ReLU(inplace=True)

    def _stream(self, x: Tensor, prefix: str) -> Tensor:
        out = x
        for i in range(1, self.num_convs + 1):
            out = getattr(self, f"{prefix}bn{i}")(getattr(self, f"{prefix}conv{i}")(out))
            if i < self.num_convs:
                out = self.relu(out)
        shortcut = getattr(self, f"{prefix}downsample")
        return self.relu(out + (x if shortcut is None else shortcut(x)))

    def forward(self, x: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return self._stream(x[0], ""), self._stream(x[1], "hha_")


class DualResNet(ResNet):
    """Two-stream ResNet with an :class:`SAGate` after each stage.

    Args:
        depth: 18/34/50/101 (ResNet-50 in Table 1, ResNet-101 for the main results).
        stem: ``"deep"`` (the authors' v1c stem, default) or ``"torchvision"``.
        output_stride: 16 (the authors') or 8 / 32; layer4 dilations are ``base · multi_grid``.
        multi_grid: layer4 per-block dilation multipliers (1, 2, 4) → dilations 2/4/8 at output stride 16.
        share_shortcut: tie each stage's first-block projection shortcut between the streams (authors' code).
        reduction: FS MLP reduction r (hidden width C/r).

    ``forward(rgb, hha)`` (both B×3×H×W) → merged features ``[M1..M4]`` (channels :attr:`out_channels`).
    """

    def __init__(
        self,
        depth: int = 50,
        stem: str = "deep",
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 2, 4),
        share_shortcut: bool = True,
        reduction: int = 16,
    ) -> None:
        def dual_block(stage, index, inplanes, planes, stride, dilation, downsample) -> DualBlock:
            hha_downsample = downsample if share_shortcut or downsample is None else copy.deepcopy(downsample)
            rgb = self.block(inplanes, planes, stride, dilation, downsample, self.norm_layer)
            hha = self.block(inplanes, planes, stride, dilation, hha_downsample, self.norm_layer)
            return DualBlock(rgb, hha)

        super().__init__(depth, stem=stem, output_stride=output_stride, multi_grid=multi_grid, block_factory=dual_block)
        self.share_shortcut = share_shortcut
        self._stem_names = [n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") if hasattr(self, n)]
        for name in self._stem_names:
            setattr(self, f"hha_{name}", copy.deepcopy(getattr(self, name)))
        self.sagates = nn.ModuleList(SAGate(c, reduction) for c in self.out_channels)

    def _stem(self, x: Tensor, prefix: str) -> Tensor:
        for i in range(1, len(self._stem_names) // 2 + 1):
            x = self.relu(getattr(self, f"{prefix}bn{i}")(getattr(self, f"{prefix}conv{i}")(x)))
        return self.maxpool(x)

    def forward(self, rgb: Tensor, hha: Tensor) -> list[Tensor]:
        x = (self._stem(rgb, ""), self._stem(hha, "hha_"))
        merges = []
        for i, gate in enumerate(self.sagates):
            x = getattr(self, f"layer{i + 1}")(x)
            x, merged = gate(*x)
            merges.append(merged)
        return merges

    def load_imagenet(self, path: str | Path) -> list[str]:
        """Load ImageNet weights (torchvision or TorchSeg v1c layout) into the RGB stream and copy them into the
        HHA stream, as the authors do. Returns the RGB-stream keys the file did not provide."""
        missing = load_pretrained(self, path)
        state = self.state_dict()
        twins = {_hha_twin(k): v for k, v in state.items() if not k.startswith("sagates.") and "hha_" not in k}
        self.load_state_dict({k: v for k, v in twins.items() if k in state}, strict=False)
        missing = [k for k in missing if "hha_" not in k and not k.startswith("sagates.")]
        report = self.layer1.pretrained_report  # left by load_pretrained: the HHA twins are filled now
        report.target, report.missing = f"{report.target}, copied into the HHA stream", missing
        return missing


def _hha_twin(key: str) -> str:
    """RGB-stream key → its HHA twin (``layer1.0.conv1.weight`` → ``layer1.0.hha_conv1.weight``)."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if re.fullmatch(r"(conv|bn)\d|downsample", part):
            parts[i] = "hha_" + part
            break
    return ".".join(parts)


class SAGateDeepLab(nn.Module, CoarseLogits):
    """SA-Gate + DeepLabV3+: ``forward(rgb, hha)`` with both B×3×H×W (HHA normalised like RGB).

    Returns logits B×K×H×W in eval mode; in train mode ``{"out": logits, "aux": [aux_logits]}``, both at input
    size, with loss weights ``aux_weights = (0.2,)``.

    Args:
        num_classes: K.
        depth, stem, output_stride, share_shortcut, reduction: see :class:`DualResNet`.
        aspp_rates: ASPP rates; default (6, 12, 18) at output stride 16, doubled at output stride 8.
        pretrained: local ImageNet checkpoint loaded into both streams (see :meth:`DualResNet.load_imagenet`).
        decoder: ``"deeplabv3plus"`` (the paper's) or ``"gff"``: :class:`~rgbd_seg_ros.models.gff.GFFDecoder`
            (``head``) over the four merged stages with its stage-3 auxiliary head (``aux_weights`` (0.4,)) —
            our extension, not in either paper.
    """

    aux_weights = (0.2,)

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        stem: str = "deep",
        output_stride: int = 16,
        share_shortcut: bool = True,
        reduction: int = 16,
        aspp_rates: Sequence[int] | None = None,
        pretrained: str | Path | None = None,
        decoder: str = "deeplabv3plus",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = DualResNet(depth, stem, output_stride, share_shortcut=share_shortcut, reduction=reduction)
        c1, c4 = self.backbone.out_channels[0], self.backbone.out_channels[3]
        rates = tuple(aspp_rates) if aspp_rates is not None else tuple(r * 16 // output_stride for r in (6, 12, 18))
        if decoder == "gff":
            self.head = GFFDecoder(self.backbone.out_channels, num_classes)
            self.aux_head = nn.Identity()  # GFFDecoder has its own auxiliary head
            self.aux_weights = self.head.aux_weights
        elif decoder == "deeplabv3plus":
            self.head = DeepLabV3PlusDecoder(PooledSumASPP(c4, 256, rates), 256, c1, num_classes)
            self.aux_head = FCNHead(c4, num_classes, mid_channels=c4 // 4, conv_bias=False)
        else:
            raise ValueError(f"decoder must be 'deeplabv3plus' or 'gff', got {decoder!r}")
        for module in (self.head, self.aux_head):  # the authors' init of the new layers
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if pretrained is not None:
            self.backbone.load_imagenet(pretrained)

    def forward(self, rgb: Tensor, hha: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        if rgb.dim() != 4 or rgb.shape[1] != 3 or hha.dim() != 4 or hha.shape[1] != 3:
            raise ValueError(
                f"SA-Gate expects rgb and hha of shape B×3×H×W, got {tuple(rgb.shape)}, {tuple(hha.shape)}"
            )
        if rgb.shape != hha.shape:
            raise ValueError(f"rgb {tuple(rgb.shape)} and hha {tuple(hha.shape)} must have the same shape")
        size = rgb.shape[-2:]
        merges = self.backbone(rgb, hha)
        if isinstance(self.head, GFFDecoder):
            out, aux = self.head(merges, out_size=size)
            return {"out": out, "aux": aux} if self.training else out
        out = self.upsample_logits(self.head(merges[-1], merges[0]), size)
        if not self.training:
            return out
        return {"out": out, "aux": [_upsample(self.aux_head(merges[-1]), size)]}

    def convert_official(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The authors' training-checkpoint keys → this model's (see :func:`convert_official_state_dict`)."""
        return convert_official_state_dict(state)


def _upsample(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


_STEM_KEYS = {"conv1.0.": "conv1.", "conv1.1.": "bn1.", "conv1.3.": "conv2.", "conv1.4.": "bn2.", "conv1.6.": "conv3."}


def convert_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The SA-Gate authors' training checkpoint (``epoch-N.pth['model']``) → this model's keys.

    Strips ``module.``; renames the deep-stem Sequential (``backbone[.hha_]conv1.{0,1,3,4,6}`` and ``bn1``) to
    the flat ``conv1, bn1, conv2, bn2, conv3, bn3``; ``head.auxlayer.block.*`` → ``aux_head.*``. All other keys
    (blocks, ``hha_*``, ``sagates.*``, ``head.aspp/reduce/last_conv/classify``) are already the authors'.
    """
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for prefix in ("backbone.", "backbone.hha_"):
            rest = key.removeprefix(prefix)
            if rest == key or rest.startswith("layer"):
                continue
            if rest.startswith("bn1."):
                key = f"{prefix}bn3.{rest[4:]}"
            for old, new in _STEM_KEYS.items():
                if rest.startswith(old):
                    key = prefix + new + rest[len(old) :]
        key = key.replace("head.auxlayer.block.", "aux_head.")
        out[key] = value
    return out


def input_spec(**_options) -> InputSpec:
    """RGB and HHA (B×3×H×W, 8-bit) both /255 with ImageNet mean/std, as the authors' data loader."""
    return InputSpec(depth_encoding="hha", rgb_norm=Normalization(), depth_norm=Normalization())


@register(
    "sagate",
    input_spec=input_spec,
    default_backbone="resnet50",
    backbones=BACKBONES,
    description="SA-Gate: dual RGB/HHA ResNet with separation-and-aggregation gates, DeepLabV3+ decoder",
)
def build_sagate(
    num_classes: int, backbone: str = "resnet50", pretrained: str | None = None, **options
) -> SAGateDeepLab:
    """Registry builder: ``backbone`` ∈ :data:`BACKBONES`; ``options`` as :class:`SAGateDeepLab` (e.g.
    ``share_shortcut=False``, ``output_stride=8``, ``stem="torchvision"``)."""
    return SAGateDeepLab(num_classes, depth=int(backbone.removeprefix("resnet")), pretrained=pretrained, **options)
