"""Model runners behind one small interface: PyTorch (eager, optional ``torch.compile``) and ONNX Runtime.

A backend takes the encoded, normalised input tensors (``rgb`` B×3×h×w, ``second`` B×C×h×w or None, float32
on the CPU) and returns float32 logits B×K×h×w as a torch tensor (on the backend's device).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

#: ONNX metadata key holding the JSON checkpoint metadata (model config, label set, input spec).
ONNX_METADATA_KEY = "rgbd_seg_ros"


class Backend(Protocol):
    device: str

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
    """Eager PyTorch in ``inference_mode``; autocast and channels_last on CUDA, pinned-memory transfers."""

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "auto", compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.cuda = self.device.startswith("cuda")
        model = model.eval().to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model

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
        with torch.inference_mode(), autocast or nullcontext():
            logits = self.model(self.to_device(rgb), self.to_device(second))
        return logits.float()


class OnnxRuntimeBackend:
    """ONNX Runtime session (CPU provider; CUDA / TensorRT providers first when installed and requested)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") or device.startswith("cuda"):
            wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + wanted
            if device != "auto" and len(wanted) == 1:
                raise RuntimeError(f"device {device!r} requested but ONNX Runtime offers only {available}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=wanted)
        self.device = "cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, rgb: Tensor, second: Tensor | None) -> Tensor:
        feeds = {self.input_names[0]: rgb.numpy()}
        if len(self.input_names) > 1:
            if second is None:
                raise ValueError("this ONNX model takes a second (depth) input")
            feeds[self.input_names[1]] = second.numpy()
        (logits,) = self.session.run(None, feeds)
        return torch.from_numpy(logits)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint metadata that :func:`export_onnx` stored in the ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise ValueError(f"{path} has no {ONNX_METADATA_KEY!r} metadata: it was not exported by `rgbd-seg export`")
    return json.loads(props[ONNX_METADATA_KEY])


def export_checkpoint_onnx(checkpoint: str | Path, out: str | Path, input_size: tuple[int, int] = (480, 640)) -> Path:
    """Export a checkpoint to ONNX at a fixed ``input_size`` (H, W), storing its metadata in the file.

    The example inputs are a synthetic frame prepared by the Segmenter, so the exported graph sees exactly the
    tensors the pipeline feeds it. Read the metadata back with :func:`read_onnx_metadata`.
    """
    import onnx

    from rgbd_seg_ros.models.checkpoints import load_checkpoint
    from rgbd_seg_ros.onnx_ops import export_onnx
    from rgbd_seg_ros.pipeline import Segmenter
    from rgbd_seg_ros.synthetic import SceneGenerator

    model, metadata = load_checkpoint(checkpoint)
    segmenter = Segmenter._from_metadata(TorchBackend(model, "cpu", "fp32"), metadata, input_size, "fast")
    h, w = segmenter.model_size(input_size)
    rgb, second = segmenter.prepare(SceneGenerator(h, w, seed=0).sample(0).frame)
    args = (rgb, second)
    names = ["rgb", "depth"] if second is not None else ["rgb"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), args, out, input_names=names, output_names=["logits"])
    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps({**metadata, "input_size": [h, w]})
    onnx.save(graph, str(out))
    return out
