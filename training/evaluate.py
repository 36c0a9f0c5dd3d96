"""Evaluate a checkpoint on a dataset split with the papers' test protocols, through the Segmenter.

Usage::

    python training/evaluate.py --checkpoint runs/syn/model.safetensors --dataset synthetic --root DATA
    python training/evaluate.py --checkpoint sgnet.safetensors --dataset nyudv2 --root /data/NYUDepthv2 --multiscale
    torchrun --nproc_per_node=8 training/evaluate.py --checkpoint … --dataset nyudv2 --root … --multiscale --flip

Defaults come from the checkpoint's recipe (its ``eval`` section: input size, test scales, flip, sliding
window): ``--multiscale`` uses the recipe's scales (``--scales`` gives others), ``--flip`` adds mirrored
frames, ``--sliding`` uses the recipe's window (``--crop``/``--stride`` give others). Prints per-class IoU and
a line ``mIoU: <percent>``; writes ``metrics.json`` (every ratio in percent, and the confusion matrix) and
``confusion.png`` to ``--out``, replacing exactly those two files (atomically) when the folder already has them.

Exit codes: 0 evaluated; 2 bad command line or input (unreadable checkpoint or dataset, unwritable ``--out``;
one line ``evaluate.py: error: …`` names it, checked before evaluating); 130 interrupted (Ctrl-C, one line); 1 an
unexpected error (a bug).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from rgbd_seg_ros.allocator import tune_allocator
from rgbd_seg_ros.settings import BACKENDS, DEFAULT_NUM_THREADS
from training.entry import RunError, guarded

# Per-model test protocols of the papers/authors' code, used when a checkpoint carries no recipe ``eval``.
PAPER_PROTOCOLS: dict[str, dict] = {
    "sgnet": {"input_size": [480, 640], "scales": [0.8, 1.0, 2.0], "flip": False, "sliding": None},
    "sgnet_aspp": {"input_size": [480, 640], "scales": [0.8, 1.0, 2.0], "flip": False, "sliding": None},
    "sagate": {"input_size": None, "scales": [0.75, 1.0, 1.25], "flip": True,
               "sliding": {"crop": [480, 480], "stride": [320, 320]}},
    "acnet": {"input_size": [480, 640], "scales": [1.0], "flip": False, "sliding": None},
    "adapnet": {"input_size": [384, 768], "scales": [1.0], "flip": False, "sliding": None},  # msf scales unpublished
    "ssma": {"input_size": [384, 768], "scales": [1.0], "flip": False, "sliding": None},
    "gff": {"input_size": None, "scales": [0.75, 1.0, 1.25, 1.5, 1.75], "flip": True,
            "sliding": {"crop": [864, 864], "stride": [576, 576]}},
}  # fmt: skip


def _pair(text: str) -> list[int]:
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W of sizes >= 1, got {text!r}")
    return parts


def _scales(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected scales > 0 separated by commas, got {text!r}")
    return values


def _count(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return value

    return parse


def _option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {text!r} is not YAML") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="evaluate.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="model.safetensors written by train.py (or an .onnx export)")
    p.add_argument("--dataset", required=True, help="nyudv2 | sunrgbd | cityscapes | synthetic")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split name (default: test)")
    p.add_argument("--multiscale", action="store_true", help="the recipe's test scales (see --scales)")
    p.add_argument("--scales", type=_scales, help="explicit test scales, e.g. 0.75,1,1.25 (implies --multiscale)")
    p.add_argument("--flip", action="store_true", help="add horizontally mirrored frames")
    p.add_argument("--sliding", action="store_true", help="sliding-window inference (see --crop/--stride)")
    p.add_argument("--crop", type=_pair, help="sliding window H,W")
    p.add_argument("--stride", type=_pair, help="sliding stride H,W (default: 2/3 of the crop)")
    p.add_argument("--input-size", type=_pair, help="resize frames to H,W for the model (default: the recipe's)")
    p.add_argument("--native-size", action="store_true", help="run at each frame's own size")
    p.add_argument("--depth-fill", choices=("fast", "colorization", "none"), help="default: the recipe's")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto = ONNX Runtime on the CPU (exported once to a cache), torch on CUDA")  # fmt: skip
    p.add_argument("--num-threads", type=_count(0), default=DEFAULT_NUM_THREADS,
                   help=f"CPU threads; 0 = the libraries' defaults (default: {DEFAULT_NUM_THREADS})")  # fmt: skip
    p.add_argument("--limit", type=_count(1), help="evaluate the first N frames only")
    p.add_argument("--num-workers", type=_count(0), default=2)
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="dataset loader option")  # fmt: skip
    p.add_argument("--out", help="output folder (default: <checkpoint dir>/eval_<dataset>_<split>)")
    return p.parse_args(argv)


def eval_defaults(metadata: dict) -> dict:
    """The recipe's ``eval`` section from the checkpoint, else the paper protocol of its model, else plain."""
    if isinstance(metadata.get("eval"), dict):
        return metadata["eval"]
    return PAPER_PROTOCOLS.get(metadata.get("model", ""), {"input_size": None, "scales": [1.0], "flip": False})


