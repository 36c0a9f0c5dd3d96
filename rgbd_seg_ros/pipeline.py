"""The Segmenter: the one inference path from an RGBDFrame to a label image.

The ROS node, the bag replay and the offline evaluation all call :class:`Segmenter`, so a model sees exactly
the same preprocessing everywhere:

    depth range → resize (intrinsics follow) → depth fill → encode per the model's InputSpec → backend → logits
    → labels and confidence at the frame size (``postprocess.py``)

Training uses the same :func:`rgbd_seg_ros.depth.encode.encode_frame` on its augmented frames.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rgbd_seg_ros.backends import (
    Backend,
    CachedOnnxBackend,
    OnnxRuntimeBackend,
    TorchBackend,
    read_onnx_metadata,
    resolve_device,
)
from rgbd_seg_ros.depth.encode import InputSpec, encode_frame
from rgbd_seg_ros.frames import RGBDFrame, limit_depth_range
from rgbd_seg_ros.labels import LabelSet, get_label_set
from rgbd_seg_ros.postprocess import Resize, labels_and_confidence, upsample
from rgbd_seg_ros.settings import (
    DEFAULT_DEPTH_RANGE_M,
    DEPTH_FILLS,
    RunOptions,
    apply_num_threads,
    default_cache_dir,
    resolve_backend,
    resolve_depth_fill,
    resolve_depth_range,
    resolve_input_size,
)

STAGES = ("resize", "fill", "encode", "transfer", "model", "postprocess")


@dataclass
class Segmentation:
    """Result for one frame, at the frame's resolution.

    Attributes:
        labels: H×W uint8 (uint16 for > 255 classes) train ids of ``label_set``.
        confidence: H×W float32 in [0, 1], the softmax probability of the chosen class (at the resolution of the
            model's logits, interpolated to the frame's: :mod:`rgbd_seg_ros.postprocess`).
        timings: milliseconds per stage (:data:`STAGES`) and ``total``.
        class_probabilities: K×H×W float32 softmax, only when requested.
    """

    labels: np.ndarray
    confidence: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    class_probabilities: np.ndarray | None = None


class Segmenter:
    """Runs a segmentation model on RGB-D frames.

    Args:
        backend: a :class:`~rgbd_seg_ros.backends.Backend` (torch or ONNX Runtime).
        input_spec: the model's inputs (depth encoding, channel order, normalisation, size divisor).
        label_set: the classes the model predicts (``num_classes`` must match the logits).
        model_name: for logs and diagnostics.
        input_size: (height, width) the model runs at; None = the frame's size. Either is rounded to the
            model's ``size_divisor``.
        depth_fill: ``"fast"``, ``"colorization"`` or ``"none"`` (see ``depth/completion.py``).
        metadata: the checkpoint metadata (kept for export and reports).
        depth_range_m: (min, max) valid depth in metres; depth outside it is invalid (NaN) before filling.
    """

    def __init__(
        self,
        backend: Backend,
        input_spec: InputSpec,
        label_set: LabelSet,
        model_name: str = "model",
        input_size: tuple[int, int] | None = None,
        depth_fill: str = "fast",
        metadata: dict[str, Any] | None = None,
        depth_range_m: tuple[float, float] = DEFAULT_DEPTH_RANGE_M,
    ) -> None:
        if depth_fill not in DEPTH_FILLS:
            raise ValueError(f"depth_fill must be one of {', '.join(DEPTH_FILLS)}; got {depth_fill!r}")
        self.backend = backend
        self.input_spec = input_spec
        self.label_set = label_set
        self.model_name = model_name
        self.input_size = tuple(input_size) if input_size is not None else None
        self.depth_fill = depth_fill
        self.metadata = dict(metadata or {})
        self.depth_range_m = (float(depth_range_m[0]), float(depth_range_m[1]))
        self.labels_dtype = np.uint8 if label_set.num_classes <= 255 else np.uint16

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, options: RunOptions | None = None, **overrides: Any) -> Segmenter:
        """Load a checkpoint (``.safetensors`` + JSON metadata from ``save_checkpoint``) or an exported ``.onnx``.

        Args:
            path: the model file.
            options: how to run it (:class:`~rgbd_seg_ros.settings.RunOptions`; its defaults are the package's).
            **overrides: :class:`RunOptions` fields replacing those of ``options`` (e.g. ``device="cpu"``), and
                ``compile=True`` for ``torch.compile`` on the torch backend.

        Unset options follow the rules of :mod:`rgbd_seg_ros.settings`: the checkpoint's stored input size and
        depth fill, ``backend="auto"`` (ONNX Runtime on the CPU through the export cache, torch on CUDA).

        Raises:
            FileNotFoundError: no such file. ValueError: the file is not a checkpoint of a registered model.
        """
        compile_model = bool(overrides.pop("compile", False))
        opts = (options or RunOptions()).with_overrides(**overrides)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        device = opts.device
        backend = resolve_backend(opts.backend, device if device != "auto" else resolve_device("auto"), path)
        if path.suffix == ".onnx":
            metadata = read_onnx_metadata(path)
            runner: Backend = OnnxRuntimeBackend(path, device, opts.num_threads, opts.cache_dir or default_cache_dir())
        else:
            from rgbd_seg_ros.models.checkpoints import load_checkpoint

            model, metadata = load_checkpoint(path)
            if backend == "torch":
                runner = TorchBackend(model, device, opts.precision, compile_model, opts.num_threads)
            else:
                apply_num_threads(opts.num_threads)
                cache = opts.cache_dir or default_cache_dir()
                runner = CachedOnnxBackend(model, metadata, path, cache, device, opts.num_threads)
        input_size = None if opts.native_size else resolve_input_size(opts.input_size, metadata, path.name)
        return cls._from_metadata(runner, metadata, input_size, resolve_depth_fill(opts.depth_fill, metadata), opts)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        label_set: str | LabelSet,
        device: str = "cpu",
        precision: str = "auto",
        input_size: tuple[int, int] | None = None,
        depth_fill: str = "fast",
        options: RunOptions | None = None,
    ) -> Segmenter:
        """Wrap a model built by ``build_model`` (it carries ``input_spec`` and ``config``); always the torch backend
        (there is no checkpoint file to export). ``options`` supplies the thread count and depth range."""
        opts = options or RunOptions()
        label_set = get_label_set(label_set)
        config = getattr(model, "config", {})
        metadata = {**config, "model": config.get("name", type(model).__name__), "label_set": label_set.name}
        return cls(
            TorchBackend(model, device=device, precision=precision, num_threads=opts.num_threads),
            model.input_spec,
            label_set,
            model_name=metadata["model"],
            input_size=input_size,
            depth_fill=depth_fill,
            metadata=metadata,
            depth_range_m=resolve_depth_range(opts, metadata),
        )

    @classmethod
    def _from_metadata(
        cls,
        runner: Backend,
        metadata: dict[str, Any],
        input_size: tuple[int, int] | None,
        depth_fill: str,
        options: RunOptions | None = None,
    ) -> Segmenter:
        opts = options or RunOptions()
        spec = metadata.get("input_spec")
        spec = (
            InputSpec.from_dict(spec)
            if isinstance(spec, dict)
            else getattr(getattr(runner, "model", None), "input_spec", None)
        )
        if spec is None:
            raise ValueError("checkpoint metadata has no input_spec")
        label_set = get_label_set(metadata.get("label_set", "nyuv2-40"))
        num_classes = metadata.get("num_classes")
        if num_classes is not None and int(num_classes) != label_set.num_classes:
            raise ValueError(
                f"checkpoint predicts {num_classes} classes but its label set {label_set.name!r} has "
                f"{label_set.num_classes}"
            )
        return cls(
            runner,
            spec,
            label_set,
            metadata.get("model", "model"),
            input_size,
            depth_fill,
            metadata,
            resolve_depth_range(opts, metadata),
        )

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def backend_name(self) -> str:
        """``torch`` or ``onnxruntime`` (with its execution provider once a session exists)."""
        name = getattr(self.backend, "name", type(self.backend).__name__)
        provider = getattr(self.backend, "provider", None)
        return f"{name} ({provider})" if provider else name

    def warmup(self, frame_size: tuple[int, int] | None = None) -> None:
        """Run one synthetic frame of ``frame_size`` (H, W; default: the model input size, when it is fixed): builds
        the cached ONNX export and warms the backend, so that the first real frame is not slow (and latency
        figures do not include the export). Without either size there is nothing to prepare: a no-op."""
        from rgbd_seg_ros.synthetic import SceneGenerator

        size = frame_size or self.input_size
        if size is not None:
            self(SceneGenerator(size[0], size[1], seed=0).sample(0).frame)

    # -- inference --------------------------------------------------------------------------------------------
    def model_size(self, frame_size: tuple[int, int], scale: float = 1.0) -> tuple[int, int]:
        """(height, width) the model runs at for a frame of ``frame_size`` (H, W): ``input_size`` or the frame's
        size, × ``scale``, rounded to the model's size divisor."""
        h, w = self.input_size or frame_size
        h, w = h * scale, w * scale
        d = max(1, self.input_spec.size_divisor)
        return max(d, round(h / d) * d), max(d, round(w / d) * d)

    def prepare(
        self, frame: RGBDFrame, timings: dict[str, float] | None = None, size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Resize (intrinsics follow), fill and encode ``frame``: the model's inputs (1×3×h×w, 1×C×h×w or None).

        ``size`` overrides :meth:`model_size` (multi-scale evaluation).
        """
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        frame = frame.resized(*(size or self.model_size((frame.height, frame.width))))
        # After the resize: depth is resampled by nearest neighbour, so masking commutes with it and costs only
        # model-size pixels.
        frame = limit_depth_range(frame, *self.depth_range_m)
        t1 = time.perf_counter()
        fill = self.depth_fill if self.input_spec.depth_encoding != "none" else "none"
        rgb, second = encode_frame(frame, self.input_spec, fill=fill, timings=timings)
        timings["resize"] = (t1 - t0) * 1e3
        return rgb, second

    def logits(self, frame: RGBDFrame, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
        """Raw logits 1×K×H×W at the frame's size; averaged over ``scales`` (× the model size) and flips."""
        total = None
        for scale in scales:
            size = self.model_size((frame.height, frame.width), scale)
            for mirrored in (False, True) if flip else (False,):
                logits, steps = self._forward(frame.flipped() if mirrored else frame, {}, size)
                logits = upsample(logits, [*steps, ((frame.height, frame.width), False)])
                logits = logits.flip(-1) if mirrored else logits
                total = logits if total is None else total + logits
        return total / (len(scales) * (2 if flip else 1))

    def _forward(
        self, frame: RGBDFrame, timings: dict[str, float], size: tuple[int, int] | None = None
    ) -> tuple[Tensor, list[Resize]]:
        """Prepare ``frame`` at the model size (or ``size``) and run the backend: logits 1×K×h×w and the resizes
        that take them to the model size (none, or the model's final upsampling of coarse logits)."""
        rgb, second = self.prepare(frame, timings, size)
        t0 = time.perf_counter()
        to_device = getattr(self.backend, "to_device", None)
        if to_device is not None:
            rgb, second = to_device(rgb), to_device(second)
        t1 = time.perf_counter()
        logits = self.backend(rgb, second)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        timings["transfer"] = (t1 - t0) * 1e3
        timings["model"] = (time.perf_counter() - t1) * 1e3
        if logits.shape[1] != self.label_set.num_classes:
            raise ValueError(
                f"model returned {logits.shape[1]} classes but label set {self.label_set.name!r} has "
                f"{self.label_set.num_classes}"
            )
        align_corners = getattr(self.backend, "final_align_corners", None)
        return logits, [] if align_corners is None else [(tuple(rgb.shape[-2:]), align_corners)]

    def __call__(self, frame: RGBDFrame, probabilities: bool = False) -> Segmentation:
        """Segment one frame. ``probabilities=True`` also returns the K×H×W softmax."""
        if not isinstance(frame, RGBDFrame):
            raise TypeError(f"Segmenter expects an RGBDFrame, got {type(frame).__name__}")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        logits, steps = self._forward(frame, timings)
        t0 = time.perf_counter()
        result = self._postprocess(logits, [*steps, ((frame.height, frame.width), False)], probabilities)
        timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - start) * 1e3
        result.timings = timings
        return result

    def segment_batch(
        self, frames: Sequence[RGBDFrame], scales: Sequence[float] = (1.0,), flip: bool = False
    ) -> list[Segmentation]:
        """Segment several frames, optionally with multi-scale and flip test-time augmentation (evaluation)."""
        out = []
        for frame in frames:
            if tuple(scales) == (1.0,) and not flip:
                out.append(self(frame))
                continue
            start = time.perf_counter()
            result = self._postprocess(self.logits(frame, scales, flip), [], False)
            result.timings = {"total": (time.perf_counter() - start) * 1e3}
            out.append(result)
        return out

    def _postprocess(self, logits: Tensor, steps: list[Resize], probabilities: bool) -> Segmentation:
        """Labels and confidence at the frame size, the last of ``steps`` (:mod:`rgbd_seg_ros.postprocess`); the
        K×H×W softmax of the upsampled logits only when ``probabilities``."""
        labels, confidence = labels_and_confidence(logits[0], steps)
        probs = None
        if probabilities:
            probs = torch.softmax(upsample(logits, steps)[0].float(), 0).cpu().numpy()
        return Segmentation(
            labels=labels.cpu().numpy().astype(self.labels_dtype, copy=False),
            confidence=confidence.float().cpu().numpy(),
            class_probabilities=probs,
        )
