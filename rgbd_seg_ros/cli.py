"""``rgbd-seg``: the package's command line (demo, models; replay, make-bag, export and benchmark join later)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``480x640``) into (height, width)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 480x640 (height x width), got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return h, w


def cmd_demo(args: argparse.Namespace) -> int:
    """Render synthetic RGB-D scenes and write preview PNGs (RGB | depth | labels) to ``args.out``."""
    import cv2
    import numpy as np
    from tqdm import tqdm

    from rgbd_seg_ros.labels import colorize, get_label_set
    from rgbd_seg_ros.synthetic import SceneGenerator
    from rgbd_seg_ros.visualize import colorize_depth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label_set = get_label_set("synthetic")
    gen = SceneGenerator(height=args.size[0], width=args.size[1], seed=args.seed)
    for i in tqdm(range(args.frames), desc="demo", unit="frame"):
        scene = gen.sample(i)
        labels = colorize(label_set.to_train_ids(scene.labels), label_set)
        panel = np.concatenate([scene.frame.rgb, colorize_depth(scene.frame.depth), labels], axis=1)
        cv2.imwrite(str(out / f"preview_{i:03d}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.frames} previews (RGB | depth | labels) to {out.resolve()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print parameters and GMACs of every registered model/backbone."""
    from rgbd_seg_ros.models.summary import print_model_table

    print_model_table(size=args.size, macs=not args.no_macs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgbd-seg", description="Real-time RGB-D semantic segmentation tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo on the embedded synthetic scenes")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--frames", type=int, default=4, help="number of synthetic frames (default: 4)")
    demo.add_argument("--size", type=_size, default=(480, 640), help="frame size HxW (default: 480x640)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    demo.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="table of registered models: parameters and GMACs")
    models.add_argument("--size", type=_size, default=(480, 640), help="input size HxW for GMACs (default: 480x640)")
    models.add_argument("--no-macs", action="store_true", help="parameters only (fast)")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
