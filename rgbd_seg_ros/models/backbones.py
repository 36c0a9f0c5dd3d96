"""Dilated ResNet-18/34/50/101 backbones with the torchvision 7×7 stem or the deep 3×3 ("v1c") stem.

State-dict keys follow torchvision / the SGNet (CCNet) code so ImageNet weights load by name:

* torchvision stem: ``conv1``, ``bn1``;  deep stem: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``
  (3→w/2 stride 2, w/2→w/2, w/2→w, with ``w = 2 * stem_width``; the SGNet/SA-Gate authors use 64, 64, 128);
* stages ``layer1``..``layer4``; blocks ``layerN.i.{conv1,bn1,conv2,bn2[,conv3,bn3]}``, projection
  shortcut ``layerN.0.downsample.{0,1}``.

Output stride 32/16/8 turns the strides of layer4 (and layer3) into dilations, DeepLab-style.
Pretrained weights load only from a local file (:func:`load_pretrained`); nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]
LOG = logging.getLogger("rgbd_seg_ros")

_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution without bias, padded to keep the size (``padding = dilation``)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3×3 → 3×3 with identity or projection shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101 block (v1.5: stride on the 3×3): 1×1 → 3×3 → 1×1 (×4) with shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm_layer(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def stage_strides(output_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of layer1..layer4 for a total output stride of 8, 16 or 32."""
    table = {
        32: ((1, 1), (2, 1), (2, 1), (2, 1)),
        16: ((1, 1), (2, 1), (2, 1), (1, 2)),
        8: ((1, 1), (2, 1), (1, 2), (1, 4)),
    }
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


