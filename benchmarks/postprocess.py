"""Post-processing cost against the forward pass: logits → labels + confidence at the frame size.

In one process, on the bundled checkpoint and 480×640 synthetic frames, per thread count and model input size:

* **before**: the graph that ends with SGNet's final upsampling (logits at the input size, what ``rgbd-seg
  export`` writes), then the dense definition: every class upsampled to the frame, max, arg-max and Σ exp;
* **after** (the default path): the cached graph that ends at SGNet's 1/16 logits, then
  ``rgbd_seg_ros.postprocess.labels_and_confidence`` (that upsampling folded into the post-process);

with the ONNX Runtime forward of each graph, the post-process as a share of the forward it follows, the whole
(forward + post-process), the pixels whose labels differ between before and after, and how far the confidence
moved (its definition changed: softmax at the input size before, at the model's 1/16 logits, interpolated, after;
mean and largest absolute difference). ``--rooms N`` also
scores both label images against the ground truth of N synthetic rooms (mIoU, %). Figures are minima over
``--rounds`` interleaved rounds.

    .venv/bin/python benchmarks/postprocess.py                      # 1 and 2 threads, 480x640 and 120x160 input
    .venv/bin/python benchmarks/postprocess.py --threads 1 --rounds 10 --rooms 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from rgbd_seg_ros.backends import OnnxRuntimeBackend, export_model_onnx
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.postprocess import labels_and_confidence, upsample
from rgbd_seg_ros.settings import RunOptions, apply_num_threads
from rgbd_seg_ros.synthetic import SceneGenerator

BUNDLED = Path(__file__).resolve().parents[1] / "rgbd_seg_ros" / "data" / "sgnet_r18_synthetic.safetensors"
FRAME = (480, 640)


def dense(logits: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition computed densely: every class upsampled, then max, arg-max and 1 / Σ exp(l − max)."""
    up = upsample(logits[None], [((height, width), False)])[0]
    top, labels = up.max(0)
    return labels, torch.exp(up - top).sum(0).reciprocal()


def best_ms(fns: dict[str, object], rounds: int) -> dict[str, float]:
    """Minimum ms per function over ``rounds`` interleaved rounds, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(BUNDLED))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rooms", type=int, default=0, help="also score both label images on this many rooms")
    args = p.parse_args()
    scenes = [SceneGenerator(*FRAME, seed=300 + i).sample(0) for i in range(max(3, args.rooms))]
    print(f"{Path(args.checkpoint).name}, frame {FRAME[0]}x{FRAME[1]}, load average {os.getloadavg()[0]:.2f}; "
          "ms, minimum over rounds; post/fwd = post-process / the forward it follows")  # fmt: skip
    print(f"{'threads':>7} {'input':>7} | {'fwd':>6} {'post':>6} {'post/fwd':>8} {'total':>6} | {'fwd':>6} "
          f"{'post':>6} {'post/fwd':>8} {'total':>6} | {'labels differ':>19} | {'confidence |Δ|':>14}")  # fmt: skip
    print(f"{'':>15} | {'before (full graph, dense)':^31} | {'after (coarse graph, lean)':^31} |")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (FRAME, None):
            for n in args.threads:
                seg = Segmenter.from_checkpoint(args.checkpoint, RunOptions(input_size=size, num_threads=n))
                apply_num_threads(n)
                inputs = [seg.prepare(s.frame) for s in scenes]
                model_size = tuple(inputs[0][0].shape[-2:])
                full_path = Path(tmp) / f"full-{model_size[0]}x{model_size[1]}.onnx"
                if not full_path.exists():
                    export_model_onnx(seg.backend.model, inputs[0], full_path, seg.metadata)
                full = OnnxRuntimeBackend(full_path, num_threads=n)
                coarse = seg.backend.session(*inputs[0])
                steps = [(model_size, coarse.final_align_corners), (FRAME, False)]
                full_logits = [full(*x)[0] for x in inputs]
                coarse_logits = [coarse(*x)[0] for x in inputs]
                t = best_ms(
                    {
                        "fwd before": lambda: full(*inputs[0]),  # noqa: B023
                        "fwd after": lambda: coarse(*inputs[0]),  # noqa: B023
                        "post before": lambda: dense(full_logits[0], *FRAME),  # noqa: B023
                        "post after": lambda: labels_and_confidence(coarse_logits[0], steps),  # noqa: B023
                    },
                    args.rounds,
                )
                before, before_confidence = zip(*(dense(x, *FRAME) for x in full_logits))
                after, after_confidence = zip(*(labels_and_confidence(x, steps) for x in coarse_logits))
                differ = sum(int((a != b.long()).sum()) for a, b in zip(before, after))
                moved = torch.stack(before_confidence) - torch.stack(after_confidence)
                cells = []
                for key in ("before", "after"):
                    fwd, post = t[f"fwd {key}"], t[f"post {key}"]
                    cells.append(f"{fwd:6.1f} {post:6.1f} {100 * post / fwd:7.1f}% {fwd + post:6.1f}")
                pixels = len(before) * FRAME[0] * FRAME[1]
                print(f"{n:>7} {'x'.join(map(str, model_size)):>7} | {cells[0]} | {cells[1]} | "
                      f"{differ:>5} of {pixels:>10} | {moved.abs().mean():.3f} / {moved.abs().max():.2f}")  # fmt: skip
                if args.rooms and n == args.threads[0]:
                    for key, labels in (("before", before), ("after", after)):
                        matrix = ConfusionMatrix(seg.label_set.num_classes)
                        for scene, predicted in zip(scenes, labels):
                            matrix.update(predicted.long().numpy(), seg.label_set.to_train_ids(scene.labels))
                        print(f"{'':>15}   mIoU {key} {matrix.as_dict()['miou']:.4f} % on {len(scenes)} rooms")


if __name__ == "__main__":
    main()
