"""AdapNet++ (Valada, Mohan & Burgard, IJCV 2019): the unimodal model and the parts that SSMA reuses.

The structure follows paper §3 and the authors' TensorFlow code (``DeepSceneSeg/AdapNet-pp``,
``models/AdapNet_pp.py``). All H×W sizes below are for an input of H×W, and H and W must be multiples of 16.

* **Stem.** A BatchNorm on the raw 0–255 BGR input (a learned normalisation with no mean subtraction), then a
  7×7/2 conv to 64 channels + BN-ReLU, then a 3×3/2 max-pool.
* **Trunk.** A full pre-activation ResNet-50: stages of 3, 4, 6 and 3 units with 256, 512, 1024 and 2048 channels,
  strides 1, 2, 2, 1, so the output stride is 16. Every unit except the first of its stage starts with BN-ReLU
  (``bn0``), and every stage ends with BN-ReLU (``norm``); the activated stage output feeds the next stage, the
  skips and the eASPP. A *multiscale* unit splits its 3×3 conv into two halves at dilations (r1, r2), which adds
  no parameters. The multiscale units are res3d, res4c–f and res5a–c.
* **eASPP.** A 1×1 branch, three cascaded branches (1×1 → 64, 3×3 at rate r, 3×3 at rate r, 1×1 → 256, with
  r = 3, 6, 12) and an image-pooling branch. Every conv in the branches is followed by BN-ReLU. The five outputs
  are concatenated and projected by a 1×1 conv to 256 channels + BN (no ReLU).
* **Skips.** A 1×1 conv + BN (no ReLU) from 512→24 channels on the Res3d output (1/8), and from 256→24 on the
  Res2c output (1/4).
* **Decoder.** A 4×4/2 transposed conv + BN (D1, 1/8); concatenation with the 1/8 skip; two 3×3 convs
  BN-ReLU; a 4×4/2 transposed conv + BN (D2, 1/4); concatenation with the 1/4 skip; two 3×3 convs BN-ReLU;
  a 1×1 conv to K + BN-ReLU (the code's ``conv78``); and an 8×8/4 transposed conv to K + BN, which gives logits
  at the input size.
* **Auxiliary heads** (train mode only). A 1×1 conv to K + BN on D2 and on D1, upsampled bilinearly to the
  input size. The loss weights are 0.6 for the 1/4 head and 0.5 for the 1/8 head (the code's assignment;
  :attr:`AdapNetPP.aux_weights`).

**Paper vs released code** (``variant``; each item can also be overridden on its own). The parameter count is
the same for both variants (30.15 M at 12 classes, against the paper's 30.20 M).

============================  ==========================================  ======================================
item                          ``"code"`` (default)                        ``"paper"``
============================  ==========================================  ======================================
multiscale dilations          res3d and res4c–f (1, 2); res5a–c (2, 2)    res3d (1, 2); res4c–f (1, 2/4/8/16);
                                                                          res5a–c (2, 4/8/16)
dropout on res5c's residual   0.7 (``keep_prob=0.3``)                     0.5
shortcut of the first unit    taken from that unit's conv1 output         taken from the unit input (standard)
============================  ==========================================  ======================================

The default is ``"code"``. The released checkpoints come from that code, and the README's single-scale mIoU
(Cityscapes-12 80.77) is the paper's number, so the released weights reproduce the published figure. Whether
those checkpoints used the constant rate 2 of the final commit is a guess: dilations do not change weight
shapes. ``tf_padding=True`` reproduces TensorFlow "SAME" padding on the three strided layers (7×7/2 conv,
3×3/2 max-pool and the stride-2 3×3 convs): it pads asymmetrically (e.g. (2, 3) instead of 3), which converted
TF weights need. The default uses PyTorch's symmetric padding.

**The authors' TensorFlow checkpoints** map onto these modules by :meth:`AdapNetPP.tf_variable_map` (and
:meth:`~rgbd_seg_ros.models.ssma.SSMA.tf_variable_map`): our key → the variable of their graph (``TFVar``), with the
HWIO → OIHW transposes in :func:`tf_to_torch`; ``rgbd-seg convert`` applies them (``easpp_rates=(6, 12, 18)`` for
their 19-class Cityscapes models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbd_seg_ros.depth.encode import InputSpec, Normalization
from rgbd_seg_ros.models import heads
from rgbd_seg_ros.models.heads import conv_norm_act
from rgbd_seg_ros.models.registry import register

Variant = Literal["code", "paper"]
Modality = Literal["rgb", "hha", "jet"]
DilationPair = tuple[int, int]

UNITS = (3, 4, 6, 3)
WIDTHS = (256, 512, 1024, 2048)
SKIP_CHANNELS = 24
AUX_WEIGHTS = (0.6, 0.5)  # (1/4 head on D2, 1/8 head on D1), as in the authors' code
SIZE_DIVISOR = 16

# Dilations (r1, r2) of the 8 multiscale units, in order res3d, res4c, res4d, res4e, res4f, res5a, res5b, res5c.
DILATIONS: dict[str, tuple[DilationPair, ...]] = {
    "code": ((1, 2),) * 5 + ((2, 2),) * 3,
    "paper": ((1, 2), (1, 2), (1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (2, 16)),
}
VARIANTS: dict[str, dict] = {
    "code": {"dilations": "code", "dropout": 0.7, "first_shortcut": "conv1"},
    "paper": {"dilations": "paper", "dropout": 0.5, "first_shortcut": "input"},
}
# Indices (stage, unit), 0-based, of the multiscale units, matching the order of DILATIONS.
_MULTISCALE_UNITS = ((1, 3), (2, 2), (2, 3), (2, 4), (2, 5), (3, 0), (3, 1), (3, 2))
RAW_8BIT = Normalization(scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def conv_bn(cin: int, cout: int, kernel: int = 1, dilation: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias, "same" size at stride 1) + BN (+ ReLU); keys ``0`` (conv) and ``1`` (BN)."""
    return nn.Sequential(*conv_norm_act(cin, cout, kernel, dilation, act_layer=heads.relu if relu else nn.Identity))


