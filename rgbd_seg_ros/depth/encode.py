"""What each model consumes (:class:`InputSpec`) and the one function that prepares it from an RGBDFrame.

This module is the single source of truth for model inputs: training, evaluation, replay and the node
all call it, so preprocessing cannot drift between them.

:func:`encode_frame` / :func:`encode_frames`: frame(s) → ``(rgb B×3×H×W, second B×C×H×W | None)`` float32
tensors, normalised. The steps are also callable one by one: :func:`rgb_array` and :func:`depth_array`
(natural units, NumPy C×H×W) and :func:`normalize` (tensors, on any device). Depth: hole fill
(:func:`~rgbd_seg_ros.depth.completion.fill_depth`) → encoding (metres; XYZ through the frame's own
intrinsics — SGNet's code used ``cx = w/2, cy = h/2`` and NYU's focal lengths, we use ``CameraInfo``'s; HHA;
jet over ``spec.jet_range_m``) → channel order → ``spec.depth_norm``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import torch

from rgbd_seg_ros.depth.completion import FillMethod, fill_depth
from rgbd_seg_ros.depth.hha import HHAParams, compute_hha, compute_hha_torch
from rgbd_seg_ros.depth.points import backproject
from rgbd_seg_ros.frames import RGBDFrame

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


# -- RGBDFrame → model input tensors ------------------------------------------------------------------------------


def rgb_array(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 H×W×3 RGB → float32 3×H×W in natural units (0..255), channels in ``spec.rgb_order``."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 H×W×3, got {rgb.dtype} {rgb.shape}")
    if spec.rgb_order == "bgr":
        rgb = rgb[..., ::-1]
    elif spec.rgb_order != "rgb":
        raise ValueError(f"rgb_order must be 'rgb' or 'bgr', got {spec.rgb_order!r}")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def jet_image(depth_m: np.ndarray, range_m: tuple[float, float]) -> np.ndarray:
    """Jet-coloured depth, uint8 H×W×3 in RGB order: ``range_m`` (near, far) spans the colour map, depth outside
    it saturates, and invalid (NaN) pixels are black."""
    near, far = float(range_m[0]), float(range_m[1])
    if not (np.isfinite([near, far]).all() and far > near):
        raise ValueError(f"jet_range_m must be (near, far) with far > near, got {range_m!r}")
    valid = np.isfinite(depth_m)
    t = np.clip((np.where(valid, depth_m, near) - near) * (255.0 / (far - near)), 0, 255)
    out = cv2.applyColorMap(np.rint(t).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.where(valid[..., None], out, np.uint8(0))


def depth_array(
    frame: RGBDFrame,
    spec: InputSpec,
    fill: FillMethod = "fast",
    gravity: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray | None:
    """The model's second input in natural units, float32 C×H×W (None for RGB-only models).

    Steps: ``fill_depth(frame.depth, fill, frame.rgb)`` → encoding. Pixels still invalid after the fill
    (all of them with ``fill="none"`` at holes) are represented as:

    * ``depth``: 0 m (before ``depth_norm``); ``xyz``: (0, 0, 0) m;
    * ``hha``: what the reference HHA tool gives a zero-depth pixel (disparity 255, the camera's height,
      and the normal's angle or 180° + 38 where no normal fits) — see :mod:`rgbd_seg_ros.depth.hha`;
    * ``jet``: black.

    ``hha`` and ``jet`` are 8-bit images (0..255); like the colour image they follow ``spec.rgb_order``:
    ``rgb`` keeps the stored order (HHA: disparity, height, angle), ``bgr`` reverses it as ``cv2.imread`` of
    the image file would. HHA uses the raw ``frame.depth`` to mask its normal fits, ``spec.hha_params``
    for its constants and ``gravity`` (camera frame, e.g. from an IMU) if given, else ``frame.gravity``, else
    estimates it — and raises :class:`~rgbd_seg_ros.depth.hha.GravityEstimationError` when the frame has too
    little depth for that.
    ``timings``, if given, accumulates the fill's milliseconds under ``"fill"``.
    """
    encoding = spec.depth_encoding
    if encoding == "none":
        return None
    filled = _timed_fill(frame, fill, timings)
    if encoding == "depth":
        return np.nan_to_num(filled, nan=0.0)[None]
    if encoding == "xyz":
        return np.ascontiguousarray(np.nan_to_num(backproject(filled, frame.intrinsics), nan=0.0).transpose(2, 0, 1))
    if encoding == "hha" and frame.meta.get("hha") is not None:
        # Precomputed by ``training/prepare.py`` (or a dataset's own HHA files) and carried through the transforms.
        image = np.asarray(frame.meta["hha"])
        if image.shape != (frame.height, frame.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"frame.meta['hha'] must be uint8 {frame.height}×{frame.width}×3, got {image.dtype} {image.shape}"
            )
    elif encoding == "hha":
        params = HHAParams.from_pairs(spec.hha_params)
        gravity = frame.gravity if gravity is None else gravity
        image = compute_hha(filled, frame.intrinsics, gravity=gravity, raw_depth_m=frame.depth, params=params)
    elif encoding == "jet":
        image = jet_image(filled, spec.jet_range_m)
    else:
        raise ValueError(f"unknown depth_encoding {encoding!r}")
    return rgb_array(image, spec)


def _timed_fill(frame: RGBDFrame, fill: FillMethod, timings: dict[str, float] | None) -> np.ndarray:
    start = time.perf_counter()
    filled = fill_depth(frame.depth, fill, frame.rgb)
    if timings is not None:
        timings["fill"] = timings.get("fill", 0.0) + (time.perf_counter() - start) * 1e3
    return filled


def normalize(x: torch.Tensor, norm: Normalization | None) -> torch.Tensor:
    """``(x / scale − mean) / std`` per channel of a C×H×W or B×C×H×W float tensor (None: unchanged).

    A one-element mean/std applies to every channel; otherwise their length must equal C.
    """
    if norm is None:
        return x
    channels = x.shape[-3]
    mean, std = tuple(norm.mean), tuple(norm.std)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ValueError(f"Normalization.{name} has {len(values)} values for a {channels}-channel input")
    if not all(s != 0 for s in std) or norm.scale == 0:
        raise ValueError(f"Normalization needs non-zero scale and std, got {norm}")
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x / norm.scale - m) / s


def encode_frames(
    frames: list[RGBDFrame] | tuple[RGBDFrame, ...],
    spec: InputSpec,
    fill: FillMethod = "fast",
    device: torch.device | str | None = None,
    gravity: list[np.ndarray | None] | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frames (all the same size) → ``(rgb B×3×H×W, second B×C×H×W or None)`` float32 normalised tensors.

    The single source of truth for model inputs (training, evaluation, replay, the node). Resizing is the
    caller's job (resize the images and follow with ``CameraIntrinsics.scaled`` before calling). On a CUDA
    ``device`` the HHA is computed there with :func:`~rgbd_seg_ros.depth.hha.compute_hha_torch` (the same
    maths; ±1 grey level at rounding ties).

    Args:
        frames: the frames.
        spec: the model's :class:`InputSpec`.
        fill: hole completion before the depth encoding: ``"fast"``, ``"colorization"`` or ``"none"``.
        device: where the tensors go (default CPU).
        gravity: optional per-frame gravity for HHA (unit 3-vector pointing down in the camera optical frame, or
            None): default each frame's own ``frame.gravity``; where that is None too, HHA estimates it.
        timings: if given, receives milliseconds spent in the hole fill (``"fill"``) and in everything else
            (``"encode"``: encoding, normalisation, transfer to ``device``).
    """
    start = time.perf_counter()
    local: dict[str, float] = {"fill": 0.0}
    rgb, second = _encode(frames, spec, fill, device, gravity, local)
    if timings is not None:
        timings["fill"] = local["fill"]
        timings["encode"] = (time.perf_counter() - start) * 1e3 - local["fill"]
    return rgb, second


def _encode(frames, spec: InputSpec, fill: FillMethod, device, gravity, timings: dict[str, float]):
    if not frames:
        raise ValueError("encode_frames needs at least one frame")
    sizes = {(f.height, f.width) for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"frames of one batch must share a size, got {sorted(sizes)}")
    if gravity is not None and len(gravity) != len(frames):
        raise ValueError(f"gravity has {len(gravity)} entries for {len(frames)} frames")
    device = torch.device(device) if device is not None else torch.device("cpu")
    gravity = list(gravity) if gravity is not None else [None] * len(frames)
    gravity = [f.gravity if g is None else g for f, g in zip(frames, gravity)]
    rgb = torch.from_numpy(np.stack([rgb_array(f.rgb, spec) for f in frames])).to(device)
    rgb = normalize(rgb, spec.rgb_norm)
    if spec.depth_encoding == "none":
        return rgb, None
    if spec.depth_encoding == "hha" and device.type == "cuda":
        second = torch.stack([_hha_on_device(f, spec, fill, g, device, timings) for f, g in zip(frames, gravity)])
    else:
        arrays = [depth_array(f, spec, fill, g, timings) for f, g in zip(frames, gravity)]
        second = torch.from_numpy(np.stack(arrays)).to(device)
    return rgb, normalize(second, spec.depth_norm)


def _hha_on_device(frame: RGBDFrame, spec: InputSpec, fill: FillMethod, gravity, device, timings) -> torch.Tensor:
    filled = torch.from_numpy(_timed_fill(frame, fill, timings)).to(device)
    raw = torch.from_numpy(frame.depth).to(device)
    params = HHAParams.from_pairs(spec.hha_params)
    hha = compute_hha_torch(filled, frame.intrinsics, gravity=gravity, raw_depth=raw, params=params).float()
    return hha.flip(0) if spec.rgb_order == "bgr" else hha


def encode_frame(
    frame: RGBDFrame,
    spec: InputSpec,
    fill: FillMethod = "fast",
    device: torch.device | str | None = None,
    gravity: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frame → ``(rgb 1×3×H×W, second 1×C×H×W or None)``; see :func:`encode_frames`."""
    return encode_frames([frame], spec, fill=fill, device=device, gravity=[gravity], timings=timings)
