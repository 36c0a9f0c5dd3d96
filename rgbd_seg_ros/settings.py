"""Run-time defaults, decided once: every entry point (node, replay, segment, export, benchmark, evaluate, demo)
builds a :class:`RunOptions` and lets the rules here fill what the user left open.

* **Input size**: an explicit size wins; else the size the checkpoint was trained (or exported) at, from its
  metadata; else the frame's own size. Running at another size than the checkpoint's logs one warning naming
  both (:func:`resolve_input_size`).
* **Backend**: ``auto`` runs an ``.onnx`` file with ONNX Runtime; a torch checkpoint with ONNX Runtime on the CPU
  (exported once to a cache) and with torch on CUDA (:func:`resolve_backend`).
* **Threads**: ``num_threads`` intra-op threads for torch and ONNX Runtime alike, :data:`DEFAULT_NUM_THREADS`
  unless given (chosen from ``benchmarks/threads.py``); 0 = each library's own default (all cores).
* **Depth range**: depth outside [``min_depth_m``, ``max_depth_m``] is invalid before filling and encoding; each
  bound not given comes from the checkpoint's metadata (``depth_range_m``: outdoor models record theirs), else
  :data:`DEFAULT_DEPTH_RANGE_M`, suited to indoor RGB-D cameras (:func:`resolve_depth_range`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

LOG = logging.getLogger("rgbd_seg_ros")

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")
DEPTH_FILLS: tuple[str, ...] = ("fast", "colorization", "none")

#: Valid depth of indoor RGB-D cameras (RealSense D4xx, Azure Kinect, Kinect v2, OAK-D): metres.
DEFAULT_DEPTH_RANGE_M: tuple[float, float] = (0.1, 10.0)
#: Valid depth of outdoor stereo datasets (Cityscapes: depth from disparity, out to hundreds of metres): metres.
OUTDOOR_DEPTH_RANGE_M: tuple[float, float] = (0.1, 1000.0)
#: Datasets whose depth is not the indoor default. Checkpoints trained (or converted) for them record the range as
#: metadata ``depth_range_m``, so every entry point keeps the far depth the model was trained with.
DATASET_DEPTH_RANGES_M: dict[str, tuple[float, float]] = {"cityscapes": OUTDOOR_DEPTH_RANGE_M}

#: Valid-depth fraction (0..1) below which the node and replay report a depth outage (``min_valid_depth``).
DEFAULT_MIN_VALID_DEPTH = 0.2

#: Default intra-op threads. Chosen from ``python benchmarks/threads.py`` (README "Performance"); 0 would leave
#: torch and ONNX Runtime at their own defaults (one thread per core).
DEFAULT_NUM_THREADS = 1

#: Environment variable naming the ONNX cache folder (default ``~/.cache/rgbd_seg_ros/onnx``).
CACHE_ENV = "RGBD_SEG_CACHE"


def default_cache_dir() -> Path:
    """Where ``backend: auto`` keeps exported ONNX models: ``$RGBD_SEG_CACHE`` or ``$XDG_CACHE_HOME/rgbd_seg_ros``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rgbd_seg_ros" / "onnx"