def deconv_bn(cin: int, cout: int, scale: int) -> nn.Sequential:
    """Transposed conv (kernel 2·scale, stride scale, no bias) + BN: B×cin×h×w → B×cout×(scale·h)×(scale·w).

    The padding ``scale // 2`` makes the output align exactly as TF's ``conv2d_transpose`` with "SAME" padding.
    """
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 2 * scale, stride=scale, padding=scale // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class SamePad2d(nn.Module):
    """TensorFlow "SAME" padding for a strided window: ``(total // 2, total - total // 2)`` on each axis.

    ``total = max((ceil(n / stride) - 1) * stride + kernel - n, 0)``; e.g. (2, 3) for a 7×7/2 conv on an even size.
    """

    def __init__(self, kernel: int, stride: int, value: float = 0.0) -> None:
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for n in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(n / self.stride) - 1) * self.stride + self.kernel - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads, value=self.value)


def same_pad(kernel: int, stride: int, tf_padding: bool, value: float = 0.0) -> tuple[nn.Module, int]:
    """(pre-padding module, layer padding) for a strided window: TF "SAME" (:class:`SamePad2d`, padding 0)
    when ``tf_padding`` and ``stride > 1``, else (identity, symmetric ``kernel // 2``). Keys stay the same."""
    if tf_padding and stride > 1:
        return SamePad2d(kernel, stride, value), 0
    return nn.Identity(), kernel // 2


