"""Training recipes as data: a typed YAML loader with ``key=value`` command-line overrides.

A recipe is a YAML file with the sections below (every key optional; defaults in the dataclasses). A recipe
may start from another with ``base: other.yaml`` (path relative to the recipe; nested sections merge, the
recipe's values win). Overrides name a key by its dotted path (``optim.lr=0.01``,
``model.options.sconv_stages=[1,2]``) or, when the name is unique across sections, by its bare name
(``max_iters=100``, ``out_dir=runs/x``); values are parsed as YAML and checked against the field's type.

Batch sizes are *global* (images per optimiser step): the per-process micro-batch is
``batch_size / (world_size × accum_steps)``, so a recipe means the same training on 1 GPU, 8 GPUs or a CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml


@dataclass(frozen=True)
class Range:
    """The values a number setting (or each number of a list setting) may take: ``lo ≤ v ≤ hi``, with strict
    bounds where ``open_lo`` / ``open_hi``; None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.open_lo else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.open_hi else '<='} {self.hi:g}"
        return f"in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"

    def contains(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.open_lo else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)
        return above and below


# Annotations of number settings (``Annotated[int, AT_LEAST_1]``), checked when a recipe is read.
AT_LEAST_0 = Range(lo=0)
AT_LEAST_1 = Range(lo=1)
POSITIVE = Range(lo=0, open_lo=True)
FRACTION = Range(lo=0, hi=1)


@dataclass
class ModelConfig:
    """What to train.

    Attributes:
        name: registry name (``rgbd_seg_ros.models.list_models()``).
        backbone: e.g. ``resnet101``; None = the model's default.
        label_set: ``rgbd_seg_ros.labels`` label set; gives the class count and is stored in the checkpoint.
        options: model build options (see each builder), e.g. ``{guidance: depth, aux_weight: 0.4}``.
        pretrained: local ImageNet backbone weights (never downloaded); None = random init.
        init_from: weights to start from (a ``model.safetensors`` of an earlier stage); every tensor whose name
            and shape match is loaded, the rest keep their initialisation (both lists are printed).
        dropout: if set, the probability of every ``nn.Dropout*`` module (None = the model's own).
        experts: ``{rgb: path, depth: path}`` trained unimodal weights handed to the model's ``load_experts``
            (SSMA's stage 2, paper §5.1.2); None = none.
    """

    name: str = "sgnet"
    backbone: str | None = None
    label_set: str = "nyuv2-40"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    init_from: str | None = None
    dropout: Annotated[float | None, FRACTION] = None
    experts: dict[str, str] | None = None


@dataclass
class SyntheticConfig:
    """The generated dataset used when ``data.dataset`` is ``synthetic`` and ``data.root`` is empty."""

    n_train: Annotated[int, AT_LEAST_1] = 200
    n_test: Annotated[int, AT_LEAST_0] = 40
    height: Annotated[int, AT_LEAST_1] = 120
    width: Annotated[int, AT_LEAST_1] = 160
    seed: Annotated[int, AT_LEAST_0] = 0


@dataclass
class DataConfig:
    """Where the frames come from.

    Attributes:
        dataset: ``nyudv2``, ``sunrgbd``, ``cityscapes`` or ``synthetic`` (``rgbd_seg_ros.datasets``).
        root: dataset folder. For ``synthetic`` None = generate one (``synthetic``) under ``synthetic_cache``.
        train_split / val_split: split names; ``val_split`` None = no validation.
        options: loader keywords (e.g. ``{depth: raw}`` for NYUDv2, ``{cache_dir: ...}``).
        depth_fill: hole filling before encoding (``fast`` | ``colorization`` | ``none``), as the Segmenter's.
        num_workers: DataLoader worker processes per training process.
        synthetic_cache: folder for generated synthetic data; None = ``<out_dir>/data``.
    """

    dataset: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str | None = "test"
    options: dict[str, Any] = field(default_factory=dict)
    depth_fill: Literal["fast", "colorization", "none"] = "fast"
    num_workers: Annotated[int, AT_LEAST_0] = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    synthetic_cache: str | None = None


