"""The authors' released checkpoints → our checkpoints with full metadata (``rgbd-seg convert``).

One conversion is: **read** the file (torch with ``weights_only=True``, or a TensorFlow 1 checkpoint with TensorFlow's
own reader, the optional ``[tf]`` extra) → **detect** the model from its key/shape signature (:func:`detect`) →
pick the authors' **release** it matches (:data:`RELEASES`: label set, test input size, paper mIoU) → **map** it onto
our model (the model's ``convert_official`` for torch files, its ``tf_variable_map`` for TF ones) → **check**
strictly (every source tensor used or listed as training-only, every target tensor filled, shapes equal) →
**write** one ``.safetensors`` whose metadata makes it run everywhere without options.

Where each release's values come from (the authors' repositories, read at the commits named in
``shared/research/official_code.md``):

* **SGNet** (LinZhuoChen/SGNet): 40 NYUv2 classes and single-scale testing from ``configs/sgnet*_nyud_test.json``;
  BGR minus the caffe means, no std, and depth as metric XYZ whose z guides the S-Convs, from
  ``data/transform/rgbd_transform.py``; full 480×640 frames from ``agents/sgnet_agent.py``. mIoU: paper Table /
  README (single scale).
* **SA-Gate** (charlesCXK/RGBD_Semantic_Segmentation_PyTorch): no released weights; the authors' training
  checkpoints (``epoch-N.pth``) convert. RGB and HHA /255 with ImageNet mean/std and 480×640 frames (sliding
  480² windows) from ``model/SA-Gate.nyu/config.py`` and ``furnace/engine/evaluator.py``.
* **ACNet** (anheidelonghu/ACNet): 480×640, RGB /255 with the NYUv2 mean/std and depth z-scored, from
  ``ACNet_data_nyuv2.py`` and ``ACNet_eval_nyuv2.py``; 40 classes.
* **GFF** (lxtGH/DecoupleSegNets): ImageNet mean/std from ``eval.py`` (``mean_std``); full 1024×2048 Cityscapes
  frames (the script slides 832² windows over them); 19 classes from ``datasets/cityscapes.py``.
* **AdapNet++ / SSMA** (DeepSceneSeg/AdapNet-pp, DeepSceneSeg/SSMA): raw 0–255 BGR (learned input BN) and 3-channel
  jet or HHA depth images from ``dataset/helper.py`` and the README; 768×384 from ``config/cityscapes_test.config``
  (2048×1024 and eASPP rates 6/12/18 for the 19-class Cityscapes models, README); classes incl. void from
  ``images/class_id.txt``; mIoU from the README tables (single scale, void excluded).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from rgbd_seg_ros.fileio import file_sha256
from rgbd_seg_ros.labels import available_label_sets, get_label_set
from rgbd_seg_ros.models.checkpoints import first_line, read_metadata, read_weights, save_checkpoint
from rgbd_seg_ros.models.registry import build_model, list_models
from rgbd_seg_ros.settings import OUTDOOR_DEPTH_RANGE_M

Shapes = Mapping[str, tuple[int, ...]]

_SGNET = "LinZhuoChen/SGNet README (Baidu Pan, password in the README)"
_SGNET_PROTOCOL = "configs/sgnet*_nyud_test.json, data/transform/rgbd_transform.py, agents/sgnet_agent.py"
_ADAPNET = "DeepSceneSeg/AdapNet-pp README, Models section"
_SSMA = "DeepSceneSeg/SSMA README, Models section"
_DEEPSCENE_PROTOCOL = "config/cityscapes_test.config (768×384), evaluate.py, dataset/helper.py, images/class_id.txt"


@dataclass(frozen=True)
class Release:
    """One set of weights the authors publish (or, for SA-Gate, the layout their training code writes).

    Attributes:
        name: our name for it, e.g. ``"acnet-r50-nyuv2"`` (``rgbd-seg convert --release``).
        model, backbone, num_classes, options: the :func:`~rgbd_seg_ros.models.build_model` arguments it loads into.
        label_set: a built-in label set (:mod:`rgbd_seg_ros.labels`).
        dataset: the dataset and split the mIoU was measured on.
        input_size: (height, width) of the authors' test protocol.
        miou: the mIoU the paper (or the release's README) reports for these weights, %; None when none is.
        miou_note: how it was measured, or why there is no figure.
        weights: where the authors publish the file (their repository's README).
        protocol: the authors' files that give the input size, normalisation and classes.
        released: False when the authors released no trained weights (the entry describes their training output).
        depth_range_m: valid depth (m) of the dataset's sensor when it is not the indoor default (outdoor stereo);
            stored in the checkpoint so every entry point keeps the far depth the model was trained with.
    """

    name: str
    model: str
    backbone: str
    num_classes: int
    label_set: str
    dataset: str
    input_size: tuple[int, int]
    miou: float | None
    miou_note: str
    weights: str
    protocol: str
    options: dict[str, Any] = field(default_factory=dict)
    released: bool = True
    depth_range_m: tuple[float, float] | None = None

    def matches(self, signature: Signature) -> bool:
        """Whether a file with ``signature`` can be this release (model, backbone, classes and detected options)."""
        same = (self.model, self.backbone, self.num_classes) == (
            signature.model,
            signature.backbone,
            signature.num_classes,
        )
        return same and all(self.options.get(k, v) == v for k, v in signature.options.items())


def _deepscene(model: str, dataset: str, classes: int, label_set: str, modality: str, miou: float | None) -> Release:
    pretty = {"cityscapes": "Cityscapes", "synthia": "Synthia", "sunrgbd": "SUN RGB-D", "scannet": "ScanNet v2",
              "forest": "Freiburg Forest", "cityscapes19": "Cityscapes"}[dataset]  # fmt: skip
    full_res = dataset == "cityscapes19"
    options: dict[str, Any] = {"modality": modality, "tf_padding": True}
    if model == "ssma":
        options["aux"] = False
    if full_res:
        options["easpp_rates"] = [6, 12, 18]
    tag = modality if model == "adapnet" else f"rgb-{modality}"
    return Release(
        name=f"{model}-{dataset}-{tag}",
        model=model,
        backbone="preact_resnet50",
        num_classes=classes,
        label_set=label_set,
        dataset=f"{pretty} val (void + {classes - 1} classes)",
        input_size=(1024, 2048) if full_res else (384, 768),
        miou=miou,
        miou_note=(
            "no figure in the README" if miou is None else "README, single scale at 768×384 on val, void excluded"
        ),
        weights=_ADAPNET if model == "adapnet" else _SSMA,
        protocol=_DEEPSCENE_PROTOCOL + (" (README: 2048×1024, eASPP 6/12/18)" if full_res else ""),
        options=options,
        depth_range_m=None if dataset in ("sunrgbd", "scannet") else OUTDOOR_DEPTH_RANGE_M,
    )


#: Every release we know. AdapNet++ "Depth" models take the jet-coloured depth image (``modality="jet"``).
RELEASES: tuple[Release, ...] = (
    Release("sgnet-r101-nyuv2", "sgnet", "resnet101", 40, "nyuv2-40", "NYUv2 test (654 images)", (480, 640), 49.8,
            "paper Table, single scale (51.1 multi-scale)", _SGNET + ": SGNet.pth.tar", _SGNET_PROTOCOL),
    Release("sgnet-r50-nyuv2", "sgnet", "resnet50", 40, "nyuv2-40", "NYUv2 test (654 images)", (480, 640), 47.7,
            "paper Table, single scale (48.6 multi-scale)", _SGNET + ": SGNet(Res50).pth.tar", _SGNET_PROTOCOL),
    Release("sgnet_aspp-r101-nyuv2", "sgnet_aspp", "resnet101", 40, "nyuv2-40", "NYUv2 test (654 images)", (480, 640),
            50.2, "paper Table, single scale (51.1 multi-scale)", _SGNET + ": SGNet_ASPP.pth.tar", _SGNET_PROTOCOL),
    Release("sagate-r101-nyuv2", "sagate", "resnet101", 40, "nyuv2-40", "NYUv2 test (654 images)", (480, 640), 52.4,
            "paper, multi-scale + flip (README: about 51.4 single scale)",
            "none: the authors released no trained weights (issue #3); this converts epoch-N.pth from their training "
            "code", "model/SA-Gate.nyu/config.py, furnace/engine/evaluator.py", released=False),
    Release("acnet-r50-nyuv2", "acnet", "resnet50", 40, "nyuv2-40", "NYUv2 test (654 images)", (480, 640), 48.3,
            "paper Table 1, single scale", "anheidelonghu/ACNet README (NYUDv2.zip): ckpt_epoch_1195.00.pth",
            "ACNet_data_nyuv2.py, ACNet_eval_nyuv2.py"),
    Release("gff-wrn38-cityscapes", "gff", "wider_resnet38", 19, "cityscapes-19", "Cityscapes val", (1024, 2048), None,
            "the paper reports ResNet-101 models only (81.2 val single scale); none for this released WideResNet-38",
            "lxtGH/DecoupleSegNets README, GFFNet_Betst (Google Drive)", "eval.py (mean_std, 832² sliding windows)"),
    _deepscene("adapnet", "cityscapes", 12, "deepscene-12", "rgb", 80.77),
    _deepscene("adapnet", "cityscapes", 12, "deepscene-12", "jet", 65.01),
    _deepscene("adapnet", "cityscapes", 12, "deepscene-12", "hha", 67.63),
    _deepscene("adapnet", "synthia", 12, "deepscene-12", "rgb", 86.68),
    _deepscene("adapnet", "synthia", 12, "deepscene-12", "jet", 87.87),
    _deepscene("adapnet", "sunrgbd", 38, "sunrgbd-38", "rgb", 37.98),
    _deepscene("adapnet", "sunrgbd", 38, "sunrgbd-38", "jet", 34.28),
    _deepscene("adapnet", "sunrgbd", 38, "sunrgbd-38", "hha", 34.59),
    _deepscene("adapnet", "scannet", 21, "scannet-21", "rgb", 52.92),
    _deepscene("adapnet", "scannet", 21, "scannet-21", "jet", 53.8),
    _deepscene("adapnet", "scannet", 21, "scannet-21", "hha", 54.19),
    _deepscene("adapnet", "forest", 6, "freiburg-forest-6", "rgb", 83.18),
    _deepscene("adapnet", "forest", 6, "freiburg-forest-6", "jet", 73.93),
    _deepscene("adapnet", "cityscapes19", 20, "cityscapes-20", "rgb", None),
    _deepscene("adapnet", "cityscapes19", 20, "cityscapes-20", "hha", None),
    _deepscene("ssma", "cityscapes", 12, "deepscene-12", "jet", 82.29),
    _deepscene("ssma", "cityscapes", 12, "deepscene-12", "hha", 82.64),
    _deepscene("ssma", "synthia", 12, "deepscene-12", "jet", 91.25),
    _deepscene("ssma", "sunrgbd", 38, "sunrgbd-38", "jet", 43.9),
    _deepscene("ssma", "sunrgbd", 38, "sunrgbd-38", "hha", 44.3),
    _deepscene("ssma", "scannet", 21, "scannet-21", "jet", 66.29),
    _deepscene("ssma", "scannet", 21, "scannet-21", "hha", 66.34),
    _deepscene("ssma", "forest", 6, "freiburg-forest-6", "jet", 83.81),
)  # fmt: skip


def get_release(name: str) -> Release:
    """The :data:`RELEASES` entry called ``name``; ValueError listing them otherwise."""
    for release in RELEASES:
        if release.name == name:
            return release
    raise ValueError(f"unknown release {name!r}; known: {', '.join(r.name for r in RELEASES)}")


# -- reading -----------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A file as read for conversion.

    Attributes:
        path: as given. kind: ``"torch"``, ``"safetensors"`` or ``"tensorflow"``.
        shapes: tensor name → shape (``module.`` and TF ``:0`` suffixes removed).
        get: name → tensor (TF values are read on demand).
        extras: entries beside the weights (optimiser state, epoch, …) → description; never loaded.
        files: the files that hold the weights (a TF checkpoint has an index and data shards).
    """

    path: Path
    kind: str
    shapes: dict[str, tuple[int, ...]]
    get: Callable[[str], Any]
    extras: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def tf_checkpoint_prefix(path: str | Path) -> Path | None:
    """The TensorFlow checkpoint prefix that ``path`` names (the prefix itself, its ``.index`` / ``.data-*`` /
    ``.meta`` file, or a folder whose ``checkpoint`` file points at one), or None when it names no TF checkpoint."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if not state.is_file():
            return None
        match = re.search(r'^model_checkpoint_path:\s*"(.+)"', state.read_text(errors="replace"), re.MULTILINE)
        if not match:
            return None
        path = path / match.group(1)
    name = path.name
    for suffix in (".index", ".meta"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    name = name.split(".data-")[0]
    prefix = path.with_name(name)
    return prefix if prefix.with_name(name + ".index").is_file() else None


def _read_tensorflow(prefix: Path) -> Source:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch._dynamo  # noqa: F401  (imported after TensorFlow, torch's compiler stack crashes the process)

    try:
        import tensorflow as tf
    except ImportError:
        raise ValueError(
            f"{prefix} is a TensorFlow checkpoint (AdapNet++/SSMA); reading it needs TensorFlow's own reader, an "
            "optional extra: pip install 'rgbd_seg_ros[tf]' (or: pip install tensorflow-cpu), then run this again"
        ) from None
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as exc:  # TF raises its own error types (DataLoss, NotFound): re-raised with the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{prefix} is not a readable TensorFlow checkpoint (truncated?): {first}") from exc
    names = {n.removesuffix(":0"): n for n in reader.get_variable_to_shape_map()}
    shapes = {k: tuple(int(d) for d in reader.get_variable_to_shape_map()[n]) for k, n in names.items()}
    files = [*sorted(prefix.parent.glob(prefix.name + ".data-*")), prefix.with_name(prefix.name + ".index")]
    return Source(prefix, "tensorflow", shapes, lambda k: reader.get_tensor(names[k]), files=files)


def read_source(path: str | Path) -> Source:
    """Read an authors' checkpoint: a torch file (``weights_only=True``), a ``.safetensors`` file or a TF checkpoint.

    Raises:
        FileNotFoundError: nothing at ``path``. ValueError: unreadable, pickled code, or TensorFlow missing.
    """
    path = Path(path)
    prefix = tf_checkpoint_prefix(path)
    if prefix is not None:
        return _read_tensorflow(prefix)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    weights = read_weights(path)
    state = {k.removeprefix("module."): v for k, v in weights.state.items()}
    kind = "safetensors" if path.suffix == ".safetensors" else "torch"
    return Source(path, kind, {k: tuple(v.shape) for k, v in state.items()}, state.__getitem__, weights.extras, [path])


# -- detection ---------------------------------------------------------------------------------------------------


@dataclass
class Signature:
    """What the keys and shapes of a file say: which of our models, backbone, classes and detectable options."""

    family: str
    model: str
    backbone: str
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.family} ({self.model}, {self.backbone}, {self.num_classes} classes)"


class DetectionError(ValueError):
    """The file's signature fits none of the known layouts, or is incomplete; the message says what to pass."""


def _blocks(shapes: Shapes, prefix: str) -> list[int]:
    """Blocks per stage of a ResNet whose stage ``i`` keys start ``{prefix}layer{i}.{j}.``."""
    counts = []
    for i in range(1, 5):
        pattern = re.compile(rf"^{re.escape(prefix)}layer{i}\.(\d+)\.")
        counts.append(1 + max((int(m.group(1)) for k in shapes if (m := pattern.match(k))), default=-1))
    return counts


def _resnet(shapes: Shapes, prefix: str = "") -> str:
    """``resnet18/34/50/101/152`` from the block counts and block type of the stages under ``prefix``."""
    blocks = tuple(_blocks(shapes, prefix))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in shapes
    names = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50 if bottleneck else 34, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
    if blocks not in names:
        raise DetectionError(f"ResNet stages with {blocks} blocks under '{prefix}layer1..4' match no ResNet depth")
    return f"resnet{names[blocks]}"


def _classes(shapes: Shapes, key: str, dim: int = 0) -> int:
    if key not in shapes:
        raise DetectionError(f"no classifier tensor {key!r}, so the class count is unknown")
    return int(shapes[key][dim])


def _has(shapes: Shapes, pattern: str) -> bool:
    regex = re.compile(pattern)
    return any(regex.search(k) for k in shapes)


def detect(shapes: Shapes) -> Signature:
    """Identify an authors' checkpoint (or one of our own plain state dicts) from its tensor names and shapes.

    Signatures: SGNet (``layerN.i.conv2.offset_generator`` S-Convs; ``dsn4`` FCN head or SGNet* ``head.0.*`` ASPP),
    SA-Gate (``backbone.sagates.*``), ACNet (``layer1_m``, ``atten_rgb_*``), GFF as released (``mod1.conv1``,
    ``gff_head.*``), our GFF (``decoder.head.gff.*`` / ``decoder.ppm.*``), AdapNet++ (TF ``resnet_v2_50/conv0``)
    and SSMA (TF ``rgb/resnet_v2_50/`` + ``depth/resnet_v2_50/``). The ResNet depth comes from the block counts,
    the class count from the classifier's shape.

    Raises:
        DetectionError: no known signature, or a known one with a part missing (the message says which).
    """
    if "rgb/resnet_v2_50/conv0/BatchNorm/gamma" in shapes and "depth/resnet_v2_50/conv0/BatchNorm/gamma" in shapes:
        options = {"tf_padding": True, "aux": "conv911/weights" in shapes}  # the released fusion models have none
        k = _classes(shapes, "conv5/weights", 3)
        return Signature("SSMA (TensorFlow)", "ssma", "preact_resnet50", k, options, ["rgb/ and depth/ experts"])
    if "resnet_v2_50/conv0/BatchNorm/gamma" in shapes and "resnet_v2_50/conv5/weights" in shapes:
        k = _classes(shapes, "resnet_v2_50/conv5/weights", 3)
        options = {"tf_padding": True, **({} if "resnet_v2_50/conv911/weights" in shapes else {"aux": False})}
        return Signature("AdapNet++ (TensorFlow)", "adapnet", "preact_resnet50", k, options, ["resnet_v2_50/conv0"])
    if "resnet_v2_50/conv1/weights" in shapes:
        raise DetectionError(
            "a TF ResNet-50 with no AdapNet++ input BN (conv0) or decoder (conv5): an ImageNet initialisation such "
            "as AdapNet_pp_init.ckpt, not a trained model"
        )
    if _has(shapes, r"^layer\d\.\d+\.conv2\.offset_generator\.weight$"):
        aspp = "head.0.bottleneck.0.weight" in shapes
        if not aspp and "dsn4.0.weight" not in shapes:
            raise DetectionError("S-Conv keys (SGNet) but neither the dsn4 FCN head nor the SGNet* head.0 ASPP")
        k = _classes(shapes, "head.1.weight" if aspp else "dsn4.3.weight")
        name = "sgnet_aspp" if aspp else "sgnet"
        return Signature("SGNet*" if aspp else "SGNet", name, _resnet(shapes), k, {}, ["S-Conv offset generators"])
    if _has(shapes, r"^backbone\.sagates\.0\."):
        k = _classes(shapes, "head.classify.weight")
        stem = "deep" if "backbone.conv1.0.weight" in shapes or "backbone.conv2.weight" in shapes else "torchvision"
        options = {} if stem == "deep" else {"stem": "torchvision"}
        return Signature("SA-Gate", "sagate", _resnet(shapes, "backbone."), k, options, ["backbone.sagates.*"])
    if "layer1_m.0.conv1.weight" in shapes and "atten_rgb_0.1.weight" in shapes:
        k = _classes(shapes, "final_deconv.weight", 1)
        return Signature("ACNet", "acnet", _resnet(shapes), k, {}, ["layer1_m.*", "atten_rgb_*"])
    if "mod1.conv1.weight" in shapes and _has(shapes, r"^gff_head\."):
        k = _classes(shapes, "gff_head.cls.6.weight")
        return Signature("GFF as released", "gff", "wider_resnet38", k, {}, ["mod1..mod7", "gff_head.*"])
    if _has(shapes, r"^decoder\.ppm\.") and "backbone.conv1.weight" in shapes:
        psp = "decoder.classifier.weight" in shapes
        k = _classes(shapes, "decoder.classifier.weight" if psp else "decoder.head.classifier.weight")
        options: dict[str, Any] = {}
        if psp:
            options["head"] = "psp"
        elif not _has(shapes, r"^decoder\.head\.dfp\."):
            options["head"] = "gff"
        if not psp and shapes.get("decoder.head.gff.gate_convs.0.weight", (1,))[0] > 1:
            options["gate"] = "channel"
        if "backbone.conv2.weight" in shapes:
            options["stem"] = "deep"
        return Signature("GFF (our layout)", "gff", _resnet(shapes, "backbone."), k, options, ["decoder.ppm.*"])
    known = "SGNet/SGNet*, SA-Gate, ACNet, GFF (released or ours), AdapNet++, SSMA"
    raise DetectionError(
        f"its {len(shapes)} tensors match none of the known layouts ({known}); e.g. {sorted(shapes)[:4]}"
    )


# -- conversion ----------------------------------------------------------------------------------------------------

#: TF variables that only training writes: Adam slots, its beta powers, the step counter.
_TF_TRAINING_ONLY = re.compile(r"(/Adam(_1)?$|^beta[12]_power(_\d+)?$|^global_step$|/ExponentialMovingAverage$)")


@dataclass
class ConversionReport:
    """What a conversion used, ignored and wrote."""

    source: str
    release: str | None
    model: str
    backbone: str
    num_classes: int
    tensors: int  # target tensors filled from the file
    source_tensors: int
    parameters: int
    ignored: dict[str, str] = field(default_factory=dict)  # source entries not loaded → why
    folded: list[str] = field(default_factory=list)  # source tensors checked and dropped by the model's conversion

    def lines(self) -> list[str]:
        head = f"{self.source}: {self.model} ({self.backbone}, {self.num_classes} classes"
        head += f", release {self.release})" if self.release else ")"
        lines = [
            head,
            f"  {self.source_tensors} source tensors → {self.tensors} model tensors, all shapes checked; "
            f"{self.parameters / 1e6:.2f} M parameters",
        ]
        if self.folded:
            lines.append(f"  {len(self.folded)} folded away by the conversion (checked): {_short(self.folded)}")
        if self.ignored:
            lines.append(f"  ignored (training-only): {_short([f'{k} ({v})' for k, v in self.ignored.items()])}")
        return lines


def _short(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items)} in all)" if len(items) > n else "")


