"""Model runners behind one small interface: PyTorch (eager, optional ``torch.compile``) and ONNX Runtime.

A backend takes the encoded, normalised input tensors (``rgb`` B×3×h×w, ``second`` B×C×h×w or None, float32
on the CPU) and returns float32 logits as a torch tensor (on the backend's device): B×K×h×w, or, where
``final_align_corners`` is not None, the model's coarse logits (:mod:`rgbd_seg_ros.models.coarse`) that still
need a bilinear upsampling to h×w with that ``align_corners`` (the post-process does it).

* :class:`TorchBackend`: eager torch; fp16/bf16 autocast and channels_last on CUDA.
* :class:`OnnxRuntimeBackend`: an exported ``.onnx`` file (CPU; CUDA and TensorRT providers when installed).
* :class:`CachedOnnxBackend`: a torch checkpoint run through ONNX Runtime, exported once per input size to a
  cache (``backend: auto`` on the CPU; see :mod:`rgbd_seg_ros.settings`).

This module imports nothing of the pipeline: :mod:`rgbd_seg_ros.export` builds on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from rgbd_seg_ros.fileio import atomic_path, file_sha256
from rgbd_seg_ros.models.coarse import coarse_logits, final_align_corners
from rgbd_seg_ros.settings import apply_num_threads

LOG = logging.getLogger("rgbd_seg_ros")

#: ONNX metadata key holding the JSON checkpoint metadata (model config, label set, input spec).
ONNX_METADATA_KEY = "rgbd_seg_ros"
#: ONNX metadata key holding the export-cache key of a cached export.
CACHE_KEY = "rgbd_seg_ros.cache_key"
#: ONNX metadata key of a graph that returns coarse logits: the final upsampling's align_corners, JSON.
FINAL_ALIGN_CORNERS_KEY = "rgbd_seg_ros.final_align_corners"
#: Opset of every export (19: the first with ``DeformConv``).
OPSET = 19


class Backend(Protocol):
    device: str
    #: None: the logits come at the input size; else coarse logits, upsampled with this align_corners.
    final_align_corners: bool | None

    def __call__(self, rgb: Tensor, second: Tensor | None) -> Tensor: ...


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available (use device='auto' or 'cpu')")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def resolve_precision(precision: str, device: str) -> torch.dtype:
    """``auto`` → fp16 on CUDA (bf16 where supported is the option ``bf16``), fp32 on CPU."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if precision not in table:
        raise ValueError(f"precision must be one of auto, {', '.join(table)}; got {precision!r}")
    if device == "cpu" and precision == "fp16":
        raise ValueError("fp16 autocast is for CUDA; use fp32 or bf16 on the CPU")
    return table[precision]


class TorchBackend:
    """Eager PyTorch in ``inference_mode``; autocast and channels_last on CUDA, pinned-memory transfers.

    ``num_threads`` sets torch's intra-op threads (process-wide; 0 = torch's default).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "cpu",
        precision: str = "auto",
        compile: bool = False,
        num_threads: int = 0,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.cuda = self.device.startswith("cuda")
        self.num_threads = apply_num_threads(num_threads)
        model = model.eval().to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        self.final_align_corners = final_align_corners(model)
        self.model = torch.compile(model) if compile else model
        self.name = "torch"

    def to_device(self, x: Tensor | None) -> Tensor | None:
        """Move an input to the backend's device (pinned, non-blocking, channels_last on CUDA)."""
        if x is None or not self.cuda:
            return x
        x = x.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last)

    def __call__(self, rgb: Tensor, second: Tensor | None) -> Tensor:
        autocast = torch.autocast("cuda", dtype=self.dtype) if self.cuda and self.dtype != torch.float32 else None
        if not self.cuda and self.dtype == torch.bfloat16:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        with torch.inference_mode(), autocast or nullcontext(), coarse_logits(self.module):
            logits = self.model(self.to_device(rgb), self.to_device(second))
        return logits.float()


