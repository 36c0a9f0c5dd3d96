"""Post-processing cost against the forward pass: logits → labels + confidence at the frame size.

Times, in one process on the same logits, the previous definition (upsample every class, softmax-max, argmax)
and ``rgbd_seg_ros.postprocess.labels_and_confidence``, next to the ONNX Runtime forward pass of the same model,
and checks that the labels are identical. Two settings: the model at the frame size (480×640, the issue's case)
and at the bundled checkpoint's training size (120×160) with a 480×640 frame (the default path).

    .venv/bin/python benchmarks/postprocess.py                 # bundled checkpoint, 1 and 2 threads
    .venv/bin/python benchmarks/postprocess.py --threads 1 --rounds 10
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.postprocess import labels_and_confidence
from rgbd_seg_ros.settings import RunOptions, apply_num_threads
from rgbd_seg_ros.synthetic import SceneGenerator

BUNDLED = Path(__file__).resolve().parents[1] / "rgbd_seg_ros" / "data" / "sgnet_r18_synthetic.safetensors"
FRAME = (480, 640)


def previous(logits: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition before: every class upsampled, then max and 1 / Σ exp(l − max)."""
    up = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    top, labels = up.max(0)
    return labels, torch.exp(up - top).sum(0).reciprocal()


def best_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(BUNDLED))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    frames = [SceneGenerator(*FRAME, seed=300 + i).sample(0).frame for i in range(3)]
    print(f"{Path(args.checkpoint).name}, frame {FRAME[0]}x{FRAME[1]}, load average {os.getloadavg()[0]:.2f}; "
          "min ms over rounds")  # fmt: skip
    print(f"{'threads':>7} {'model input':>11} {'ORT forward':>11} {'before':>8} {'after':>7} {'speed-up':>8} "
          f"{'after/fwd':>9} {'labels equal':>12}")  # fmt: skip
    for size in (FRAME, None):
        for n in args.threads:
            seg = Segmenter.from_checkpoint(args.checkpoint, RunOptions(input_size=size, num_threads=n))
            seg.warmup(FRAME)
            apply_num_threads(n)
            rgb, second = seg.prepare(frames[0])
            forward = best_ms(lambda: seg.backend(rgb, second), args.rounds)  # noqa: B023
            logits = [seg.backend(*seg.prepare(f))[0] for f in frames]
            before = min(best_ms(lambda x=x: previous(x, *FRAME), args.rounds) for x in logits)
            after = min(best_ms(lambda x=x: labels_and_confidence(x, *FRAME), args.rounds) for x in logits)
            equal = all(torch.equal(previous(x, *FRAME)[0], labels_and_confidence(x, *FRAME)[0].long()) for x in logits)
            h, w = logits[0].shape[-2:]
            model_input = "x".join(map(str, seg.model_size(FRAME)))
            print(f"{n:>7} {model_input:>11} {forward:11.1f} {before:8.1f} {after:7.1f} {before / after:7.1f}x "
                  f"{100 * after / forward:8.1f}% {equal!s:>12}  (logits {h}x{w})")  # fmt: skip


if __name__ == "__main__":
    main()
