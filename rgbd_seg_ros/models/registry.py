"""Models by name: ``build_model("sgnet", num_classes=40, backbone="resnet101")`` and their InputSpecs.

Each model module registers its builders with :func:`register`; this module imports them lazily so
``import rgbd_seg_ros.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rgbd_seg_ros.depth.encode import InputSpec

# Modules that register models; each is imported on first use of the registry.
_MODEL_MODULES: tuple[str, ...] = (
    "rgbd_seg_ros.models.sgnet",
    "rgbd_seg_ros.models.sagate",
    "rgbd_seg_ros.models.acnet",
    "rgbd_seg_ros.models.adapnet",
    "rgbd_seg_ros.models.ssma",
    "rgbd_seg_ros.models.gff",
)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, default backbone, allowed backbones and input spec."""

    name: str
    builder: Callable[..., nn.Module]
    input_spec: Callable[..., InputSpec]
    default_backbone: str | None
    backbones: tuple[str, ...]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register(
    name: str,
    *,
    input_spec: Callable[..., InputSpec],
    default_backbone: str | None,
    backbones: tuple[str, ...] = (),
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(num_classes, backbone=..., pretrained=None, **options)`` under ``name``.

    ``input_spec(**options)`` returns the model's :class:`InputSpec` for the same options.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, input_spec, default_backbone, backbones, description)
        return builder

    return wrap


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _MODEL_MODULES:
            importlib.import_module(module)
        _loaded = True


def list_models() -> list[str]:
    """Names of all registered models."""
    _load()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; raises ``KeyError`` listing the known names."""
    _load()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(
    name: str, num_classes: int, backbone: str | None = None, pretrained: str | None = None, **options
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see :func:`list_models`).
        num_classes: output classes K (logits are B×K×H×W).
        backbone: e.g. ``"resnet50"``; None = the model's default.
        pretrained: local path of ImageNet backbone weights (never downloaded).
        options: model-specific keyword options (documented by each builder).

    The returned module carries ``model.input_spec`` (its :class:`InputSpec`) and ``model.config``
    (everything needed to rebuild it: name, num_classes, backbone, options).
    """
    entry = get_entry(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone = backbone or entry.default_backbone
    if entry.backbones and backbone not in entry.backbones:
        raise ValueError(f"model {name!r} supports backbones {entry.backbones}, got {backbone!r}")
    model = entry.builder(num_classes, backbone=backbone, pretrained=pretrained, **options)
    model.input_spec = entry.input_spec(**options)
    model.config = {"name": name, "num_classes": num_classes, "backbone": backbone, "options": dict(options)}
    return model


def input_spec_for(name: str, **options) -> InputSpec:
    """The :class:`InputSpec` of model ``name`` built with ``options``."""
    return get_entry(name).input_spec(**options)