@dataclass(frozen=True)
class RunOptions:
    """How to run a model; every field has the one default of the whole package.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``auto``, ``torch`` or ``onnxruntime`` (see the module docstring).
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
        input_size: model input (height, width) in pixels; None = the checkpoint's, else the frame's.
        native_size: run at each frame's own size, whatever the checkpoint records (evaluation protocols).
        num_threads: intra-op threads (torch and ONNX Runtime); 0 = the libraries' own defaults.
        depth_fill: ``fast``, ``colorization`` or ``none``; None = the checkpoint's training fill, else ``fast``.
        min_depth_m, max_depth_m: valid depth range, metres (inclusive); None = the checkpoint's, else the default.
        cache_dir: ONNX export cache; None = :func:`default_cache_dir`.
    """

    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    input_size: tuple[int, int] | None = None
    native_size: bool = False
    num_threads: int = DEFAULT_NUM_THREADS
    depth_fill: str | None = None
    min_depth_m: float | None = None
    max_depth_m: float | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.depth_fill is not None and self.depth_fill not in DEPTH_FILLS:
            raise ValueError(f"depth_fill must be one of {', '.join(DEPTH_FILLS)}; got {self.depth_fill!r}")
        if self.native_size and self.input_size is not None:
            raise ValueError("native_size and input_size exclude each other")
        if self.input_size is not None:
            size = tuple(int(v) for v in self.input_size)
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"input_size must be (height, width) > 0, got {self.input_size}")
            object.__setattr__(self, "input_size", size)
        if int(self.num_threads) < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = the libraries' defaults), got {self.num_threads}")
        low, high = self.min_depth_m, self.max_depth_m
        if (low is not None and low < 0) or (low is not None and high is not None and not low < high):
            raise ValueError(f"depth range must satisfy 0 <= min_depth_m < max_depth_m, got [{low}, {high}]")

    def with_overrides(self, **overrides: Any) -> RunOptions:
        """A copy with the given fields replaced; an unknown name is a TypeError naming it."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown run option(s) {unknown}; known: {sorted(known)}")
        return replace(self, **overrides)


def stored_input_size(metadata: Mapping[str, Any]) -> tuple[int, int] | None:
    """The input size a checkpoint was trained or exported at (metadata ``input_size``), or None."""
    size = metadata.get("input_size")
    if size is None and isinstance(metadata.get("eval"), Mapping):
        size = metadata["eval"].get("input_size")
    if not size:
        return None
    return int(size[0]), int(size[1])


def resolve_input_size(
    requested: tuple[int, int] | None, metadata: Mapping[str, Any], name: str = "checkpoint"
) -> tuple[int, int] | None:
    """The model input size: ``requested`` if given, else the checkpoint's stored size, else None (frame size).

    Logs one warning when ``requested`` differs from the stored size (the model then runs at another scale than
    it was trained at).
    """
    stored = stored_input_size(metadata)
    if requested is None:
        return stored
    requested = (int(requested[0]), int(requested[1]))
    if stored is not None and requested != stored:
        LOG.warning(
            "running %s at input size %dx%d, but it was trained at %dx%d: accuracy may suffer at another scale",
            name, *requested, *stored,
        )  # fmt: skip
    return requested


def resolve_depth_fill(requested: str | None, metadata: Mapping[str, Any]) -> str:
    """``requested``, else the checkpoint's training fill (metadata ``depth_fill``), else ``fast``."""
    fill = requested or metadata.get("depth_fill") or "fast"
    if fill not in DEPTH_FILLS:
        raise ValueError(f"depth_fill must be one of {', '.join(DEPTH_FILLS)}; got {fill!r}")
    return str(fill)


def resolve_depth_range(options: RunOptions, metadata: Mapping[str, Any]) -> tuple[float, float]:
    """(min, max) valid depth in metres: each bound from ``options``, else the checkpoint's ``depth_range_m``, else
    :data:`DEFAULT_DEPTH_RANGE_M`.

    Raises:
        ValueError: the resulting range is empty.
    """
    stored = metadata.get("depth_range_m") or DEFAULT_DEPTH_RANGE_M
    low = float(options.min_depth_m if options.min_depth_m is not None else stored[0])
    high = float(options.max_depth_m if options.max_depth_m is not None else stored[1])
    if not 0 <= low < high:
        raise ValueError(f"depth range must satisfy 0 <= min_depth_m < max_depth_m, got [{low}, {high}]")
    return low, high


def resolve_backend(requested: str, device: str, path: str | Path | None = None) -> str:
    """The backend to run: ``torch`` or ``onnxruntime``.

    ``auto``: an ``.onnx`` file → onnxruntime; otherwise onnxruntime on the CPU and torch on CUDA (``device``
    must already be resolved to ``cpu`` or ``cuda[:N]``).
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {requested!r}")
    is_onnx = path is not None and Path(path).suffix == ".onnx"
    if requested == "torch" and is_onnx:
        raise ValueError(f"backend 'torch' cannot run an exported ONNX model ({path}); use 'onnxruntime' or 'auto'")
    if requested != "auto":
        return requested
    if is_onnx or not device.startswith("cuda"):
        return "onnxruntime"
    return "torch"


def apply_num_threads(num_threads: int) -> int:
    """Set torch's intra-op threads (process-wide; 0 = leave torch's default); returns torch's count now.

    ONNX Runtime sessions take the same count when they are created (``OnnxRuntimeBackend``; 0 = its default).
    """
    import torch

    if int(num_threads) > 0 and torch.get_num_threads() != int(num_threads):
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()
