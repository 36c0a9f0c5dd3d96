"""WideResNet-38-A2 (Wu, Shen & van den Hengel, "Wider or Deeper", 2016), dilated to output stride 8.

The trunk of the only released GFF weights (``lxtGH/DecoupleSegNets``, ``network/wider_resnet.py`` and
``network/gffnets.py``). Module and parameter names are the authors', so their state dict loads by name:

* ``mod1.conv1``: 3×3 conv 3 → 64 at full resolution (no BN; the next block's ``bn1`` normalises it);
* ``pool2`` → ``mod2`` (3 blocks, 128 ch, 1/2), ``pool3`` → ``mod3`` (3 blocks, 256 ch, 1/4), both 3×3/2 max-pools;
* ``mod4`` (6 blocks, 512 ch): the first block has stride 2 → 1/8; ``mod5`` (3 blocks, 1024 ch) dilation 2;
  ``mod6`` (1 bottleneck block 512/1024/2048) and ``mod7`` (1 bottleneck block 1024/2048/4096) dilation 4.
  ``mod6`` and ``mod7`` carry channel dropout (p 0.3 and 0.5) before their last 1×1 conv.

Every block is a pre-activation (identity-mapping) block: ``bn1`` (BN + ReLU) on the input, then the convs with
BN + ReLU between them (``convs.bn2``, ``convs.bn3``); a 1×1 projection ``proj_conv`` reads the *activated* input
when the width or stride changes, else the raw input is added. The trunk has no closing BN: the authors' GFF
model drops the classifier's ``bn_out`` and feeds ``mod7``'s raw sum to its ASPP. BN keys sit one level down
(``bn1.0.weight``) because the authors wrap BN and ReLU in one ``Sequential``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from rgbd_seg_ros.models.backbones import PretrainedReport

#: (module, blocks, channels, stride of the first block, dilation, dropout) of the dilated A2 trunk.
STRUCTURE_38: tuple[tuple[str, int, tuple[int, ...], int, int, float], ...] = (
    ("mod2", 3, (128, 128), 1, 1, 0.0),
    ("mod3", 3, (256, 256), 1, 1, 0.0),
    ("mod4", 6, (512, 512), 2, 1, 0.0),
    ("mod5", 3, (512, 1024), 1, 2, 0.0),
    ("mod6", 1, (512, 1024, 2048), 1, 4, 0.3),
    ("mod7", 1, (1024, 2048, 4096), 1, 4, 0.5),
)


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm + ReLU as one module (keys ``0.weight`` …), the authors' ``norm_act``."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """Pre-activation block: ``out = convs(bn1(x)) + shortcut``.

    Args:
        in_channels: input channels.
        channels: two widths (two 3×3 convs) or three (1×1 → 3×3 → 1×1 bottleneck).
        stride: stride of the first conv (and of the projection).
        dilation: dilation of the 3×3 convs (padding = dilation).
        dropout: channel dropout (``Dropout2d``) before the last conv; 0 = none.

    ``forward``: B×in_channels×H×W → B×channels[-1]×H/stride×W/stride.
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], stride: int = 1, dilation: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(channels) not in (2, 3):
            raise ValueError(f"channels must hold two or three widths, got {channels}")
        self.bn1 = bn_relu(in_channels)
        convs: list[tuple[str, nn.Module]] = []
        if len(channels) == 2:
            convs += [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride, dilation, dilation, bias=False)),
                ("bn2", bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation, bias=False)),
            ]
        else:
            convs += [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride, bias=False)),
                ("bn2", bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation, bias=False)),
                ("bn3", bn_relu(channels[1])),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
        if dropout > 0:
            convs.insert(len(convs) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(convs))
        self.proj_conv = (
            nn.Conv2d(in_channels, channels[-1], 1, stride, bias=False)
            if stride != 1 or in_channels != channels[-1]
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.bn1(x)
        shortcut = self.proj_conv(act) if self.proj_conv is not None else x
        return self.convs(act) + shortcut


class WiderResNet38(nn.Module):
    """Dilated WideResNet-38-A2 trunk (output stride 8) with the authors' module names.

    ``forward(x)`` (B×3×H×W, ImageNet-normalised RGB) returns ``{"mod2": B×128×H/2×W/2, "mod5": B×1024×H/8×W/8,
    "mod7": B×4096×H/8×W/8}``: the three maps the authors' GFF model reads. H and W should be multiples of 8.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 64, 3, 1, 1, bias=False)))
        self.pool2 = nn.MaxPool2d(3, 2, 1)
        self.pool3 = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for name, blocks, channels, stride, dilation, dropout in STRUCTURE_38:
            units: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(blocks):
                units[f"block{i + 1}"] = IdentityResidualBlock(
                    in_channels, channels, stride if i == 0 else 1, dilation, dropout
                )
                in_channels = channels[-1]
            setattr(self, name, nn.Sequential(units))
        self.out_channels = {"mod2": 128, "mod5": 1024, "mod7": 4096}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        m2 = self.mod2(self.pool2(self.mod1(x)))
        m5 = self.mod5(self.mod4(self.mod3(self.pool3(m2))))
        return {"mod2": m2, "mod5": m5, "mod7": self.mod7(self.mod6(m5))}


def load_wider_resnet_imagenet(model: WiderResNet38, path: str | Path) -> PretrainedReport:
    """Load the ImageNet WideResNet-38-A2 trunk (mapillary ``wider_resnet38.pth.tar``, as DecoupleSegNets links it)
    into ``model``'s ``mod1..mod7`` from a local file (read with ``weights_only=True``).

    The classifier (``bn_out``, ``classifier.fc``) is ignored. Every trunk tensor must be in the file with the
    model's shape; the report is logged and kept as ``model.pretrained_report``.

    Raises:
        ValueError: the file lacks trunk tensors or holds other shapes.
    """
    from rgbd_seg_ros.models.checkpoints import read_state_dict

    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    own = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in _TRUNK_MODULES}
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in wanted if k not in state]
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or bad:
        detail = "; ".join(bad[:3]) or f"{len(missing)} trunk tensors missing, e.g. {missing[:3]}"
        raise ValueError(f"{path} is not an ImageNet WideResNet-38-A2 (mod1..mod7): {detail}")
    model.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    report = PretrainedReport(
        str(path), "WideResNet-38-A2 ImageNet (mapillary layout)", "WideResNet-38",
        loaded=len(wanted), ignored=sorted(k for k in state if k not in own),
    )  # fmt: skip
    report.log_to(model)
    return report


_TRUNK_MODULES = ("mod1", "mod2", "mod3", "mod4", "mod5", "mod6", "mod7")


__all__ = ["STRUCTURE_38", "IdentityResidualBlock", "WiderResNet38", "bn_relu", "load_wider_resnet_imagenet"]
