"""GPU paths side by side: torch fp32 / fp16 autocast, ONNX Runtime CUDA, ONNX Runtime TensorRT fp16.

For each model at its size (480×640; AdapNet++/SSMA 384×768): FPS and p95 latency of the forward pass as the
runtime runs it (inputs already on the device for torch; host arrays for ONNX Runtime, as the pipeline feeds it;
coarse logits where the model has them, :mod:`rgbd_seg_ros.models.coarse`), and the largest logit difference of
each path, after that final upsampling, against the same model in float32 on the CPU (random weights, seeded,
BatchNorm calibrated so logits are O(1)). Needs a CUDA GPU; ONNX Runtime's GPU providers need ``onnxruntime-gpu`` (and
TensorRT's libraries for the TensorRT provider); a missing provider is reported, not fatal.

    python benchmarks/gpu.py                         # every model
    python benchmarks/gpu.py --only sgnet --iters 200
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rgbd_seg_ros.backends import OnnxRuntimeBackend, TorchBackend, export_model_onnx
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.coarse import final_align_corners
from rgbd_seg_ros.postprocess import upsample

CASES: list[tuple[str, dict, tuple[int, int]]] = [
    ("sgnet", {"backbone": "resnet18"}, (480, 640)),
    ("sgnet", {"backbone": "resnet50"}, (480, 640)),
    ("sgnet", {"backbone": "resnet101"}, (480, 640)),
    ("sagate", {"backbone": "resnet50"}, (480, 640)),
    ("acnet", {"backbone": "resnet50"}, (480, 640)),
    ("gff", {"backbone": "resnet101"}, (480, 640)),
    ("adapnet", {}, (384, 768)),
    ("ssma", {"modality": "hha"}, (384, 768)),
]


def _inputs(model: torch.nn.Module, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    spec = model.input_spec
    rgb = torch.randn(1, 3, *size)
    second = None if spec.depth_encoding == "none" else torch.randn(1, spec.depth_channels, *size)
    return rgb, second


def _calibrate(model: torch.nn.Module, rgb: torch.Tensor, second: torch.Tensor | None) -> None:
    """Two train-mode passes give BatchNorm real statistics (random-weight logits are otherwise ~0)."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        for _ in range(2):
            model(rgb.repeat(2, 1, 1, 1), None if second is None else second.repeat(2, 1, 1, 1))
    model.eval()


def _time(fn: Callable[[], torch.Tensor], iters: int, warmup: int = 10) -> tuple[float, float, torch.Tensor]:
    """(FPS, p95 ms, last output) of ``fn`` (which synchronises)."""
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return 1e3 / statistics.mean(times), sorted(times)[int(0.95 * (len(times) - 1))], out


def _torch_path(model, rgb, second, precision: str) -> Callable[[], torch.Tensor]:
    backend = TorchBackend(model, "cuda", precision)
    rgb_d, second_d = backend.to_device(rgb), backend.to_device(second)

    def run() -> torch.Tensor:
        out = backend(rgb_d, second_d)
        torch.cuda.synchronize()
        return out

    return run


def _ort_path(onnx_path: Path, rgb, second, provider: str, cache: Path) -> Callable[[], torch.Tensor] | str:
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return f"{provider} not available ({', '.join(ort.get_available_providers())})"
    options: dict = {}
    if provider == "TensorrtExecutionProvider":
        options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    try:
        backend = OnnxRuntimeBackend(onnx_path, "cuda", providers=[(provider, options), "CPUExecutionProvider"])
    except (RuntimeError, ValueError) as exc:
        return f"{provider} failed: {str(exc)[:120]}"
    if backend.provider != provider:
        return f"{provider} fell back to {backend.provider}"
    return lambda: backend(rgb, second)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="regular expression on 'model-backbone'")
    p.add_argument("--iters", type=int, default=100, help="timed iterations per path (default: 100)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: error: no CUDA device; run it on a machine with a GPU")
        return 2
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; FPS / p95 ms / max |logit - CPU fp32|")
    paths = ("torch fp32", "torch fp16", "ORT CUDA", "ORT TensorRT fp16")
    print(f"{'model':<18} {'size':>8} " + " ".join(f"{name:>28}" for name in paths))
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs, size in CASES:
            label = f"{name}-{kwargs.get('backbone', kwargs.get('modality', ''))}".rstrip("-")
            if args.only and not re.search(args.only, label):
                continue
            model = build_model(name, 40 if name not in ("adapnet", "ssma") else 19, **kwargs)
            rgb, second = _inputs(model, size)
            _calibrate(model, rgb, second)
            with torch.inference_mode():
                reference = model.float().cpu()(rgb, second)
            # As the runtime runs them: coarse logits where the model has them (compared after their upsampling).
            onnx_path = Path(tmp) / f"{label}.onnx"
            export_model_onnx(model, (rgb, second), onnx_path, {"model": name}, coarse=True)
            align_corners = final_align_corners(model)
            steps = [] if align_corners is None else [(size, align_corners)]
            runners: list[Callable[[], torch.Tensor] | str] = [
                _torch_path(model, rgb, second, "fp32"),
                _torch_path(model, rgb, second, "fp16"),
                _ort_path(onnx_path, rgb, second, "CUDAExecutionProvider", Path(tmp)),
                _ort_path(onnx_path, rgb, second, "TensorrtExecutionProvider", Path(tmp)),
            ]
            cells = []
            for runner in runners:
                if isinstance(runner, str):
                    cells.append(runner[:28])
                    continue
                fps, p95, out = _time(runner, args.iters)
                diff = (upsample(out.float().cpu(), steps) - reference).abs().max().item()
                cells.append(f"{fps:7.1f} / {p95:6.2f} / {diff:8.2e}")
            print(f"{label:<18} {size[0]:>3}x{size[1]:<4} " + " ".join(f"{c:>28}" for c in cells), flush=True)
            model.cpu()
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
