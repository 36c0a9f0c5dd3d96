"""Does depth help? Train an RGB-only baseline and three RGB-D models with the same ResNet-18 trunk and the same
budget on the synthetic rooms, then compare their mIoU on the test split.

Usage: ``python benchmarks/synthetic_fusion.py [--iters 250] [--size 64x96] [--batch 8] [--out runs/fusion]``
and ``… --trunk compact --models rgb,sgnet --size 120x160 --iters 600`` (the demo checkpoint's budget and trunk).

Models (recipes ``training/configs/synthetic_*.yaml``, all on a full-width ResNet-18 from scratch; ``--trunk
compact`` keeps the half-width ResNet-18 of the SGNet/RGB recipes, which SA-Gate and ACNet do not offer):

* ``rgb``: SGNet's own baseline (the same trunk and FCN heads, no S-Convs): depth unused;
* ``sgnet``: depth-guided S-Convs;
* ``sagate``: RGB + HHA streams with SA-Gates, DeepLabV3+ head;
* ``acnet``: RGB, depth and fusion branches with attention modules.

The budget is identical: the same generated rooms, image size, augmentation, iterations, batch, optimiser
(SGD lr 0.02, poly) and seed. Each model is then evaluated single-scale through the Segmenter from its saved
checkpoint. A model whose ``<out>/<name>/model.safetensors`` exists is not retrained (delete it to rerun).
The synthetic rooms make colour uninformative on purpose (every surface draws from one palette), so the gap
measures how much each model gets out of geometry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
FULL_WIDTH = ["model.options.width=64", "model.options.head_channels=512", "model.options.proj_channels=64"]
MODELS: dict[str, tuple[str, list[str]]] = {
    "rgb": ("synthetic_rgb_r18.yaml", FULL_WIDTH),
    "sgnet": ("synthetic_sgnet_r18.yaml", FULL_WIDTH),
    "sagate": ("synthetic_sagate_r18.yaml", []),
    "acnet": ("synthetic_acnet_r18.yaml", []),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=250, help="optimiser steps per model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", default="64x96", help="HxW of the rooms (multiples of 32 for ACNet)")
    p.add_argument("--trunk", choices=("full", "compact"), default="full", help="ResNet-18 width for rgb/sgnet")
    p.add_argument("--train", type=int, default=200, help="training rooms")
    p.add_argument("--test", type=int, default=40, help="test rooms")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--out", default="runs/synthetic_fusion")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from rgbd_seg_ros.models.checkpoints import read_metadata
    from rgbd_seg_ros.pipeline import Segmenter
    from training.data import open_split
    from training.engine import Trainer
    from training.evaluation import evaluate

    h, w = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    budget = [
        f"data.synthetic={{n_train: {args.train}, n_test: {args.test}, height: {h}, width: {w}, seed: 0}}",
        f"data.synthetic_cache={out / 'data'}",
        f"augment.crop=[{h},{w}]",
        f"eval.input_size=[{h},{w}]",
        f"max_iters={args.iters}",
        f"batch_size={args.batch}",
        f"threads={args.threads}",
        f"data.num_workers={args.workers}",
        "val_every=0",
        "data.val_split=null",
        "checkpoint_every=0",
    ]
    rows = []
    for name in args.models.split(","):
        recipe, extra = MODELS[name]
        if args.trunk == "compact":
            if name not in ("rgb", "sgnet"):
                raise SystemExit(f"--trunk compact applies to rgb and sgnet only, not {name}")
            extra = []
        cfg = load_config(CONFIGS / recipe, [*budget, *extra, f"out_dir={out / name}"])
        ckpt = out / name / "model.safetensors"
        seconds = None
        if not ckpt.is_file():
            t0 = time.perf_counter()
            Trainer(cfg).run()
            seconds = time.perf_counter() - t0
            (out / name / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
        elif (out / name / "train_seconds.txt").is_file():
            seconds = float((out / name / "train_seconds.txt").read_text())
        segmenter = Segmenter.from_checkpoint(ckpt, device="cpu", precision="fp32", depth_fill=cfg.data.depth_fill)
        cm = evaluate(segmenter, open_split(cfg, "test")).matrix
        params = sum(p.numel() for p in segmenter.backend.model.parameters()) / 1e6
        meta = read_metadata(ckpt)
        rows.append({"model": name, "recipe": recipe, "architecture": meta["model"], "backbone": meta["backbone"],
                     "params_m": round(params, 2), "train_s": seconds, "miou": 100 * cm.miou(),
                     "pixel_acc": 100 * cm.pixel_accuracy(), "mean_acc": 100 * cm.mean_accuracy()})  # fmt: skip
        print(f"{name}: mIoU {rows[-1]['miou']:.2f}", file=sys.stderr, flush=True)

    base = next((r["miou"] for r in rows if r["model"] == "rgb"), None)
    print(f"\nSynthetic rooms {h}x{w}: {args.train} train / {args.test} test; {args.trunk} ResNet-18; budget per "
          f"model: {args.iters} steps of batch {args.batch} (SGD lr 0.02, poly), same data and seed; CPU, "
          f"{args.threads} thread(s) [torch {torch.__version__}]")  # fmt: skip
    print(f"{'model':<8} {'arch':<7} {'params':>8} {'train s':>8} {'mIoU':>6} {'pix acc':>8} {'Δ mIoU vs RGB':>14}")
    for r in rows:
        delta = f"{r['miou'] - base:+.2f}" if base is not None and r["model"] != "rgb" else "-"
        train_s = f"{r['train_s']:.0f}" if r["train_s"] is not None else "?"
        print(f"{r['model']:<8} {r['architecture']:<7} {r['params_m']:>7.2f}M {train_s:>8} {r['miou']:>6.2f} "
              f"{r['pixel_acc']:>8.2f} {delta:>14}")  # fmt: skip
    if base is not None and len(rows) > 1:
        best = max((r for r in rows if r["model"] != "rgb"), key=lambda r: r["miou"])
        print(f"best RGB-D ({best['model']}) − RGB-only: {best['miou'] - base:+.2f} mIoU points (target ≥ +20)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"size": [h, w], "iters": args.iters, "batch": args.batch,
                                                  "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