@dataclass
class DepthFailureConfig:
    """Simulated sensor depth failure (``training.depth_failure``, which documents each mode's pattern): each
    mode's probability per sample, drawn independently, applied to the raw depth after the other augmentation
    and before hole filling and encoding. All 0 (the default) = off."""

    frame: Annotated[float, FRACTION] = 0.0
    regions: Annotated[float, FRACTION] = 0.0
    far: Annotated[float, FRACTION] = 0.0
    specular: Annotated[float, FRACTION] = 0.0
    speckle: Annotated[float, FRACTION] = 0.0


@dataclass
class AugmentConfig:
    """Joint RGB-D augmentation (``training.transforms``), applied in this order.

    Attributes:
        resize: [height, width] every frame is first resized to (None = keep).
        scales: random scale drawn from this set; scale_range: uniform in [lo, hi] (give at most one).
        crop: [height, width] random crop (padded with ignore labels when the image is smaller).
        flip: random horizontal flip with p = 0.5.
        hsv: ACNet's HSV jitter on RGB (h, s × U(0.9, 1.1), v + U(−25, 25)).
        color_jitter: brightness/contrast/saturation factors in [1 − x, 1 + x] on RGB (0 = off).
        depth_failure: per-sample probabilities of simulated depth loss (last; see :class:`DepthFailureConfig`).
    """

    resize: Annotated[list[int] | None, AT_LEAST_1] = None
    scales: Annotated[list[float] | None, POSITIVE] = None
    scale_range: Annotated[list[float] | None, POSITIVE] = None
    crop: Annotated[list[int] | None, AT_LEAST_1] = None
    flip: bool = True
    hsv: bool = False
    color_jitter: Annotated[float, FRACTION] = 0.0
    depth_failure: DepthFailureConfig = field(default_factory=DepthFailureConfig)


@dataclass
class ParamGroupConfig:
    """Parameters whose name matches ``pattern`` (``re.search``) get ``lr × lr_mult`` (and ``weight_decay``)."""

    pattern: str = ""
    lr_mult: Annotated[float, AT_LEAST_0] = 1.0
    weight_decay: Annotated[float | None, AT_LEAST_0] = None