def _map_torch(model: nn.Module, source: Source) -> tuple[dict[str, Tensor], list[str], dict[str, str]]:
    convert = getattr(model, "convert_official", None) or dict  # no authors' layout: the file is in ours
    state = {k: source.get(k) for k in source.shapes}
    out = convert(dict(state))
    folded = []
    if len(out) < len(state):  # which source keys the conversion dropped: convert them one at a time
        folded = sorted(k for k, v in state.items() if not convert({k: v}))
    return out, folded, {}


def _map_tensorflow(model: nn.Module, source: Source) -> tuple[dict[str, Tensor], list[str], dict[str, str]]:
    from rgbd_seg_ros.models.adapnet import tf_to_torch

    mapping = getattr(model, "tf_variable_map", None)
    if mapping is None:
        raise ValueError(f"{type(model).__name__} has no tf_variable_map(); TensorFlow checkpoints are AdapNet++/SSMA")
    mapping = mapping()
    absent = sorted({v.name for v in mapping.values() if v.name not in source.shapes})
    if absent:
        raise ValueError(
            f"{source.path} lacks {len(absent)} variables that {type(model).__name__} needs, e.g. {absent[:4]}"
        )
    out = {key: tf_to_torch(source.get(var.name), var) for key, var in mapping.items()}
    used = {v.name for v in mapping.values()}
    ignored = {
        n: "optimiser/step state" for n in sorted(source.shapes) if n not in used and _TF_TRAINING_ONLY.search(n)
    }
    unused = sorted(n for n in source.shapes if n not in used and n not in ignored)
    if unused:
        raise ValueError(f"{source.path} holds {len(unused)} variables the model has no place for, e.g. {unused[:4]}")
    return out, [], ignored