def build_protocol(args: argparse.Namespace, defaults: dict):
    from training.evaluation import Protocol

    scales = args.scales or (defaults.get("scales") or [1.0] if args.multiscale else [1.0])
    sliding = None
    if args.sliding or args.crop:
        crop = args.crop or (defaults.get("sliding") or {}).get("crop")
        if crop is None:
            raise RunError("--sliding needs --crop H,W (the checkpoint's recipe has no window)")
        stride = args.stride or (defaults.get("sliding") or {}).get("stride") or [-(-2 * c // 3) for c in crop]
        sliding = (tuple(crop), tuple(stride))
    return Protocol(scales=tuple(scales), flip=args.flip, sliding=sliding)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows = ground truth) as a PNG; classes never seen are dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.flatnonzero((matrix.sum(1) + matrix.sum(0)) > 0)
    m = matrix[np.ix_(keep, keep)].astype(np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.3 * len(keep) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(keep)), [names[i] for i in keep], rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), [names[i] for i in keep], fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def format_report(metrics: dict, names: list[str]) -> str:
    """Per-class IoU and accuracy and the summary lines of :meth:`ConfusionMatrix.as_dict` (percent)."""
    lines = [f"{'class':<20} {'IoU %':>7} {'acc %':>7}"]
    for name, iou, acc in zip(names, metrics["per_class_iou"], metrics["per_class_accuracy"]):
        if iou is None and acc is None:
            continue
        fmt = lambda v: f"{v:7.2f}" if v is not None else "      -"  # noqa: E731
        lines.append(f"{name:<20} {fmt(iou)} {fmt(acc)}")
    pct = lambda v: "nan" if v is None else f"{v:.2f}"  # noqa: E731
    lines += [
        f"mIoU: {pct(metrics['miou'])}",
        f"pixel accuracy: {pct(metrics['pixel_accuracy'])}",
        f"mean accuracy: {pct(metrics['mean_accuracy'])}",
    ]
    return "\n".join(lines)


def read_checkpoint_metadata(ckpt: Path) -> dict:
    """The metadata of a ``.safetensors`` checkpoint or an exported ``.onnx`` (:class:`RunError` if unreadable)."""
    from safetensors import SafetensorError

    try:
        if ckpt.suffix == ".onnx":
            from rgbd_seg_ros.backends import read_onnx_metadata

            return read_onnx_metadata(ckpt)
        from rgbd_seg_ros.models.checkpoints import read_metadata

        return read_metadata(ckpt)
    except (OSError, ValueError, SafetensorError) as exc:
        raise RunError(f"--checkpoint: {' '.join(str(exc).split())}") from None


def write_outputs(out: Path, metrics: dict, matrix: np.ndarray, names: list[str]) -> None:
    """``metrics.json`` and ``confusion.png`` in ``out``, each replaced atomically."""
    from rgbd_seg_ros.fileio import atomic_path, atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    with atomic_path(out / "confusion.png") as tmp:
        plot_confusion(matrix, names, tmp)


def run(args: argparse.Namespace) -> int:
    """Check every input and the output folder, evaluate, write the outputs (rank 0)."""
    from safetensors import SafetensorError

    from rgbd_seg_ros.datasets import build_dataset
    from rgbd_seg_ros.pipeline import Segmenter
    from training.engine import check_writable, init_distributed
    from training.evaluation import evaluate

    try:
        ctx = init_distributed(args.device)
    except RuntimeError as exc:
        raise RunError(f"--device {args.device}: {exc}") from None
    ckpt = Path(args.checkpoint)
    metadata = read_checkpoint_metadata(ckpt)
    try:
        dataset = build_dataset(args.dataset, args.root, args.split, None, **dict(args.option))
    except (OSError, ValueError) as exc:
        raise RunError(f"--dataset {args.dataset} --root {args.root}: {' '.join(str(exc).split())}") from None
    out = Path(args.out) if args.out else ckpt.parent / f"eval_{args.dataset}_{args.split}"
    if ctx.main:
        check_writable(out, "--out")
    defaults = eval_defaults(metadata)
    input_size = None if args.native_size else (args.input_size or defaults.get("input_size"))
    protocol = build_protocol(args, defaults)
    if protocol.sliding is not None:
        input_size = None  # windows run at their own size
    device = str(ctx.device) if ctx.device.type == "cuda" else ("cpu" if args.device == "auto" else args.device)
    try:
        segmenter = Segmenter.from_checkpoint(
            ckpt,
            device=device,
            backend=args.backend,
            precision=args.precision,
            num_threads=args.num_threads,
            # native size (or sliding windows at their own size), not the checkpoint's stored size:
            input_size=tuple(input_size) if input_size else None,
            native_size=input_size is None,
            depth_fill=args.depth_fill or metadata.get("depth_fill", "fast"),
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise RunError(f"--checkpoint {ckpt}: {' '.join(str(exc).split())}") from None
    names = list(segmenter.label_set.class_names)
    if getattr(dataset, "num_classes", 0) and dataset.num_classes != len(names):
        raise RunError(f"--dataset {args.dataset} has {dataset.num_classes} classes but the checkpoint predicts "
                       f"{len(names)}")  # fmt: skip
    if ctx.main:
        print(f"{ckpt.name}: {metadata.get('model')} on {args.dataset}/{args.split} ({len(dataset)} frames), "
              f"input size {input_size or 'native'}, {protocol.describe()}", file=sys.stderr)  # fmt: skip
    t0 = time.perf_counter()
    result = evaluate(
        segmenter, dataset, protocol, ctx.rank, ctx.world, limit=args.limit, num_workers=args.num_workers,
        progress=ctx.main,
    )  # fmt: skip
    if not ctx.main:
        return 0
    metrics = result.matrix.as_dict(names)
    metrics.update(
        checkpoint=str(ckpt),
        dataset=args.dataset,
        split=args.split,
        protocol={"input_size": input_size, "scales": list(protocol.scales), "flip": protocol.flip,
                  "sliding": protocol.sliding},
        seconds=round(time.perf_counter() - t0, 2),
    )  # fmt: skip
    print(format_report(metrics, names))
    write_outputs(out, metrics, result.matrix.matrix, names)
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()
    return guarded("evaluate.py", lambda: run(args), (RunError,))


if __name__ == "__main__":
    sys.exit(main())