class ResNet(nn.Module):
    """A (dilated) ResNet trunk returning the four stage outputs.

    Args:
        depth: 18, 34, 50, 101 or 152.
        stem: ``"torchvision"`` (7×7 stride-2 conv) or ``"deep"`` (three 3×3 convs, the "v1c" stem).
        output_stride: 8, 16 or 32 (see :func:`stage_strides`), unless ``stages`` is given.
        stages: explicit ``(stride, dilation)`` per stage, overriding ``output_stride``.
        multi_grid: per-block dilation multipliers of layer4 (DeepLabV3 "multi-grid"), e.g. (1, 2, 4).
        in_channels: input channels of the stem (3 for RGB, 1 for a depth branch).
        stem_width: width of the first deep-stem convs (the stem outputs ``2 * stem_width`` channels).
        width: channels of layer1's 3×3 convs (64 in every ResNet; stages use w, 2w, 4w, 8w and the 7×7 stem
            outputs w). Smaller values give compact trunks for CPU robots (no ImageNet weights fit them).
        block_factory: builds each block as ``factory(stage, index, inplanes, planes, stride, dilation,
            downsample)``; lets a model swap a block type (e.g. S-Conv bottlenecks) while keeping keys.

    ``forward(x)`` takes B×C×H×W and returns ``[c1, c2, c3, c4]`` (layer1..layer4 outputs).
    """

    def __init__(
        self,
        depth: int = 50,
        stem: str = "torchvision",
        output_stride: int = 32,
        stages: Sequence[tuple[int, int]] | None = None,
        multi_grid: Sequence[int] = (1, 1, 1),
        in_channels: int = 3,
        stem_width: int = 32,
        width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
        block_factory: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(_LAYERS)}, got {depth}")
        self.depth = depth
        self.block = BasicBlock if depth < 50 else Bottleneck
        self.stem_type = stem
        self.norm_layer = norm_layer
        self.relu = nn.ReLU(inplace=True)
        if stem == "torchvision":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(width)
            self.inplanes = width
        elif stem == "deep":
            self.conv1 = conv3x3(in_channels, stem_width * 2, stride=2)
            self.bn1 = norm_layer(stem_width * 2)
            self.conv2 = conv3x3(stem_width * 2, stem_width * 2)
            self.bn2 = norm_layer(stem_width * 2)
            self.conv3 = conv3x3(stem_width * 2, stem_width * 4)
            self.bn3 = norm_layer(stem_width * 4)
            self.inplanes = stem_width * 4
        else:
            raise ValueError(f"stem must be 'torchvision' or 'deep', got {stem!r}")
        self.stem_channels = self.inplanes
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stages = tuple(stages) if stages is not None else stage_strides(output_stride)
        self.output_stride = 4 * math.prod(s for s, _ in self.stages)  # plain ints: works under torch.device('meta')
        factory = block_factory or self._default_block
        widths = (width, 2 * width, 4 * width, 8 * width)
        for i, (planes, n, (stride, dilation)) in enumerate(zip(widths, _LAYERS[depth], self.stages)):
            grid = multi_grid if i == 3 else (1,) * n
            layer = self._make_layer(i + 1, factory, planes, n, stride, dilation, grid)
            setattr(self, f"layer{i + 1}", layer)
        self.out_channels = tuple(w * self.block.expansion for w in widths)

    def _default_block(
        self, stage: int, index: int, inplanes: int, planes: int, stride: int, dilation: int, downsample
    ) -> nn.Module:
        return self.block(inplanes, planes, stride, dilation, downsample, self.norm_layer)

    def _make_layer(
        self,
        stage: int,
        factory: Callable[..., nn.Module],
        planes: int,
        blocks: int,
        stride: int,
        dilation: int,
        grid: Sequence[int],
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * self.block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * self.block.expansion, 1, stride=stride, bias=False),
                self.norm_layer(planes * self.block.expansion),
            )
        layers = []
        for j in range(blocks):
            layers.append(
                factory(
                    stage,
                    j,
                    self.inplanes,
                    planes,
                    stride if j == 0 else 1,
                    dilation * grid[j % len(grid)],
                    downsample if j == 0 else None,
                )
            )
            self.inplanes = planes * self.block.expansion
        return nn.Sequential(*layers)

    def forward_stem(self, x: Tensor) -> Tensor:
        """Stem convs + max-pool: B×C×H×W → B×stem_channels×H/4×W/4."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem_type == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.forward_stem(x)
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


def resnet(depth: int, pretrained: str | Path | None = None, **kwargs) -> ResNet:
    """Build :class:`ResNet` (``kwargs`` as there) and optionally load ImageNet weights from a local file."""
    model = ResNet(depth, **kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


@dataclass
class PretrainedReport:
    """What an ImageNet initialisation loaded: the file's layout (identified by its keys) and the tensor counts.

    ``str(report)`` is the one-line report that training prints; :func:`pretrained_reports` collects them.
    """

    path: str
    layout: str  # e.g. "torchvision ResNet-50", "TorchSeg deep-stem (v1c) ResNet-101"
    target: str  # e.g. "ResNet-101 (deep stem)"
    loaded: int = 0  # tensors copied
    ignored: list[str] = field(default_factory=list)  # file keys the model has no use for (e.g. fc.*)
    missing: list[str] = field(default_factory=list)  # model keys the file did not provide (left at random init)

    def __str__(self) -> str:
        text = f"pretrained {Path(self.path).name}: {self.layout} → {self.target}, {self.loaded} tensors loaded"
        if self.ignored:
            text += f"; {len(self.ignored)} ignored ({_summary(self.ignored)})"
        if self.missing:
            text += f"; {len(self.missing)} not in the file, left at random init ({_summary(self.missing)})"
        return text

    def log_to(self, module: nn.Module) -> None:
        """Keep the report on ``module`` (for :func:`pretrained_reports`) and log it at INFO."""
        module.pretrained_report = self
        LOG.info("%s", self)


def _summary(keys: Sequence[str], n: int = 3) -> str:
    """``a, b, c, …`` of the distinct top-level prefixes of ``keys``."""
    heads = list(dict.fromkeys(k.rsplit(".", 1)[0] + ".*" for k in keys))
    return ", ".join(heads[:n]) + (", …" if len(heads) > n else "")


def pretrained_reports(model: nn.Module) -> list[PretrainedReport]:
    """Every :class:`PretrainedReport` left on ``model``'s submodules by a ``pretrained=`` build, in module order."""
    return [
        m.pretrained_report
        for m in model.modules()
        if isinstance(getattr(m, "pretrained_report", None), PretrainedReport)
    ]


