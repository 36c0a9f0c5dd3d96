"""What each model consumes (:class:`InputSpec`) and the one function that prepares it from an RGBDFrame.

This module is the single source of truth for model inputs: training, evaluation, replay and the node
all call it, so preprocessing cannot drift between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DepthEncoding = Literal["none", "depth", "xyz", "hha", "jet"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """``(x / scale - mean) / std`` per channel, applied to float inputs in their natural units.

    For 8-bit images (RGB, HHA, jet) the natural unit is 0..255; for ``depth``/``xyz`` it is metres.
    """

    scale: float = 255.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


@dataclass(frozen=True)
class InputSpec:
    """The exact inputs a model family expects.

    Attributes:
        depth_encoding: the second input: ``none`` (RGB only), ``depth`` (B×1×H×W metres), ``xyz``
            (B×3×H×W metres, camera frame), ``hha`` (B×3×H×W, 8-bit HHA), ``jet`` (B×3×H×W, jet-coloured depth).
        rgb_order: channel order of the RGB tensor, ``rgb`` or ``bgr``.
        rgb_norm: normalisation of the colour input (natural unit 0..255).
        depth_norm: normalisation of the second input (natural units as above); None = leave as is.
        size_divisor: input height and width must be multiples of this (e.g. 32 for ACNet).
        jet_range_m: metric range mapped onto the jet colour map (``jet`` only).
        hha_params: keyword overrides of the HHA constants (``hha`` only; empty = the NYUv2 reference).
    """

    depth_encoding: DepthEncoding = "depth"
    rgb_order: Literal["rgb", "bgr"] = "rgb"
    rgb_norm: Normalization = field(default_factory=Normalization)
    depth_norm: Normalization | None = None
    size_divisor: int = 1
    jet_range_m: tuple[float, float] = (0.5, 10.0)
    hha_params: tuple[tuple[str, float], ...] = ()

    @property
    def depth_channels(self) -> int:
        """Channels of the second input (0 when the model takes RGB only)."""
        return {"none": 0, "depth": 1, "xyz": 3, "hha": 3, "jet": 3}[self.depth_encoding]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in checkpoint and ONNX metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        data = dict(data)
        for key in ("rgb_norm", "depth_norm"):
            if data.get(key) is not None:
                norm = data[key]
                data[key] = Normalization(scale=float(norm["scale"]), mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        if "jet_range_m" in data:
            data["jet_range_m"] = tuple(data["jet_range_m"])
        if "hha_params" in data:
            data["hha_params"] = tuple((str(k), float(v)) for k, v in data["hha_params"])
        return cls(**data)
