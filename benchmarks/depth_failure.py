"""When depth fails: mIoU and mean confidence on the synthetic test rooms with full, half, no and realistically
failing depth, for the model trained without and with depth-failure augmentation and the RGB-only model.

Usage::

    python benchmarks/depth_failure.py --baseline OLD.safetensors [--checkpoint NEW.safetensors] [--rgb RGB.safetensors]

Models (the demo recipe's compact SGNet-R18 trunk and budget: 600 steps of batch 8 at 120×160):

* (a) ``--baseline``: trained without depth failure (``synthetic_sgnet_r18.yaml`` with ``augment.depth_failure``
  all 0: the bundled checkpoint before issue 20). Without a path it is trained here into ``<out>/baseline``.
* (b) ``--checkpoint``: trained with depth failure (default: the bundled ``sgnet_r18_synthetic.safetensors``).
* (c) ``--rgb``: the RGB-only model (``synthetic_rgb_r18.yaml``: the same trunk and heads without S-Convs). Without a
  path it is trained here into ``<out>/rgb``.

Test rooms: the synthetic test split of the recipes (``SceneGenerator(120, 160, seed=0)`` scenes 200…239, as
``write_dataset`` writes them), rendered here so that the object instances are known. Conditions, applied to the
frame before the Segmenter (which then limits the range, fills and encodes as at run time):

* ``full``: the sensor's depth as rendered (Kinect-like holes at edges and on the generator's specular objects);
* ``half``: the left half of the depth missing;
* ``none``: no depth at all;
* ``mix``: a realistic failure mix, drawn per room from ``(seed, room)``: a far-range limit drawn in [3, 5] m
  (active stereo in daylight), each furniture object (the generator's instances) losing its depth with p = 0.25
  (glass, mirrors, glossy or black surfaces), with p = 0.5 one sunlight patch (an ellipse with semi-axes 10–30 %
  of the image sides), and 5 % of the pixels dropped at random (speckle).

Each model runs single-scale through the Segmenter (torch backend, fp32, 1 thread). Mean confidence is the mean over
all pixels of the softmax probability of the chosen class (``Segmentation.confidence``). Goals (issue 20): with no
depth, (b) within 2 mIoU points of (c); with full depth, (b) within 1 point of (a); confidence not higher with
depth missing than with full depth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
BUNDLED = ROOT / "rgbd_seg_ros" / "data" / "sgnet_r18_synthetic.safetensors"
CONDITIONS = ("full", "half", "none", "mix")
SIZE = (120, 160)
N_TRAIN, N_TEST, DATA_SEED = 200, 40, 0
NO_FAILURE = [f"augment.depth_failure.{m}=0" for m in ("frame", "regions", "far", "specular", "speckle")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="(a) checkpoint trained without depth failure (default: train it)")
    p.add_argument("--checkpoint", default=str(BUNDLED), help="(b) checkpoint trained with depth failure")
    p.add_argument("--rgb", help="(c) RGB-only checkpoint of the same trunk and budget (default: train it)")
    p.add_argument("--rooms", type=int, default=N_TEST, help="test rooms (the first N of the test split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the realistic failure mix")
    p.add_argument("--out", default="runs/depth_failure", help="trained models and results.json")
    return p.parse_args()


def mix_depth(scene, rng: np.random.Generator) -> np.ndarray:
    """The realistic failure mix of one rendered scene (see the module docstring): float32 H×W metres, NaN = none."""
    import cv2

    depth = scene.frame.depth.copy()
    h, w = depth.shape
    with np.errstate(invalid="ignore"):
        depth[depth > rng.uniform(3.0, 5.0)] = np.nan
    objects = np.unique(scene.instance[scene.instance >= 0])
    glossy = objects[rng.random(objects.size) < 0.25]
    depth[np.isin(scene.instance, glossy)] = np.nan
    if rng.random() < 0.5:
        patch = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.uniform(0.1, 0.3) * w), int(rng.uniform(0.1, 0.3) * h))
        cv2.ellipse(patch, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        depth[patch > 0] = np.nan
    depth[rng.random((h, w)) < 0.05] = np.nan
    return depth


def condition_frames(rooms: int, seed: int, label_set):
    """``{condition: [RGBDFrame]}`` and the train-id ground truth of the test rooms."""
    from dataclasses import replace

    from rgbd_seg_ros.synthetic import SceneGenerator

    gen = SceneGenerator(*SIZE, seed=DATA_SEED)
    frames: dict[str, list] = {c: [] for c in CONDITIONS}
    truths = []
    for i in range(rooms):
        scene = gen.sample(N_TRAIN + i)
        frame = scene.frame
        truths.append(label_set.to_train_ids(scene.labels))
        half = frame.depth.copy()
        half[:, : SIZE[1] // 2] = np.nan
        frames["full"].append(frame)
        frames["half"].append(replace(frame, depth=half))
        frames["none"].append(replace(frame, depth=np.full_like(frame.depth, np.nan)))
        frames["mix"].append(replace(frame, depth=mix_depth(scene, np.random.default_rng([seed, i]))))
    return frames, truths


def train(recipe: str, overrides: list[str], out: Path) -> Path:
    """Train ``recipe`` (the demo budget) into ``out`` unless ``out/model.safetensors`` exists; its path."""
    from training.config import load_config
    from training.engine import Trainer

    ckpt = out / "model.safetensors"
    if not ckpt.is_file():
        budget = [f"out_dir={out}", f"data.synthetic_cache={out.parent / 'data'}", "threads=1"]
        cfg = load_config(CONFIGS / recipe, [*overrides, *budget])
        t0 = time.perf_counter()
        Trainer(cfg).run()
        print(f"trained {recipe} in {time.perf_counter() - t0:.0f} s → {ckpt}", file=sys.stderr)
    return ckpt


def evaluate(path: str | Path, frames: dict[str, list], truths: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """``{condition: {miou, pixel_acc, confidence}}`` of the checkpoint at ``path`` (percent; confidence 0..1)."""
    from rgbd_seg_ros.metrics import ConfusionMatrix
    from rgbd_seg_ros.pipeline import Segmenter

    segmenter = Segmenter.from_checkpoint(path, device="cpu", backend="torch", precision="fp32", num_threads=1)
    label_set = segmenter.label_set
    out = {}
    for condition, batch in frames.items():
        cm = ConfusionMatrix(label_set.num_classes, ignore_index=label_set.ignore_index)
        confidence = []
        for frame, truth in zip(batch, truths):
            result = segmenter(frame)
            cm.update(result.labels, truth)
            confidence.append(float(np.mean(result.confidence)))
        out[condition] = {
            "miou": 100 * cm.miou(),
            "pixel_acc": 100 * cm.pixel_accuracy(),
            "confidence": float(np.mean(confidence)),
        }
    return out


def main() -> None:
    args = parse_args()
    import torch

    from rgbd_seg_ros.frames import valid_depth_fraction
    from rgbd_seg_ros.labels import get_label_set
    from rgbd_seg_ros.settings import DEFAULT_DEPTH_RANGE_M

    out = Path(args.out)
    models = {
        "a": ("(a) today's recipe", args.baseline or train("synthetic_sgnet_r18.yaml", NO_FAILURE,
                                                                       out / "baseline")),
        "b": ("(b) + depth failure", args.checkpoint),
        "c": ("(c) RGB only", args.rgb or train("synthetic_rgb_r18.yaml", [], out / "rgb")),
    }  # fmt: skip
    frames, truths = condition_frames(args.rooms, args.seed, get_label_set("synthetic"))
    valid = {c: 100 * float(np.mean([valid_depth_fraction(f, *DEFAULT_DEPTH_RANGE_M) for f in fs]))
             for c, fs in frames.items()}  # fmt: skip
    results = {key: evaluate(path, frames, truths) for key, (_, path) in models.items()}

    print(f"\nSynthetic test rooms {SIZE[0]}x{SIZE[1]} (SceneGenerator seed {DATA_SEED}, rooms {N_TRAIN}…"
          f"{N_TRAIN + args.rooms - 1}), single scale, CPU fp32 [torch {torch.__version__}]")  # fmt: skip
    for name, path in models.values():
        print(f"  {name}: {path}")
    head = "".join(f" | {name:^25}" for name, _ in models.values())
    print(f"\n{'condition':<10} {'valid depth':>11}{head}")
    print(f"{'':<10} {'':>11}" + " | {:>12} {:>13}".format("mIoU", "confidence") * len(models))
    for c in CONDITIONS:
        cells = "".join(f" | {results[k][c]['miou']:>12.2f} {results[k][c]['confidence']:>13.3f}" for k in models)
        print(f"{c:<10} {valid[c]:>10.1f}%{cells}")

    a, b, rgb = results["a"], results["b"], results["c"]
    goals = [
        ("no depth: (b) within 2 points of (c)", b["none"]["miou"] - rgb["none"]["miou"], -2.0),
        ("full depth: (b) within 1 point of (a)", b["full"]["miou"] - a["full"]["miou"], -1.0),
    ]
    print()
    for text, delta, limit in goals:
        verdict = "met" if delta >= limit else f"MISSED by {limit - delta:.2f} points"
        print(f"{text}: {delta:+.2f} → {verdict}")
    for key in ("a", "b"):
        r = results[key]
        higher = [c for c in ("half", "none", "mix") if r[c]["confidence"] > r["full"]["confidence"]]
        claim = f"higher than with full depth in {', '.join(higher)}" if higher else "never higher than with full depth"
        print(f"{models[key][0]}: mean confidence with depth missing is {claim}")
    out.mkdir(parents=True, exist_ok=True)
    rows = {k: {"name": n, "checkpoint": str(p), "results": results[k]} for k, (n, p) in models.items()}
    (out / "results.json").write_text(json.dumps({"valid_depth_percent": valid, "models": rows}, indent=1))


if __name__ == "__main__":
    main()