class MultiscaleConv(nn.Module):
    """The multiscale 3×3 conv: two halves of the output channels at dilations r1 and r2, concatenated.

    B×cin×H×W → B×cout×H×W; same parameter count as one 3×3 conv cin→cout.
    """

    def __init__(self, cin: int, cout: int, dilations: DilationPair) -> None:
        super().__init__()
        if cout % 2:
            raise ValueError(f"a multiscale conv needs an even number of output channels, got {cout}")
        self.dilations = tuple(dilations)
        self.conv_a = nn.Conv2d(cin, cout // 2, 3, padding=dilations[0], dilation=dilations[0], bias=False)
        self.conv_b = nn.Conv2d(cin, cout // 2, 3, padding=dilations[1], dilation=dilations[1], bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv_a(x), self.conv_b(x)], dim=1)


class PreActUnit(nn.Module):
    """Full pre-activation bottleneck unit: [BN-ReLU] → 1×1 → BN-ReLU → 3×3 → BN-ReLU → 1×1, plus a shortcut.

    Args:
        inplanes / planes: input / output channels (the bottleneck width is ``planes // 4``).
        stride: stride of the 3×3 conv and of the projection shortcut.
        dilations: ``None`` for a plain 3×3 conv, or (r1, r2) for a :class:`MultiscaleConv`.
        preact: apply ``bn0``-ReLU to the input (False for a stage's first unit, whose input is already activated).
        projection: 1×1 conv shortcut (first unit of a stage) instead of the identity.
        shortcut_from_conv1: feed the projection with the conv1 output instead of the unit input (the authors'
            code does this in res2a; the shapes are the same because res2a's input and conv1 both have 64 channels).
        dropout: dropout probability on the residual branch in training (res5c only).
        tf_padding: TF "SAME" padding on a strided 3×3 conv.

    The identity shortcut adds the *raw* input, as pre-activation ResNets do.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilations: DilationPair | None = None,
        preact: bool = True,
        projection: bool = False,
        shortcut_from_conv1: bool = False,
        dropout: float = 0.0,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        mid = planes // 4
        if not projection and (stride != 1 or inplanes != planes):
            raise ValueError("an identity shortcut needs stride 1 and inplanes == planes")
        if shortcut_from_conv1 and (not projection or stride != 1 or mid != inplanes):
            raise ValueError("shortcut_from_conv1 needs a stride-1 projection unit with inplanes == planes // 4")
        self.bn0 = nn.BatchNorm2d(inplanes) if preact else None
        self.pad2: nn.Module = nn.Identity()
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        if dilations is not None:
            if stride != 1:
                raise ValueError("multiscale units have stride 1")
            self.conv2 = MultiscaleConv(mid, mid, dilations)
        else:
            self.pad2, pad = same_pad(3, stride, tf_padding)
            self.conv2 = nn.Conv2d(mid, mid, 3, stride, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.shortcut = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False) if projection else None
        self.shortcut_from_conv1 = shortcut_from_conv1

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn0(x)) if self.bn0 is not None else x
        y = F.relu(self.bn1(self.conv1(act)))
        short_in = y if self.shortcut_from_conv1 else act
        y = self.conv3(F.relu(self.bn2(self.conv2(self.pad2(y)))))
        if self.dropout is not None:
            y = self.dropout(y)
        return y + (self.shortcut(short_in) if self.shortcut is not None else x)


class PreActStage(nn.Module):
    """A stage of :class:`PreActUnit` s (``units``) closed by BN-ReLU (``norm``): B×cin×H×W → B×cout×H/s×W/s."""

    def __init__(self, units: Sequence[PreActUnit], channels: int) -> None:
        super().__init__()
        self.units = nn.Sequential(*units)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.units(x)))


class EASPP(nn.Module):
    """Efficient ASPP: 1×1 branch, three cascaded atrous branches, image pooling, and a 1×1 projection + BN.

    B×cin×h×w → B×256×h×w. The pooled branch has a BN on a 1×1 map, so training needs a batch of at least 2.
    """

    def __init__(self, cin: int = 2048, channels: int = 256, rates: Sequence[int] = (3, 6, 12)) -> None:
        super().__init__()
        mid = channels // 4
        self.branch1x1 = conv_bn(cin, channels)
        self.branches = nn.ModuleList(
            nn.Sequential(conv_bn(cin, mid), conv_bn(mid, mid, 3, r), conv_bn(mid, mid, 3, r), conv_bn(mid, channels))
            for r in rates
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(cin, channels))
        self.project = conv_bn(channels * (len(rates) + 2), channels, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        outs = [self.branch1x1(x), *(b(x) for b in self.branches), pooled]
        return self.project(torch.cat(outs, dim=1))


def _resolve(variant: str, **overrides) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    cfg = dict(VARIANTS[variant])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    dil = cfg["dilations"]
    if isinstance(dil, str):
        if dil not in DILATIONS:
            raise ValueError(f"dilations must be one of {sorted(DILATIONS)} or 8 (r1, r2) pairs, got {dil!r}")
        dil = DILATIONS[dil]
    dil = tuple((int(a), int(b)) for a, b in dil)
    if len(dil) != len(_MULTISCALE_UNITS):
        raise ValueError(f"dilations needs {len(_MULTISCALE_UNITS)} (r1, r2) pairs (res3d, res4c–f, res5a–c)")
    cfg["dilations"] = dil
    if cfg["first_shortcut"] not in ("conv1", "input"):
        raise ValueError(f"first_shortcut must be 'conv1' or 'input', got {cfg['first_shortcut']!r}")
    return cfg


class AdapNetEncoder(nn.Module):
    """One modality's AdapNet++ encoder: stem, pre-activation ResNet-50, eASPP and the two 24-channel skips.

    This is the "expert" that SSMA instantiates once per modality.
    ``forward(x)`` takes B×3×H×W (raw 0–255, H and W multiples of 16) and returns
    ``(latent B×256×H/16×W/16, skip8 B×24×H/8×W/8, skip4 B×24×H/4×W/4)``.
    """

    def __init__(
        self,
        variant: Variant = "code",
        dilations: str | Sequence[DilationPair] | None = None,
        dropout: float | None = None,
        first_shortcut: Literal["conv1", "input"] | None = None,
        in_channels: int = 3,
        tf_padding: bool = False,
        easpp_rates: Sequence[int] = (3, 6, 12),
    ) -> None:
        super().__init__()
        cfg = _resolve(variant, dilations=dilations, dropout=dropout, first_shortcut=first_shortcut)
        self.config = cfg
        self.input_norm = nn.BatchNorm2d(in_channels)
        self.pad1, pad = same_pad(7, 2, tf_padding)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool_pad, pad = same_pad(3, 2, tf_padding, value=float("-inf"))
        self.maxpool = nn.MaxPool2d(3, 2, pad)
        multiscale = dict(zip(_MULTISCALE_UNITS, cfg["dilations"]))
        inplanes = 64
        for s, (n, planes, stride) in enumerate(zip(UNITS, WIDTHS, (1, 2, 2, 1))):
            units = []
            for u in range(n):
                units.append(
                    PreActUnit(
                        inplanes if u == 0 else planes,
                        planes,
                        stride=stride if u == 0 else 1,
                        dilations=multiscale.get((s, u)),
                        preact=u > 0,
                        projection=u == 0,
                        shortcut_from_conv1=(s, u) == (0, 0) and cfg["first_shortcut"] == "conv1",
                        dropout=cfg["dropout"] if (s, u) == (3, n - 1) else 0.0,
                        tf_padding=tf_padding,
                    )
                )
            setattr(self, f"layer{s + 1}", PreActStage(units, planes))
            inplanes = planes
        self.aspp = EASPP(WIDTHS[3], 256, tuple(easpp_rates))
        self.skip8 = conv_bn(WIDTHS[1], SKIP_CHANNELS, relu=False)
        self.skip4 = conv_bn(WIDTHS[0], SKIP_CHANNELS, relu=False)

    def forward_trunk(self, x: Tensor) -> list[Tensor]:
        """Stage outputs [Res2c 1/4, Res3d 1/8, Res4f 1/16, Res5c 1/16] (activated)."""
        x = F.relu(self.bn1(self.conv1(self.pad1(self.input_norm(x)))))
        x = self.maxpool(self.pool_pad(x))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c2, c3, _, c5 = self.forward_trunk(x)
        return self.aspp(c5), self.skip8(c3), self.skip4(c2)


class SkipAttention(nn.Module):
    """SSMA's channel attention on a fused skip (Eq. 13–15): ``skip · ReLU(BN(W4 · GAP(D)))``.

    ``forward(decoder_feat B×cd×h×w, skip B×cs×h×w)`` → B×cs×h×w. Its BN sees a 1×1 map (training needs batch ≥ 2).
    """

    def __init__(self, decoder_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(decoder_channels, skip_channels))

    def forward(self, decoder_feat: Tensor, skip: Tensor) -> Tensor:
        return skip * self.reduce(decoder_feat)


class AdapNetDecoder(nn.Module):
    """The AdapNet++ decoder: three upsampling stages with two skip-refinement stages, and the auxiliary heads.

    ``forward(latent B×256×h×w, skip8 B×24×2h×2w, skip4 B×24×4h×4w)`` → ``(logits B×K×16h×16w, [aux4, aux8])``,
    where aux4 (on D2, 1/4) and aux8 (on D1, 1/8) are B×K logits at their own resolution (an empty list when
    ``aux=False`` or in eval mode). ``skip_attention=True`` adds SSMA's :class:`SkipAttention` before each skip
    concatenation.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 256,
        skip_channels: int = SKIP_CHANNELS,
        aux: bool = True,
        skip_attention: bool = False,
    ) -> None:
        super().__init__()
        self.up1 = deconv_bn(channels, channels, 2)
        self.refine8 = nn.Sequential(conv_bn(channels + skip_channels, channels, 3), conv_bn(channels, channels, 3))
        self.up2 = deconv_bn(channels, channels, 2)
        self.refine4 = nn.Sequential(
            conv_bn(channels + skip_channels, channels, 3),
            conv_bn(channels, channels, 3),
            conv_bn(channels, num_classes, 1),
        )
        self.up3 = deconv_bn(num_classes, num_classes, 4)
        self.att8 = SkipAttention(channels, skip_channels) if skip_attention else None
        self.att4 = SkipAttention(channels, skip_channels) if skip_attention else None
        self.aux4 = conv_bn(channels, num_classes, relu=False) if aux else None
        self.aux8 = conv_bn(channels, num_classes, relu=False) if aux else None

    def forward(self, latent: Tensor, skip8: Tensor, skip4: Tensor) -> tuple[Tensor, list[Tensor]]:
        d1 = self.up1(latent)
        if self.att8 is not None:
            skip8 = self.att8(d1, skip8)
        d2 = self.up2(self.refine8(torch.cat([d1, skip8], dim=1)))
        if self.att4 is not None:
            skip4 = self.att4(d2, skip4)
        out = self.up3(self.refine4(torch.cat([d2, skip4], dim=1)))
        aux = [self.aux4(d2), self.aux8(d1)] if self.training and self.aux4 is not None else []
        return out, aux


def he_init(module: nn.Module) -> None:
    """He init of every conv as in the authors' code: normal with std √(2 / (k² · c_in)); BN to (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            cin = m.in_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * cin)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x: Tensor, name: str, channels: int = 3) -> None:
    """Raise ValueError unless ``x`` is B×channels×H×W with H and W multiples of 16."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a B×{channels}×H×W tensor, got {shape}")
    h, w = x.shape[2:]
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(f"AdapNet++/SSMA need height and width divisible by {SIZE_DIVISOR}, got {h}×{w}")