def load_strict(model: nn.Module, source: Source) -> ConversionReport:
    """Map ``source`` onto ``model`` and load it, strictly: every source tensor used (or a training-only entry,
    reported), every model tensor filled (BatchNorm's ``num_batches_tracked`` excepted), every shape equal.

    Raises:
        ValueError: naming the unmatched keys or the first differing shapes.
    """
    mapper = _map_tensorflow if source.kind == "tensorflow" else _map_torch
    state, folded, ignored = mapper(model, source)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
    name = type(model).__name__
    if shapes:
        raise ValueError(f"{source.path} does not fit {name}: {'; '.join(shapes[:4])}")
    if unexpected or missing:
        raise ValueError(
            f"{source.path} does not match {name}: {len(unexpected)} file tensors without a place {unexpected[:4]}, "
            f"{len(missing)} model tensors not in the file {missing[:4]}"
        )
    model.load_state_dict(state, strict=False)
    ignored = {**source.extras, **ignored}
    return ConversionReport(
        source=source.path.name,
        release=None,
        model=model.config["name"] if hasattr(model, "config") else name,
        backbone=model.config["backbone"] if hasattr(model, "config") else "",
        num_classes=model.config["num_classes"] if hasattr(model, "config") else 0,
        tensors=len(state),
        source_tensors=len(source.shapes),
        parameters=sum(p.numel() for p in model.parameters()),
        ignored=ignored,
        folded=folded,
    )