def onnx_providers(device: str, cache_dir: Path | None = None, fp16: bool = True) -> list[Any]:
    """ONNX Runtime execution providers for ``device``: TensorRT (fp16, engine cache) and CUDA first on CUDA.

    Raises:
        RuntimeError: a CUDA device was asked for explicitly but ONNX Runtime has no GPU provider.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted: list[Any] = []
    if device == "auto" or device.startswith("cuda"):
        if "TensorrtExecutionProvider" in available:
            trt: dict[str, Any] = {"trt_fp16_enable": fp16}
            if cache_dir is not None:
                trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir / "tensorrt"))
            wanted.append(("TensorrtExecutionProvider", trt))
        if "CUDAExecutionProvider" in available:
            wanted.append("CUDAExecutionProvider")
        if device != "auto" and not wanted:
            raise RuntimeError(f"device {device!r} requested but ONNX Runtime offers only {available}")
    return [*wanted, "CPUExecutionProvider"]


def has_tensorrt() -> bool:
    """ONNX Runtime was built with the TensorRT execution provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "TensorrtExecutionProvider" in ort.get_available_providers()


class OnnxRuntimeBackend:
    """ONNX Runtime session of an ``.onnx`` file (CPU provider; TensorRT / CUDA providers first on CUDA).

    Args:
        path: the model file.
        device: ``cpu``, ``auto`` or ``cuda[:N]``.
        num_threads: intra-op threads (0 = ONNX Runtime's default: one per core).
        cache_dir: folder for TensorRT engines (None: no engine cache).
        fp16: let TensorRT build fp16 engines.
        providers: explicit ONNX Runtime providers (benchmarks); None = :func:`onnx_providers` for ``device``.

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not a loadable ONNX model (the reason named).
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        num_threads: int = 0,
        cache_dir: str | Path | None = None,
        fp16: bool = True,
        providers: list[Any] | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        providers = providers or onnx_providers(device, Path(cache_dir) if cache_dir else None, fp16)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidProtobuf types
            raise ValueError(f"{path} is not a loadable ONNX model: {str(exc).strip()[:300]}") from exc
        self.device = "cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu"
        self.provider = self.session.get_providers()[0]
        self.input_names = [i.name for i in self.session.get_inputs()]
        final = self.session.get_modelmeta().custom_metadata_map.get(FINAL_ALIGN_CORNERS_KEY)
        self.final_align_corners = None if final is None else bool(json.loads(final))
        self.name = "onnxruntime"

    def __call__(self, rgb: Tensor, second: Tensor | None) -> Tensor:
        feeds = {self.input_names[0]: rgb.numpy()}
        if len(self.input_names) > 1:
            if second is None:
                raise ValueError("this ONNX model takes a second (depth) input")
            feeds[self.input_names[1]] = second.numpy()
        (logits,) = self.session.run(None, feeds)
        return torch.from_numpy(logits)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint metadata that an export stored in the ONNX file.

    Raises:
        FileNotFoundError: no such file. ValueError: not an ONNX model, or not one of ours.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model (truncated or corrupt?): {exc}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise ValueError(f"{path} has no {ONNX_METADATA_KEY!r} metadata: it was not exported by `rgbd-seg export`")
    return json.loads(props[ONNX_METADATA_KEY])


def export_model_onnx(
    model: nn.Module,
    inputs: tuple[Tensor, Tensor | None],
    out: str | Path,
    metadata: dict[str, Any],
    extra: dict[str, str] | None = None,
    coarse: bool = False,
) -> Path:
    """Export ``model(*inputs)`` (fixed shapes) to ``out`` atomically, storing ``metadata`` in the file.

    ``metadata`` is the checkpoint's; its ``input_size`` becomes the inputs' (h, w). ``extra`` adds more
    string metadata entries. Read it back with :func:`read_onnx_metadata`. ``coarse``: the graph returns the
    model's coarse logits where it has them (recorded under :data:`FINAL_ALIGN_CORNERS_KEY`); else logits at the
    input size, what other consumers of the file expect.
    """
    import onnx

    from rgbd_seg_ros.onnx_ops import export_onnx

    rgb, second = inputs
    args = (rgb, second)
    names = ["rgb", "depth"] if second is not None else ["rgb"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        exported = tmp.with_name(tmp.name + ".onnx")  # the exporter may write beside it; keep the name unique
        try:
            with coarse_logits(model) if coarse else nullcontext() as align_corners:
                export_onnx(model.eval(), args, exported, opset=OPSET, input_names=names, output_names=["logits"])
            graph = onnx.load(str(exported))
        finally:
            exported.unlink(missing_ok=True)
        entries = {ONNX_METADATA_KEY: json.dumps({**metadata, "input_size": list(rgb.shape[-2:])}), **(extra or {})}
        if align_corners is not None:
            entries[FINAL_ALIGN_CORNERS_KEY] = json.dumps(align_corners)
        for key, value in entries.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(tmp))
    return out


def cache_key(checkpoint_sha256: str, size: tuple[int, int]) -> str:
    """Export-cache key: checkpoint content, input size, opset, the graph's form (coarse logits) and the versions of
    everything in the export."""
    import onnx
    import onnxruntime

    from rgbd_seg_ros import __version__

    parts = [checkpoint_sha256, f"{size[0]}x{size[1]}", f"opset{OPSET}", "coarse", torch.__version__,
             onnx.__version__, onnxruntime.__version__, __version__]  # fmt: skip
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


class CachedOnnxBackend:
    """A torch checkpoint run by ONNX Runtime: exported on first use per input size, cached on disk.

    The cache entry ``<cache_dir>/<checkpoint stem>-<h>x<w>-<key>.onnx`` is keyed by the checkpoint's SHA-256,
    the input size, the opset and the library versions (:func:`cache_key`), written atomically, and checked
    when loaded: an entry that does not load or carries another key is exported again. The graph returns the
    model's coarse logits where it has them (``export_model_onnx(coarse=True)``).

    Args:
        model: the loaded torch model (used for exporting only).
        metadata: the checkpoint's metadata (stored in the export).
        checkpoint: the checkpoint file (its content keys the cache).
        cache_dir: the cache folder (created when needed).
        device, num_threads: as :class:`OnnxRuntimeBackend`.
    """

    def __init__(
        self,
        model: nn.Module,
        metadata: dict[str, Any],
        checkpoint: str | Path,
        cache_dir: str | Path,
        device: str = "cpu",
        num_threads: int = 0,
    ) -> None:
        self.model = model.eval()
        self.metadata = metadata
        self.checkpoint = Path(checkpoint)
        self.cache_dir = Path(cache_dir).expanduser()
        self.sha256 = file_sha256(self.checkpoint)
        self.num_threads = int(num_threads)
        self.device = "cpu" if device in ("cpu", "auto") and not has_tensorrt() else device
        self.final_align_corners = final_align_corners(self.model)
        self.name = "onnxruntime"
        self._sessions: dict[tuple[int, int], OnnxRuntimeBackend] = {}
        self.exports = 0  # exports done by this backend (tests, logs)

    def entry(self, size: tuple[int, int]) -> Path:
        """The cache file for input size (h, w)."""
        key = cache_key(self.sha256, size)
        return self.cache_dir / f"{self.checkpoint.stem}-{size[0]}x{size[1]}-{key}.onnx"

    def _load(self, path: Path, key: str) -> OnnxRuntimeBackend | None:
        """The cached session, or None when the entry is missing, corrupt or stale (then it is removed)."""
        if not path.is_file():
            return None
        try:
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            if props.get(CACHE_KEY) != key:
                raise ValueError("stale cache key")
            return OnnxRuntimeBackend(path, self.device, self.num_threads, self.cache_dir)
        except Exception as exc:  # any failure means: rebuild
            LOG.warning("ONNX cache entry %s is unusable (%s): exporting it again", path, str(exc)[:200])
            path.unlink(missing_ok=True)
            return None

    def session(self, rgb: Tensor, second: Tensor | None) -> OnnxRuntimeBackend:
        """The session for these inputs' size, exporting (and caching) the model first when needed."""
        size = (int(rgb.shape[-2]), int(rgb.shape[-1]))
        if size in self._sessions:
            return self._sessions[size]
        path, key = self.entry(size), cache_key(self.sha256, size)
        runner = self._load(path, key)
        if runner is None:
            LOG.info("exporting %s at %dx%d to ONNX (once; cached in %s)", self.checkpoint.name, *size, self.cache_dir)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            export_model_onnx(self.model, (rgb, second), path, self.metadata, {CACHE_KEY: key}, coarse=True)
            self.exports += 1
            runner = OnnxRuntimeBackend(path, self.device, self.num_threads, self.cache_dir)
        self._sessions[size] = runner
        return runner

    @property
    def provider(self) -> str:
        sessions = list(self._sessions.values())
        return sessions[0].provider if sessions else "not yet exported"

    def __call__(self, rgb: Tensor, second: Tensor | None) -> Tensor:
        return self.session(rgb, second)(rgb, second)
