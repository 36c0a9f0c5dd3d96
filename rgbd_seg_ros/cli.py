"""``rgbd-seg``: the package's command line (demo, models, benchmark, export, make-bag, replay)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rgbd_seg_ros.allocator import tune_allocator


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
    return _demo_replay(out, args)


def _demo_segmenter(size: tuple[int, int]):
    """The first checkpoint in ``rgbd_seg_ros/data/`` or, until one exists, a random-weight SGNet-R18; and a note."""
    from rgbd_seg_ros.pipeline import Segmenter

    data = Path(__file__).resolve().parent / "data"
    checkpoints = sorted(data.glob("*.safetensors"))
    if checkpoints:
        note = (
            f"model: trained checkpoint {checkpoints[0].name} — warning: it was trained on synthetic rooms only and "
            "knows nothing else, so do not judge it on real images (train on a real dataset: see training/README.md)"
        )
        return Segmenter.from_checkpoint(checkpoints[0], device="auto"), note
    import torch

    from rgbd_seg_ros.models import build_model

    torch.manual_seed(0)
    model = build_model("sgnet", 40, backbone="resnet18")
    note = (
        f"model: random-weight SGNet-R18 (no trained checkpoint in {data} yet), so predictions and mIoU are "
        "meaningless: the demo shows the pipeline, not accuracy"
    )
    return Segmenter.from_model(model, "synthetic", device="auto"), note


def _demo_replay(out: Path, args: argparse.Namespace) -> int:
    """Write a small synthetic bag, replay it and say where the report and overlays are."""
    import shutil

    from rgbd_seg_ros.bag import dataset_samples, write_dataset_bag
    from rgbd_seg_ros.replay import ReplayOptions, format_summary, replay

    bag = out / "demo_bag"
    if bag.exists():
        shutil.rmtree(bag)  # the previous demo's bag
    samples = dataset_samples("synthetic", frames=args.replay_frames, size=args.replay_size, seed=args.seed)
    write_dataset_bag(bag, samples)
    h, w = args.replay_size
    print(f"wrote a {args.replay_frames}-frame {h}x{w} synthetic rosbag2 (MCAP) to {bag.resolve()}")
    segmenter, note = _demo_segmenter(args.replay_size)
    print(note)
    result = replay(bag, segmenter, out / "replay", ReplayOptions())
    print(format_summary(result))
    return 130 if result.interrupted else 0


def cmd_make_bag(args: argparse.Namespace) -> int:
    """Write a dataset split as a camera recording (rosbag2) with a ground-truth label topic."""
    from rgbd_seg_ros.bag import StreamTiming, dataset_samples, write_dataset_bag

    if Path(args.out).exists():
        raise ValueError(f"{args.out} exists already; choose another path or remove it")
    samples = dataset_samples(args.dataset, args.frames, args.root, args.split, args.size, args.seed)
    timing = StreamTiming(fps=args.fps, jitter_ms=args.jitter_ms, seed=args.seed)
    counts = write_dataset_bag(args.out, samples, storage=args.storage, timing=timing)
    print(f"wrote {args.out} ({args.storage}):")
    for topic, n in sorted(counts.items()):
        print(f"  {topic}: {n} messages")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Segment every synchronised set of a bag; write output.mcap, report.json/html and figures."""
    from rgbd_seg_ros.bag import InputTopics
    from rgbd_seg_ros.replay import ReplayOptions, format_summary, replay, validate_bag

    sync = {k: v for k, v in (("queue_size", args.queue_size), ("slop", args.slop)) if v is not None}
    options = ReplayOptions(
        topics=InputTopics(*args.topics) if args.topics else InputTopics(),
        label_topic="" if args.no_labels else args.labels_topic,
        realtime=args.realtime,
        depth_scale=args.depth_scale,
        samples=args.samples,
        **sync,
    )
    validate_bag(args.bag, options)  # a bad bag fails before the model loads
    from rgbd_seg_ros.pipeline import Segmenter

    segmenter = Segmenter.from_checkpoint(
        args.checkpoint,
        device=args.device,
        backend=args.backend,
        input_size=args.input_size,
        depth_fill=args.depth_fill,
    )
    result = replay(args.bag, segmenter, args.out, options)
    print(format_summary(result))
    return 130 if result.interrupted else 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print parameters and GMACs of every registered model/backbone."""
    from rgbd_seg_ros.models.summary import print_model_table

    print_model_table(size=args.size, macs=not args.no_macs)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Per-stage Segmenter timings on synthetic frames."""
    from rgbd_seg_ros.benchmark import run

    run(args.checkpoint, sizes=tuple(args.size), device=args.device, frames=args.frames, backend=args.backend)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX with its metadata (model, label set, input spec, input size)."""
    from rgbd_seg_ros.backends import export_checkpoint_onnx

    path = export_checkpoint_onnx(args.checkpoint, args.onnx, input_size=args.size)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgbd-seg", description="Real-time RGB-D semantic segmentation tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo on the embedded synthetic scenes")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--frames", type=int, default=4, help="number of synthetic frames (default: 4)")
    demo.add_argument("--size", type=_size, default=(480, 640), help="frame size HxW (default: 480x640)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    demo.add_argument("--replay-frames", type=int, default=3, help="frames in the replayed bag (default: 3)")
    demo.add_argument(
        "--replay-size", type=_size, default=(240, 320), help="frame size HxW of the replayed bag (default: 240x320)"
    )
    demo.set_defaults(func=cmd_demo)

    make_bag = sub.add_parser("make-bag", help="write a dataset split as a rosbag2 camera recording with ground truth")
    make_bag.add_argument("--dataset", default="synthetic", choices=("synthetic", "nyudv2", "sunrgbd", "cityscapes"))
    make_bag.add_argument("--frames", type=int, help="frames (synthetic: required; datasets: the first N, default all)")
    make_bag.add_argument("--out", required=True, help="bag folder, or a .mcap / .db3 file (must not exist)")
    make_bag.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="default: mcap")
    make_bag.add_argument("--root", help="dataset root folder (real datasets)")
    make_bag.add_argument("--split", default="test", help="dataset split (default: test)")
    make_bag.add_argument("--size", type=_size, default=(480, 640), help="synthetic frame size HxW (default: 480x640)")
    make_bag.add_argument("--fps", type=float, default=30.0, help="camera frame rate (default: 30)")
    make_bag.add_argument(
        "--jitter-ms", type=float, default=3.0, help="σ of the depth-vs-colour stamp offset, ms (default: 3; clip ±2σ)"
    )
    make_bag.add_argument("--seed", type=int, default=0, help="scene and timing seed (default: 0)")
    make_bag.set_defaults(func=cmd_make_bag)

    rep = sub.add_parser("replay", help="run the pipeline over a rosbag2: output bag, latency/drop/accuracy report")
    rep.add_argument("bag", help="rosbag2 folder, or a .mcap / .db3 file")
    rep.add_argument("--checkpoint", required=True, help="checkpoint (.safetensors) or exported .onnx")
    rep.add_argument("--out", required=True, help="output folder (output.mcap, report.json, report.html, figures)")
    rep.add_argument(
        "--topics",
        nargs=3,
        metavar=("COLOR", "DEPTH", "CAMERA_INFO"),
        help="input topics (default: /camera/color/image_raw /camera/depth/image_raw /camera/depth/camera_info)",
    )
    rep.add_argument("--labels-topic", help="ground-truth topic (default: /camera/labels/ground_truth when present)")
    rep.add_argument("--no-labels", action="store_true", help="do not evaluate even if the bag has ground truth")
    rep.add_argument(
        "--realtime",
        type=float,
        metavar="RATE",
        help="simulate the live node at RATE x recorded speed: sets arriving while the model is busy are dropped",
    )
    rep.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    rep.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    rep.add_argument("--input-size", type=_size, help="model input HxW (default: the frame's size)")
    rep.add_argument("--depth-fill", default="fast", choices=("fast", "colorization", "none"))
    rep.add_argument("--depth-scale", type=float, help="metres per depth unit (default: REP 118 units)")
    rep.add_argument("--queue-size", type=int, help="synchroniser queue per input (default: the node's, 10)")
    rep.add_argument("--slop", type=float, help="synchroniser slop, s (default: the node's, 0.02)")
    rep.add_argument("--samples", type=int, default=6, help="sample overlays in the report (default: 6)")
    rep.set_defaults(func=cmd_replay)

    models = sub.add_parser("models", help="table of registered models: parameters and GMACs")
    models.add_argument("--size", type=_size, default=(480, 640), help="input size HxW for GMACs (default: 480x640)")
    models.add_argument("--no-macs", action="store_true", help="parameters only (fast)")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("benchmark", help="per-stage pipeline timings on synthetic frames")
    bench.add_argument("--checkpoint", help="checkpoint or .onnx file (default: random-weight SGNet-R18)")
    bench.add_argument("--size", type=_size, nargs="+", default=[(240, 320), (480, 640)], help="sizes HxW")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    bench.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    bench.add_argument("--frames", type=int, default=10, help="timed frames per size (default: 10)")
    bench.set_defaults(func=cmd_benchmark)

    export = sub.add_parser("export", help="export a checkpoint to ONNX")
    export.add_argument("checkpoint", help="checkpoint written by training or save_checkpoint")
    export.add_argument("--onnx", required=True, help="output .onnx path")
    export.add_argument("--size", type=_size, default=(480, 640), help="input size HxW (default: 480x640)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"rgbd-seg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