def _pass_release(candidates: list[Release]) -> str:
    return "; ".join(f"--release {r.name}" for r in candidates)


def choose_release(
    signature: Signature,
    release: str | None = None,
    label_set: str | None = None,
    modality: str | None = None,
) -> Release | None:
    """The release a detected file is: ``release`` if named (checked against the signature), else the only
    :data:`RELEASES` entry that fits the signature, ``label_set`` and ``modality``; None when none fits (the file
    is someone's own training output).

    Raises:
        ValueError: the named release does not fit, or several fit (the message lists the ``--release`` choices).
    """
    if release is not None:
        chosen = get_release(release)
        if not chosen.matches(signature):
            raise ValueError(
                f"release {chosen.name} is {chosen.model} ({chosen.backbone}, {chosen.num_classes} classes), but the "
                f"file is {signature.describe()}"
            )
        return chosen
    candidates = [r for r in RELEASES if r.matches(signature)]
    if label_set is not None:
        candidates = [r for r in candidates if r.label_set == get_label_set(label_set).name]
    if modality is not None:
        candidates = [r for r in candidates if r.options.get("modality") == modality]
    if len(candidates) > 1:
        raise ValueError(
            f"it is {signature.describe()}, which fits {len(candidates)} releases (the weights do not say the "
            f"dataset or input modality); pass one of: {_pass_release(candidates)}"
        )
    return candidates[0] if candidates else None


