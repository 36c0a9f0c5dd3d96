"""How many intra-op threads should the node use? The whole Segmenter path timed with 1, 2, ... threads.

The default ``num_threads`` (``rgbd_seg_ros/settings.py: DEFAULT_NUM_THREADS``) was picked from this script's
figures. Each thread count is timed in interleaved rounds in one process (same frames, same model), and every
figure is printed as a ratio to the 1-thread run beside it, so a busy machine still gives comparable numbers.

    .venv/bin/python benchmarks/threads.py                                   # bundled checkpoint, default path
    .venv/bin/python benchmarks/threads.py --backend torch --threads 1 2 4
    .venv/bin/python benchmarks/threads.py --checkpoint model.safetensors --input-size 480x640
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from rgbd_seg_ros.cli import _size
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.settings import RunOptions, apply_num_threads
from rgbd_seg_ros.synthetic import SceneGenerator

BUNDLED = Path(__file__).resolve().parents[1] / "rgbd_seg_ros" / "data" / "sgnet_r18_synthetic.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(BUNDLED), help="default: the bundled SGNet-R18 checkpoint")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"))
    p.add_argument("--input-size", type=_size, help="model input HxW (default: the checkpoint's)")
    p.add_argument("--frame-size", type=_size, default=(480, 640), help="camera frame HxW (default: 480x640)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    p.add_argument("--frames", type=int, default=4, help="frames per round (default: 4)")
    args = p.parse_args()

    frames = [SceneGenerator(*args.frame_size, seed=200 + i).sample(0).frame for i in range(args.frames)]
    segmenters = {}
    for n in args.threads:
        options = RunOptions(backend=args.backend, input_size=args.input_size, num_threads=n)
        segmenters[n] = Segmenter.from_checkpoint(args.checkpoint, options)
        segmenters[n].warmup(args.frame_size)
    first = segmenters[args.threads[0]]
    h, w = first.model_size(args.frame_size)
    frame = f"{args.frame_size[0]}x{args.frame_size[1]}"
    print(f"{Path(args.checkpoint).name}: {first.backend_name}, model input {h}x{w}, frame {frame}; "
          f"load average {os.getloadavg()[0]:.2f}; ms per frame")  # fmt: skip
    totals: dict[int, list[float]] = {n: [] for n in args.threads}
    models: dict[int, list[float]] = {n: [] for n in args.threads}
    for _ in range(args.rounds):
        for n, seg in segmenters.items():
            apply_num_threads(n)  # torch's count is process-wide; ONNX Runtime sessions keep their own
            for frame in frames:
                start = time.perf_counter()
                timings = seg(frame).timings
                totals[n].append((time.perf_counter() - start) * 1e3)
                models[n].append(timings["model"])
    base = min(totals[args.threads[0]])
    print(f"{'threads':>7} {'total min':>10} {'total p50':>10} {'model min':>10} {'vs ' + str(args.threads[0]):>8}")
    for n in args.threads:
        print(f"{n:>7} {min(totals[n]):10.1f} {statistics.median(totals[n]):10.1f} {min(models[n]):10.1f} "
              f"{min(totals[n]) / base:8.2f}")  # fmt: skip
    print(f"torch threads now {torch.get_num_threads()}; cores {os.cpu_count()}")


if __name__ == "__main__":
    main()