def identify_resnet_layout(state: dict[str, Tensor]) -> str:
    """Name the ImageNet ResNet layout of ``state`` from its keys and shapes (``module.`` already stripped).

    * ``conv1.0.weight`` (a Sequential stem) → TorchSeg deep-stem "v1c" (``resnet101_v1c.pth``, SA-Gate's start);
    * flat ``conv1``/``conv2``/``conv3`` 3×3 stem → deep-stem CCNet/SGNet toolbox (``resnet101-imagenet.pth``);
    * a 7×7 ``conv1`` → torchvision (``resnet50-19c8e357.pth``, ACNet's start).

    Raises:
        ValueError: no ResNet stem among the keys.
    """
    blocks = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("layer3.")), default=-1)
    depth = {2: 18, 6: 50, 23: 101, 36: 152}.get(blocks, f"?({blocks} layer3 blocks)")
    if blocks == 6 and "layer1.0.conv3.weight" not in state:
        depth = 34
    if "conv1.0.weight" in state:
        return f"TorchSeg deep-stem (v1c) ResNet-{depth}"
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.dim() == 4 and conv1.shape[-1] == 3 and "conv3.weight" in state:
        return f"deep-stem ResNet-{depth} (CCNet/SGNet toolbox layout)"
    if conv1 is not None and conv1.dim() == 4 and conv1.shape[-1] == 7:
        return f"torchvision ResNet-{depth}"
    raise ValueError(
        f"no ResNet stem (conv1.weight or conv1.0.weight) among its {len(state)} keys, e.g. {sorted(state)[:3]}"
    )


def load_pretrained(model: ResNet, path: str | Path) -> list[str]:
    """Load ImageNet weights from a local ``.pth``/``.safetensors`` file into ``model``.

    Accepts torchvision checkpoints (``conv1``, ``bn1``, ``layerN…``, ``fc`` ignored), the deep-stem
    checkpoints of the SGNet/CCNet toolbox (same flat names) and TorchSeg "v1c" checkpoints
    (``conv1.{0,1,3,4,6}`` + ``bn1``, e.g. ``resnet101_v1c.pth``), with or without ``module.``/``state_dict``
    wrapping; the layout is identified from the keys (:func:`identify_resnet_layout`). A 1-channel stem (depth
    branch) is initialised with the mean of the RGB kernel over its input channels. The
    :class:`PretrainedReport` is logged and kept on ``model.layer1`` (see :func:`pretrained_reports`).

    Returns:
        Model keys that the file did not provide (the caller decides whether that is acceptable).

    Raises:
        FileNotFoundError: no such file. ValueError: the file does not hold weights of this architecture (a
        7×7-stem file for a deep-stem model and vice versa included).
    """
    from rgbd_seg_ros.models.checkpoints import read_state_dict

    path = Path(path)
    state = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = f"ResNet-{model.depth} ({model.stem_type} stem)"
    try:
        layout = identify_resnet_layout(state)
    except ValueError as exc:
        raise ValueError(f"{path} is not an ImageNet ResNet for {target}: {exc}") from None
    deep_file = "deep-stem" in layout
    if deep_file != (model.stem_type == "deep"):
        want = "stem='deep'" if deep_file else "stem='torchvision'"
        raise ValueError(f"{path} holds a {layout}, but the model has the {model.stem_type} stem: build it with {want}")
    state = _v1c_to_flat(state)
    own = model.state_dict()
    loaded, mismatched = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        target_tensor = own[key]
        if key == "conv1.weight" and value.shape[1] != target_tensor.shape[1] and target_tensor.shape[1] == 1:
            value = value.mean(dim=1, keepdim=True)
        if value.shape != target_tensor.shape:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target_tensor.shape)}")
            continue
        loaded[key] = value
    if mismatched or not loaded:
        detail = "; ".join(mismatched[:5]) or "no parameter names in common"
        raise ValueError(f"{path} ({layout}) does not hold weights for {target}: {detail}")
    model.load_state_dict(loaded, strict=False)
    missing = sorted(k for k in own if k not in loaded and not k.endswith("num_batches_tracked"))
    ignored = sorted(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
    # kept on layer1, which every model that borrows this trunk's stages holds (ACNet copies its branches' stages)
    PretrainedReport(str(path), layout, target, len(loaded), ignored, missing).log_to(model.layer1)
    return missing


def _v1c_to_flat(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """TorchSeg v1c stem keys (``conv1.0``, ``conv1.1`` BN, ``conv1.3``, ``conv1.4``, ``conv1.6``, ``bn1``) → flat."""
    if "conv1.0.weight" not in state:
        return state
    mapping = {"conv1.0.": "conv1.", "conv1.1.": "bn1.", "conv1.3.": "conv2.", "conv1.4.": "bn2.", "conv1.6.": "conv3."}
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith("bn1."):
            new = "bn3." + key[4:]
        for old, repl in mapping.items():
            if key.startswith(old):
                new = repl + key[len(old) :]
        out[new] = value
    return out