def _label_set_for(num_classes: int, requested: str | None) -> str:
    if requested is not None:
        chosen = get_label_set(requested)
        if chosen.num_classes != num_classes:
            raise ValueError(f"label set {chosen.name} has {chosen.num_classes} classes, the file {num_classes}")
        return chosen.name
    fits = [n for n in available_label_sets() if n != "synthetic" and get_label_set(n).num_classes == num_classes]
    if len(fits) != 1:
        choices = ", ".join(fits) if fits else "none built in"
        raise ValueError(
            f"the file predicts {num_classes} classes: pass --label-set NAME (with {num_classes}: {choices})"
        )
    return fits[0]


@dataclass
class Conversion:
    """A finished conversion: the file written, its metadata (as stored, model fields included) and the report."""

    path: Path
    metadata: dict[str, Any]
    report: ConversionReport


def convert(
    src: str | Path,
    out: str | Path,
    *,
    release: str | None = None,
    model: str | None = None,
    backbone: str | None = None,
    num_classes: int | None = None,
    label_set: str | None = None,
    modality: str | None = None,
    force: bool = False,
) -> Conversion:
    """Convert an authors' checkpoint ``src`` into our checkpoint ``out`` (``.safetensors``) with full metadata.

    Without ``model``, the file's signature decides the model, backbone and class count (:func:`detect`) and the
    release catalogue the rest; ``model``/``backbone``/``num_classes`` override detection (for files it cannot
    read), ``label_set``/``modality`` narrow the release, ``release`` names it outright.

    The metadata holds the model, backbone, options and InputSpec (from the model), ``label_set`` and its
    ``class_names``, the test ``input_size`` of the authors' protocol, ``source`` (file names and SHA-256),
    ``reported_miou`` and the ``conversion`` report.

    Raises:
        FileNotFoundError, ValueError (DetectionError included): the message names the file and what to pass.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {out}")
    if out.exists() and not force:
        raise ValueError(f"{out} exists already; choose another path, remove it, or pass --force")
    source = read_source(src)
    try:
        signature = detect(source.shapes)
    except DetectionError as exc:
        if model is None or num_classes is None:
            raise DetectionError(
                f"{source.path}: cannot tell which model this is: {exc}. Pass --model NAME --backbone NAME "
                f"--num-classes K (models: {', '.join(list_models())})"
            ) from None
        signature = Signature("given on the command line", model, backbone or "", num_classes)
    if model is not None:
        signature.model = model
    if backbone is not None:
        signature.backbone = backbone
    if num_classes is not None:
        signature.num_classes = num_classes
    chosen = choose_release(signature, release, label_set, modality)
    options = {**(chosen.options if chosen else {}), **signature.options}
    if chosen is None and modality is not None:
        options["modality"] = modality
    if chosen is None and signature.model in ("adapnet", "ssma") and "modality" not in options:
        raise ValueError(
            f"{source.path} is {signature.describe()}; its input modality is not in the weights: pass --modality "
            f"{'rgb|jet|hha' if signature.model == 'adapnet' else 'jet|hha'}"
        )
    label = chosen.label_set if chosen else _label_set_for(signature.num_classes, label_set)
    target = build_model(signature.model, signature.num_classes, backbone=signature.backbone or None, **options)
    report = load_strict(target, source)
    report.release = chosen.name if chosen else None
    labels = get_label_set(label)
    files = [{"name": f.name, "sha256": file_sha256(f)} for f in source.files]
    metadata: dict[str, Any] = {
        "label_set": labels.name,
        "class_names": list(labels.class_names),
        "release": chosen.name if chosen else None,
        "source": {"format": source.kind, "files": files, "weights_from": chosen.weights if chosen else None},
        "reported_miou": None,
        "conversion": {"tensors": report.tensors, "ignored": sorted(report.ignored), "folded": report.folded},
    }
    if chosen is not None:
        metadata["input_size"] = list(chosen.input_size)
        metadata["test_protocol"] = chosen.protocol
        metadata["reported_miou"] = {"value": chosen.miou, "dataset": chosen.dataset, "note": chosen.miou_note}
        if chosen.depth_range_m is not None:
            metadata["depth_range_m"] = list(chosen.depth_range_m)
    path = save_checkpoint(target.eval(), out, metadata)
    return Conversion(path, read_metadata(path), report)


def convert_command(path: str | Path) -> str:
    """The ``rgbd-seg convert`` command for a file that is not our checkpoint, as one sentence (never raises).

    Used by :func:`~rgbd_seg_ros.models.checkpoints.load_checkpoint` when it is handed an authors' file.
    """
    path = Path(path)
    prefix = tf_checkpoint_prefix(path)
    shown = prefix or path
    out = path.with_suffix(".safetensors")
    out = out.with_stem(f"{out.stem}_converted") if out == path else out  # never suggest writing onto the input
    try:
        source = read_source(path)
        signature = detect(source.shapes)
    except Exception as exc:  # any reason: the hint must not hide the caller's own error
        if prefix is not None:
            return (
                f"it is a TensorFlow checkpoint (AdapNet++/SSMA releases): convert it once with "
                f"`rgbd-seg convert {shown} -o {shown.parent / 'converted.safetensors'}` ({first_line(exc)})"
            )
        return (
            "if it is an authors' release, convert it once with "
            f"`rgbd-seg convert {path} -o {out}` (README, Model zoo)"
        )
    extra, name = "", out.name
    try:
        chosen = choose_release(signature)
        if chosen is not None:
            name = f"{chosen.name}.safetensors"
    except ValueError:
        candidates = [r for r in RELEASES if r.matches(signature)]
        extra = f" --release {candidates[0].name}  (or: {', '.join(r.name for r in candidates[1:])})"
    return (
        f"it is the authors' {signature.describe()} checkpoint, not an rgbd_seg_ros one: convert it once with "
        f"`rgbd-seg convert {shown} -o {shown.parent / name}{extra}`"
    )


__all__ = [
    "RELEASES",
    "Conversion",
    "ConversionReport",
    "DetectionError",
    "Release",
    "Signature",
    "Source",
    "choose_release",
    "convert",
    "convert_command",
    "detect",
    "get_release",
    "load_strict",
    "read_source",
    "tf_checkpoint_prefix",
]