@dataclass
class OptimConfig:
    """Optimiser.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        no_decay_norm_bias: no weight decay on normalisation layers and biases (SA-Gate's code).
        groups: per-name learning-rate multipliers; the first matching group wins.
        grad_clip: clip the global gradient norm (None = off).
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Annotated[float, POSITIVE] = 0.01
    momentum: Annotated[float, FRACTION] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, AT_LEAST_0] = 1e-4
    betas: Annotated[list[float], Range(lo=0, hi=1, open_hi=True)] = field(default_factory=lambda: [0.9, 0.999])
    eps: Annotated[float, POSITIVE] = 1e-8
    no_decay_norm_bias: bool = False
    groups: list[ParamGroupConfig] = field(default_factory=list)
    grad_clip: Annotated[float | None, POSITIVE] = None


@dataclass
class ScheduleConfig:
    """Learning rate as a function of the optimiser step ``t`` (0-based) out of ``T = max_iters``.

    * warm-up (``warmup_iters`` or ``warmup_epochs``): ``lr · (t + 1) / W`` for ``t < W``;
    * ``poly``: ``lr · ((1 − r) · (1 − t/T)^power + r)`` with ``r = end_lr_ratio`` (TensorFlow's
      ``polynomial_decay``; r = 0 is the usual poly of DeepLab/PSPNet/SGNet);
    * ``step``: ``lr · gamma^⌊t / S⌋`` with ``S = step_iters`` or ``step_epochs`` (ACNet);
    * ``constant``.
    """

    policy: Literal["poly", "step", "constant"] = "poly"
    power: Annotated[float, AT_LEAST_0] = 0.9
    end_lr_ratio: Annotated[float, FRACTION] = 0.0
    warmup_iters: Annotated[int, AT_LEAST_0] = 0
    warmup_epochs: Annotated[float, AT_LEAST_0] = 0.0
    step_iters: Annotated[int, AT_LEAST_0] = 0
    step_epochs: Annotated[float, AT_LEAST_0] = 0.0
    gamma: Annotated[float, POSITIVE] = 0.1


@dataclass
class LossConfig:
    """Segmentation loss: ``Σ_t w_t · L_t`` over the main output (w = 1) and the auxiliary outputs.

    Attributes:
        type: ``ce`` (cross-entropy) or ``focal`` (``(1 − p)^gamma``-weighted cross-entropy).
        class_weights: ``none``, ``median_frequency`` (computed over the training split) or a list of K floats.
        aux_weights: weights of the model's auxiliary outputs; None = the model's ``aux_weights`` (its paper's).
    """

    type: Literal["ce", "focal"] = "ce"
    gamma: Annotated[float, AT_LEAST_0] = 2.0
    class_weights: Any = "none"
    aux_weights: Annotated[list[float] | None, AT_LEAST_0] = None
    ignore_index: Annotated[int, Range(lo=0, hi=255)] = 255


@dataclass
class TrainConfig:
    """The loop.

    Attributes:
        out_dir: run folder (``config.yaml``, ``log.jsonl``, ``tb/``, ``checkpoints/last.pt``,
            ``model.safetensors``).
        batch_size: global images per optimiser step; accum_steps: micro-batches accumulated per step.
        epochs / max_iters: length; ``max_iters`` wins when set (an epoch = ⌊N_train / batch_size⌋ steps).
        amp: mixed precision (fp16 + GradScaler) on CUDA; ignored on the CPU.
        sync_bn: convert BatchNorm to SyncBatchNorm when distributed on CUDA.
        freeze_bn: keep BatchNorm layers in eval mode (running statistics, no updates).
        checkpoint_every: optimiser steps between resumable checkpoints (0 = only at the end).
        val_every: steps between validations (0 = only at the end); log_every: steps between TensorBoard points.
        threads: torch intra-op threads per process (None = torch's default).
        device: ``auto``, ``cpu`` or ``cuda``.
        deterministic: deterministic CUDA kernels (``torch.use_deterministic_algorithms``, no cuDNN autotuning) so
            that a resumed GPU run also repeats bit-exactly, at some speed cost; CPU runs are deterministic anyway.
        weights_dtype: storage type of the final ``model.safetensors`` (``float16`` halves the file; the
            checkpoint loads into a float32 model either way).
    """

    out_dir: str = "runs/train"
    batch_size: Annotated[int, AT_LEAST_1] = 8
    accum_steps: Annotated[int, AT_LEAST_1] = 1
    epochs: Annotated[float | None, POSITIVE] = None
    max_iters: Annotated[int | None, AT_LEAST_1] = None
    seed: Annotated[int, AT_LEAST_0] = 0
    amp: bool = True
    sync_bn: bool = True
    freeze_bn: bool = False
    find_unused_parameters: bool = False
    checkpoint_every: Annotated[int, AT_LEAST_0] = 1000
    val_every: Annotated[int, AT_LEAST_0] = 0
    log_every: Annotated[int, AT_LEAST_1] = 10
    num_val_images: Annotated[int, AT_LEAST_0] = 4
    threads: Annotated[int | None, AT_LEAST_1] = None
    device: str = "auto"
    deterministic: bool = False
    weights_dtype: Literal["float32", "float16"] = "float32"


@dataclass
class EvalConfig:
    """The test protocol (validation during training, and ``evaluate.py``'s defaults via the checkpoint).

    Attributes:
        input_size: [height, width] frames are resized to (None = native size); logits return to frame size.
        scales: test scales used with ``--multiscale`` (× the input size); flip: mirror test-time augmentation.
        sliding: ``{crop: [h, w], stride: [h, w]}`` window evaluation (None = whole frame).
    """

    input_size: Annotated[list[int] | None, AT_LEAST_1] = None
    scales: Annotated[list[float], POSITIVE] = field(default_factory=lambda: [1.0])
    flip: bool = False
    sliding: dict[str, list[int]] | None = None


@dataclass
class Config:
    """A whole recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """SHA-256 (16 hex digits) of everything that changes the trained weights (not where they are written,
        the worker count or the logging/checkpoint cadence)."""
        d = self.to_dict()
        d.pop("description")
        for key in ("out_dir", "checkpoint_every", "log_every", "val_every", "num_val_images", "threads", "device"):
            d["train"].pop(key)
        for key in ("num_workers", "synthetic_cache"):
            d["data"].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


# -- typing helpers ----------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``; raises :class:`ConfigError`."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{where or 'recipe'}: unknown key(s) {unknown}; known: {sorted(hints)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    for name, allowed in _ranges(cls).items():
        if name in kwargs:
            _check_range(kwargs[name], allowed, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _ranges(cls: type) -> dict[str, Range]:
    """The :class:`Range` annotations of ``cls``'s fields."""
    out = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        found = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)]
        if found:
            out[name] = found[0]
    return out


def _check_range(value: Any, allowed: Range, where: str) -> None:
    for v in value if isinstance(value, list) else [value]:
        if v is not None and not allowed.contains(v):
            raise ConfigError(f"{where}{' values' if isinstance(value, list) else ''} must be {allowed}, got {value!r}")


# -- loading --------------------------------------------------------------------------------------------------------
def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at ``path`` as a plain dict, with its ``base:`` chain merged in."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"no recipe at {path}")
    if path in _seen:
        raise ConfigError(f"recipe base cycle: {' -> '.join(map(str, (*_seen, path)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not a readable YAML recipe: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(read_recipe(path.parent / base, (*_seen, path)), data)
    return data


def _leaf_paths(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, tp in _hints(cls).items():
        if _is_dataclass_type(tp):
            paths += _leaf_paths(tp, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def resolve_key(key: str) -> tuple[str, ...]:
    """The full path of an override key: dotted as given, or the unique field whose name is ``key``."""
    if "." in key:
        return tuple(key.split("."))
    matches = [p for p in _leaf_paths(Config) if p[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"override {key!r}: no such setting (use section.key, e.g. train.max_iters)")
    raise ConfigError(f"override {key!r} is ambiguous: {['.'.join(m) for m in matches]}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``key=value`` override applied (value parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        path = resolve_key(key.strip())
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not YAML ({' '.join(str(exc).split())})") from None
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain dict against the schema (unknown keys and wrong types raise :class:`ConfigError`)."""
    cfg = _build(Config, data, "")
    _check(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a recipe (None = defaults only), apply ``key=value`` overrides, validate."""
    data = read_recipe(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides)))


def _check_pair(value: list | None, where: str, what: str = "[height, width]") -> None:
    if value is not None and len(value) != 2:
        raise ConfigError(f"{where} must be {what}, got {value}")


def _check(cfg: Config) -> None:
    """Rules across fields (each field's own range is checked as it is read, see :class:`Range`)."""
    a, t = cfg.augment, cfg.train
    if a.scales is not None and a.scale_range is not None:
        raise ConfigError("augment: give scales or scale_range, not both")
    _check_pair(a.resize, "augment.resize")
    _check_pair(a.crop, "augment.crop")
    _check_pair(cfg.eval.input_size, "eval.input_size")
    _check_pair(a.scale_range, "augment.scale_range", "[low, high]")
    if a.scale_range is not None and a.scale_range[0] > a.scale_range[1]:
        raise ConfigError(f"augment.scale_range must be [low, high] with low <= high, got {a.scale_range}")
    _check_pair(cfg.optim.betas, "optim.betas", "[beta1, beta2]")
    if t.max_iters is None and t.epochs is None:
        raise ConfigError("set train.max_iters or train.epochs")
    if not cfg.eval.scales:
        raise ConfigError("eval.scales must name at least one scale")
    if cfg.eval.sliding is not None:
        if set(cfg.eval.sliding) != {"crop", "stride"}:
            raise ConfigError(f"eval.sliding needs exactly crop and stride, got {sorted(cfg.eval.sliding)}")
        for key, value in cfg.eval.sliding.items():
            if len(value) != 2 or min(value) < 1:
                raise ConfigError(f"eval.sliding.{key} must be [height, width] of sizes >= 1, got {value}")
    cw = cfg.loss.class_weights
    if isinstance(cw, str) and cw not in ("none", "median_frequency"):
        raise ConfigError(f"loss.class_weights must be none, median_frequency or a list, got {cw}")
    if not isinstance(cw, str):
        if not isinstance(cw, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in cw):
            raise ConfigError(f"loss.class_weights must be none, median_frequency or a list of numbers, got {cw!r}")
        _check_range(cw, AT_LEAST_0, "loss.class_weights")


__all__ = [
    "Config",
    "ConfigError",
    "Range",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "read_recipe",
    "resolve_key",
]