def upsample_aux(aux: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
    """Bilinearly upsample auxiliary logits to the input size (as the authors' ``resize_images``)."""
    return [F.interpolate(a, size=size, mode="bilinear", align_corners=False) for a in aux]


class AdapNetPP(nn.Module):
    """Unimodal AdapNet++: ``forward(rgb, depth_input)`` → B×K×H×W logits (eval) or ``{"out", "aux"}`` (train).

    ``modality="rgb"`` reads ``rgb`` and ignores ``depth_input`` (pass None). ``"hha"`` or ``"jet"`` reads
    ``depth_input`` (B×3×H×W, 0–255) and ignores ``rgb``: these are the depth experts that SSMA's staged
    training starts from. The train-mode ``"aux"`` is ``[aux 1/4, aux 1/8]`` at input size, with
    :attr:`aux_weights` ``(0.6, 0.5)``. See the module docstring for ``variant`` and the other options.
    """

    def __init__(
        self,
        num_classes: int,
        modality: Modality = "rgb",
        variant: Variant = "code",
        dilations: str | Sequence[DilationPair] | None = None,
        dropout: float | None = None,
        first_shortcut: Literal["conv1", "input"] | None = None,
        aux: bool = True,
        tf_padding: bool = False,
        easpp_rates: Sequence[int] = (3, 6, 12),
    ) -> None:
        super().__init__()
        if modality not in ("rgb", "hha", "jet"):
            raise ValueError(f"modality must be 'rgb', 'hha' or 'jet', got {modality!r}")
        self.modality = modality
        self.encoder = AdapNetEncoder(
            variant, dilations, dropout, first_shortcut, tf_padding=tf_padding, easpp_rates=easpp_rates
        )
        self.decoder = AdapNetDecoder(num_classes, aux=aux)
        self.aux_weights = AUX_WEIGHTS if aux else ()
        he_init(self)

    def forward(self, rgb: Tensor | None, depth_input: Tensor | None = None) -> Tensor | dict[str, Tensor | list]:
        x = rgb if self.modality == "rgb" else depth_input
        check_input(x, "rgb" if self.modality == "rgb" else f"depth_input ({self.modality})")
        out, aux = self.decoder(*self.encoder(x))
        if self.training:
            return {"out": out, "aux": upsample_aux(aux, tuple(x.shape[2:]))}
        return out

    def tf_variable_map(self) -> dict[str, TFVar]:
        """This model's state-dict keys → the authors' TF variables (``evaluate.py`` builds the whole graph in the
        ``resnet_v2_50`` scope); see :func:`encoder_tf_map` and :func:`decoder_tf_map`."""
        scope = "resnet_v2_50/"
        return {
            **{f"encoder.{k}": v for k, v in encoder_tf_map(self.encoder, scope).items()},
            **{f"decoder.{k}": v for k, v in decoder_tf_map(self.decoder, scope).items()},
        }


# --- the authors' TensorFlow variables (DeepSceneSeg/AdapNet-pp models/AdapNet_pp.py + network_base.py) ---------


@dataclass(frozen=True)
class TFVar:
    """One TF variable feeding one of our tensors: its name, and for a split 3×3 conv which half of its outputs.

    ``network_base.split_conv2d`` keeps one ``[3, 3, in, out]`` kernel and splits it along ``out``: half 0 is the
    plain (or first atrous) part, half 1 the atrous part (our ``conv_a`` / ``conv_b``).
    """

    name: str
    half: int | None = None


#: Our BatchNorm2d attributes ← the authors' ``BatchNorm`` scope variables (``network_base.batch_norm``).
TF_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def tf_to_torch(value, var: TFVar) -> Tensor:
    """A TF checkpoint value → our layout: conv ``[kh, kw, in, out]`` → ``[out, in, kh, kw]``, transposed conv
    ``[kh, kw, out, in]`` → ``[in, out, kh, kw]`` (the same axis permutation), then the ``half`` of a split conv
    (dim 0); vectors unchanged."""
    t = torch.as_tensor(value).float()
    if t.dim() == 4:
        t = t.permute(3, 2, 0, 1)
    if var.half is not None:
        n = t.shape[0] // 2
        t = t[var.half * n : (var.half + 1) * n]
    return t.contiguous()


#: The eASPP's cascaded branches (rates r1, r2, r3): 1×1 → 3×3 → 3×3 → 1×1 scopes, as ``AdapNet_pp._setup``.
_TF_EASPP_BRANCHES = (
    ("conv70", "conv7", "conv247", "conv71"),
    ("conv80", "conv8", "conv248", "conv81"),
    ("conv90", "conv9", "conv249", "conv91"),
)
#: Our decoder modules ← the authors' decoder scopes.
_TF_DECODER = (
    ("up1", "conv41"),
    ("refine8.0", "conv89"),
    ("refine8.1", "conv96"),
    ("up2", "conv16"),
    ("refine4.0", "conv88"),
    ("refine4.1", "conv95"),
    ("refine4.2", "conv78"),
    ("up3", "conv5"),
)


def _tf_bn(ours: str, scope: str) -> dict[str, TFVar]:
    return {f"{ours}.{k}": TFVar(f"{scope}/BatchNorm/{v}") for k, v in TF_BN.items()}


def _tf_conv_bn(ours: str, scope: str, bn: bool = True, bias: bool = False) -> dict[str, TFVar]:
    """A ``conv_bn``/``deconv_bn`` Sequential (keys ``0``, ``1``) ← ``scope/weights`` + ``scope/BatchNorm``; with
    ``bn=False`` a bare conv ``ours`` (``conv_bias``: + ``scope/biases``)."""
    if not bn:
        out = {f"{ours}.weight": TFVar(f"{scope}/weights")}
        if bias:
            out[f"{ours}.bias"] = TFVar(f"{scope}/biases")
        return out
    return {f"{ours}.0.weight": TFVar(f"{scope}/weights"), **_tf_bn(f"{ours}.1", scope)}


def encoder_tf_map(encoder: AdapNetEncoder, scope: str) -> dict[str, TFVar]:
    """Our :class:`AdapNetEncoder` keys → the authors' expert variables under ``scope`` (``resnet_v2_50/`` in
    AdapNet++, ``rgb/resnet_v2_50/`` and ``depth/resnet_v2_50/`` in SSMA).

    The pre-activation BN of unit k (our ``bn0``) and a stage's closing BN (our ``norm``) live in the scope
    ``block{b}/unit_{k-1}/bottleneck_v1/conv3/BatchNorm`` of the unit *before* them (``unit_1``/``unit_3``/``unit_4``
    open that scope on their input); the eASPP and skip convs are the code's numbered scopes.
    """
    m = _tf_bn("input_norm", f"{scope}conv0")
    m |= {"conv1.weight": TFVar(f"{scope}conv1/weights"), **_tf_bn("bn1", f"{scope}conv1")}
    for s, n in enumerate(UNITS, start=1):
        stage = getattr(encoder, f"layer{s}")
        for u, unit in enumerate(stage.units):
            tf = f"{scope}block{s}/unit_{u + 1}/bottleneck_v1"
            ours = f"layer{s}.units.{u}"
            if unit.bn0 is not None:
                m |= _tf_bn(f"{ours}.bn0", f"{scope}block{s}/unit_{u}/bottleneck_v1/conv3")
            m |= {f"{ours}.conv1.weight": TFVar(f"{tf}/conv1/weights"), **_tf_bn(f"{ours}.bn1", f"{tf}/conv1")}
            if isinstance(unit.conv2, MultiscaleConv):
                m[f"{ours}.conv2.conv_a.weight"] = TFVar(f"{tf}/conv2/weights", 0)
                m[f"{ours}.conv2.conv_b.weight"] = TFVar(f"{tf}/conv2/weights", 1)
            else:
                m[f"{ours}.conv2.weight"] = TFVar(f"{tf}/conv2/weights")
            m |= _tf_bn(f"{ours}.bn2", f"{tf}/conv2")
            m[f"{ours}.conv3.weight"] = TFVar(f"{tf}/conv3/weights")
            if unit.shortcut is not None:
                m[f"{ours}.shortcut.weight"] = TFVar(f"{tf}/shortcut/weights")
        m |= _tf_bn(f"layer{s}.norm", f"{scope}block{s}/unit_{n}/bottleneck_v1/conv3")
    m |= _tf_conv_bn("skip4", f"{scope}conv32") | _tf_conv_bn("skip8", f"{scope}conv174")
    m |= _tf_conv_bn("aspp.branch1x1", f"{scope}conv256")
    for i, names in enumerate(_TF_EASPP_BRANCHES):
        for j, name in enumerate(names):
            m |= _tf_conv_bn(f"aspp.branches.{i}.{j}", f"{scope}{name}")
    return m | _tf_conv_bn("aspp.pool.1", f"{scope}conv57") | _tf_conv_bn("aspp.project", f"{scope}conv10")


def decoder_tf_map(decoder: AdapNetDecoder, scope: str = "") -> dict[str, TFVar]:
    """Our :class:`AdapNetDecoder` keys → the authors' decoder variables under ``scope`` (``conv41`` … ``conv5``,
    auxiliary ``conv911``/``conv912``, SSMA's skip attention ``conv550``/``conv551``)."""
    m: dict[str, TFVar] = {}
    for ours, name in _TF_DECODER:
        m |= _tf_conv_bn(ours, f"{scope}{name}")
    if decoder.aux4 is not None:
        m |= _tf_conv_bn("aux4", f"{scope}conv911") | _tf_conv_bn("aux8", f"{scope}conv912")
    if decoder.att8 is not None:
        m |= _tf_conv_bn("att8.reduce.1", f"{scope}conv550") | _tf_conv_bn("att4.reduce.1", f"{scope}conv551")
    return m


def input_spec(modality: Modality = "rgb", **_options) -> InputSpec:
    """Raw 0–255 BGR (the stem BN normalises); the second input, if any, is a raw 0–255 3-channel HHA or jet image.

    The authors fed every modality as a cv2-loaded 8-bit 3-channel image; converted TF weights expect the
    second modality's channels in the order their files stored them.
    """
    encoding = "none" if modality == "rgb" else modality
    return InputSpec(
        depth_encoding=encoding,
        rgb_order="bgr",
        rgb_norm=RAW_8BIT,
        depth_norm=None if encoding == "none" else RAW_8BIT,
        size_divisor=SIZE_DIVISOR,
    )


def load_encoder_weights(encoder: AdapNetEncoder, path: str | Path) -> list[str]:
    """Load backbone (e.g. ImageNet) weights into an :class:`AdapNetEncoder` from a local file.

    The file (safetensors, or torch read with ``weights_only=True``) holds encoder keys, bare or prefixed
    ``encoder.``; it may cover only the trunk (stem and ``layer1..4``). Every key in it must match the encoder
    by name and shape. Returns the encoder keys the file did not provide.

    Raises:
        ValueError: unknown keys or mismatched shapes, or no trunk weights at all.
    """
    from rgbd_seg_ros.models.checkpoints import read_state_dict

    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in read_state_dict(path).items()}
    own = encoder.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad or "conv1.weight" not in state:
        detail = ", ".join(bad[:5]) or "no 'conv1.weight'"
        raise ValueError(f"{path} does not hold AdapNet++ encoder weights: {detail}")
    encoder.load_state_dict(state, strict=False)
    return sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))


@register(
    "adapnet",
    input_spec=input_spec,
    default_backbone="preact_resnet50",
    backbones=("preact_resnet50",),
    description="AdapNet++: pre-activation ResNet-50 with multiscale units, eASPP, skip-refinement decoder",
)
def build_adapnet(
    num_classes: int, backbone: str = "preact_resnet50", pretrained: str | None = None, **options
) -> AdapNetPP:
    """Registry builder; ``options`` as :class:`AdapNetPP` (modality, variant, …).

    ``pretrained``: a local file of encoder weights in this module's key layout (see
    :func:`load_encoder_weights`); torchvision's ResNet-50 does not fit this pre-activation trunk.
    """
    model = AdapNetPP(num_classes, **options)
    if pretrained is not None:
        load_encoder_weights(model.encoder, pretrained)
    return model


__all__ = [
    "EASPP",
    "AdapNetDecoder",
    "AdapNetEncoder",
    "AdapNetPP",
    "MultiscaleConv",
    "PreActUnit",
    "SamePad2d",
    "SkipAttention",
    "TFVar",
    "build_adapnet",
    "decoder_tf_map",
    "encoder_tf_map",
    "load_encoder_weights",
    "tf_to_torch",
]
