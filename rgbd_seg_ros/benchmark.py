"""Per-stage timing of the Segmenter on synthetic frames (``rgbd-seg benchmark``, ``benchmarks/pipeline.py``).

The baseline run beside it is the bare model forward on the same, already-prepared inputs: the report gives
the overhead of everything but the forward pass as a percentage of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rgbd_seg_ros.pipeline import STAGES, Segmenter
from rgbd_seg_ros.settings import RunOptions
from rgbd_seg_ros.synthetic import SceneGenerator


@dataclass
class PipelineTiming:
    """Median milliseconds per stage over the timed frames, and the bare forward pass beside them."""

    size: tuple[int, int]
    stages: dict[str, float]
    total: float
    bare_forward: float

    @property
    def fps(self) -> float:
        return 1e3 / self.total

    @property
    def overhead_pct(self) -> float:
        """Everything but the forward pass, as a percentage of the bare forward pass."""
        return 100.0 * (self.total - self.stages["model"]) / self.bare_forward


def time_pipeline(segmenter: Segmenter, size: tuple[int, int], frames: int = 10, warmup: int = 2) -> PipelineTiming:
    """Run ``segmenter`` on ``frames`` synthetic frames of ``size`` (H, W) after ``warmup`` runs."""
    gen = SceneGenerator(height=size[0], width=size[1], seed=123)
    scenes = [gen.sample(i).frame for i in range(min(frames, 4))]
    for i in range(warmup):
        segmenter(scenes[i % len(scenes)])
    records = [segmenter(scenes[i % len(scenes)]).timings for i in range(frames)]
    stages = {s: float(np.median([r.get(s, 0.0) for r in records])) for s in STAGES}
    total = float(np.median([r["total"] for r in records]))
    rgb, second = segmenter.prepare(scenes[0])
    to_device = getattr(segmenter.backend, "to_device", lambda x: x)
    rgb, second = to_device(rgb), to_device(second)
    bare = []
    for _ in range(max(3, frames // 2)):
        start = time.perf_counter()
        out = segmenter.backend(rgb, second)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        bare.append((time.perf_counter() - start) * 1e3)
    return PipelineTiming(size=size, stages=stages, total=total, bare_forward=float(np.median(bare)))


def format_timing(name: str, t: PipelineTiming) -> str:
    """One table row: model, size, ms per stage, total, FPS, overhead."""
    cells = " ".join(f"{t.stages[s]:9.1f}" for s in STAGES)
    return (
        f"{name:<14} {t.size[0]:>4}x{t.size[1]:<4} {cells} {t.total:9.1f} {t.fps:6.2f} "
        f"{t.bare_forward:9.1f} {t.overhead_pct:8.1f}%"
    )


def header() -> str:
    cells = " ".join(f"{s:>9}" for s in STAGES)
    return f"{'model':<14} {'size':>9} {cells} {'total':>9} {'FPS':>6} {'bare fwd':>9} {'overhead':>9}"


def run(
    checkpoint: str | Path | None = None,
    sizes: tuple[tuple[int, int], ...] = ((480, 640),),
    frames: int = 10,
    options: RunOptions | None = None,
) -> list[PipelineTiming]:
    """Benchmark a checkpoint (default: a random-weight SGNet-R18, 40 classes, torch) on synthetic frames of each
    of ``sizes`` (H, W) with ``options`` (the package's defaults when None) and print a table (ms)."""
    options = options or RunOptions()
    if checkpoint is None:
        from rgbd_seg_ros.models import build_model

        name = "sgnet-r18"
        model = build_model("sgnet", 40, backbone="resnet18")
        segmenter = Segmenter.from_model(
            model,
            "nyuv2-40",
            device=options.device,
            precision=options.precision,
            input_size=options.input_size,
            depth_fill=options.depth_fill or "fast",
            options=options,
        )
    else:
        name = Path(checkpoint).stem[:14]
        segmenter = Segmenter.from_checkpoint(checkpoint, options)
    results = []
    for i, size in enumerate(sizes):
        timing = time_pipeline(segmenter, size, frames=frames)
        if i == 0:
            model_h, model_w = segmenter.model_size(size)
            print(
                f"backend: {segmenter.backend_name}, device: {segmenter.device}, threads: {torch.get_num_threads()}, "
                f"model input: {model_h}x{model_w}; "
                "times in ms (median)"
            )
            print(header())
        print(format_timing(name, timing), flush=True)
        results.append(timing)
    return results
