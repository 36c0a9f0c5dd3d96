"""``rgbd-seg``: the package's command line (demo, models, benchmark, export, make-bag, replay, segment)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from rgbd_seg_ros.allocator import tune_allocator
from rgbd_seg_ros.settings import DEFAULT_MIN_VALID_DEPTH

#: Exit codes of every command (README "Exit codes", ``rgbd-seg --help``).
EXIT_OK = 0
EXIT_PARTIAL = 1  # some inputs rejected or skipped (reasons printed); also an unexpected error (a bug: traceback)
EXIT_USAGE = 2  # bad command line or bad input (missing / corrupt file, unusable output); argparse's code too
EXIT_NOTHING_DONE = 3  # the command ran but processed nothing: every input rejected (reasons printed)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES_HELP = """\
exit codes:
  0    done
  1    partly done: some inputs were rejected or skipped, or a bag was corrupt part-way (reasons printed;
       the outputs cover the rest); also an unexpected error, which prints a traceback: please report it
  2    bad command line or bad input: a missing, unreadable or corrupt file, a value that makes no sense, an
       output that cannot be written or that holds another run; one line names it, nothing is written
  3    ran but processed nothing: every input was rejected (the reasons and counts are printed)
  130  interrupted (Ctrl-C)"""


def _size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``480x640``) into (height, width)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 480x640 (height x width), got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return h, w


def _bounded(
    cast: Callable[[str], float], low: float, inclusive: bool, what: str, high: float | None = None
) -> Callable[[str], float]:
    """An argparse ``type`` parsing ``what`` with ``cast`` and refusing values below ``low`` (or above ``high``,
    inclusive) and NaN / inf."""

    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not (value >= low if inclusive else value > low):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value

    return parse


_positive_int = _bounded(int, 1, True, "a whole number")
_non_negative_int = _bounded(int, 0, True, "a whole number")
_positive_float = _bounded(float, 0, False, "a number")
_non_negative_float = _bounded(float, 0, True, "a number")
_metres = _bounded(float, 0, True, "metres")
_fraction = _bounded(float, 0, True, "a fraction in [0, 1]", high=1.0)


def _input_file(path: str | Path, flag: str) -> Path:
    """``path`` if it is a readable file, else ``OSError`` naming ``flag`` (checked before any work starts)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder, expected a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{flag} {path}: not readable")
    return path


def _check_creatable(path: Path, flag: str) -> None:
    """``OSError`` naming ``flag`` unless ``path`` can be made: its nearest existing ancestor is a writable folder."""
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{flag} {path}: cannot be created, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot be created, {ancestor} is not writable")


def _writable_folder(path: str | Path, flag: str) -> Path:
    """``path`` if it is (or can be made) a writable folder, else ``OSError`` naming ``flag``; nothing is created."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{flag} {path} is a file, expected a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{flag} {path}: folder not writable")
    else:
        _check_creatable(path, flag)
    return path


def add_run_arguments(parser: argparse.ArgumentParser, depth: bool = True) -> None:
    """The options every model-running command shares; defaults come from :mod:`rgbd_seg_ros.settings`."""
    from rgbd_seg_ros.settings import BACKENDS, DEFAULT_DEPTH_RANGE_M, DEFAULT_NUM_THREADS, DEPTH_FILLS

    group = parser.add_argument_group("model run options")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    group.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto = ONNX Runtime on the CPU (exported once to a cache), torch on CUDA (default: auto)",
    )
    group.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"), help="default: auto")
    group.add_argument(
        "--input-size", type=_size, help="model input HxW (default: the checkpoint's training size, else the frame's)"
    )
    group.add_argument(
        "--num-threads",
        type=_non_negative_int,
        default=DEFAULT_NUM_THREADS,
        help=f"intra-op CPU threads for torch and ONNX Runtime; 0 = their defaults (default: {DEFAULT_NUM_THREADS})",
    )
    group.add_argument(
        "--onnx-cache", help="ONNX export cache folder (default: $RGBD_SEG_CACHE or ~/.cache/rgbd_seg_ros/onnx)"
    )
    if depth:
        group.add_argument("--depth-fill", choices=DEPTH_FILLS, help="depth hole filling (default: the checkpoint's)")
        group.add_argument(
            "--min-depth",
            type=_metres,
            help=f"nearest valid depth, metres (default: the checkpoint's, else {DEFAULT_DEPTH_RANGE_M[0]})",
        )
        group.add_argument(
            "--max-depth",
            type=_metres,
            help=f"farthest valid depth, metres (default: the checkpoint's, else {DEFAULT_DEPTH_RANGE_M[1]})",
        )


def run_options(args: argparse.Namespace):
    """The :class:`~rgbd_seg_ros.settings.RunOptions` of the options :func:`add_run_arguments` added."""
    from rgbd_seg_ros.settings import RunOptions

    return RunOptions(
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        input_size=args.input_size,
        num_threads=args.num_threads,
        depth_fill=getattr(args, "depth_fill", None),
        min_depth_m=getattr(args, "min_depth", None),
        max_depth_m=getattr(args, "max_depth", None),
        cache_dir=args.onnx_cache,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Render synthetic RGB-D scenes; write titled previews (RGB | depth | ground truth | prediction) and the frames
    as files (``frames/rgb/``, ``frames/depth/`` 16-bit millimetres, ``frames/camera_info.yaml``) to ``args.out``;
    then replay a small synthetic bag.

    The demo owns ``preview_*.png``, ``frames/``, ``demo_bag/`` and ``replay/`` in its folder and replaces them on
    every run.
    """
    import shutil

    import numpy as np
    from tqdm import tqdm

    from rgbd_seg_ros import DEMO_CHECKPOINT, data_path
    from rgbd_seg_ros.fileio import atomic_write_text
    from rgbd_seg_ros.frames import metres_to_millimetres_u16
    from rgbd_seg_ros.labels import colorize, get_label_set
    from rgbd_seg_ros.render import write_png
    from rgbd_seg_ros.segment_files import camera_info_yaml
    from rgbd_seg_ros.synthetic import SceneGenerator
    from rgbd_seg_ros.visualize import colorize_depth, titled

    out = _writable_folder(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    segmenter, note = _demo_segmenter(args.replay_size)  # one model for the previews and the replay
    print(note)
    truth_set = get_label_set("synthetic")
    gen = SceneGenerator(height=args.size[0], width=args.size[1], seed=args.seed)
    frames = out / "frames"
    if frames.exists():
        shutil.rmtree(frames)  # the previous demo's frames
    for sub in ("rgb", "depth"):
        (frames / sub).mkdir(parents=True)
    atomic_write_text(frames / "camera_info.yaml", camera_info_yaml(gen.intrinsics, "demo"))
    written = set()
    for i in tqdm(range(args.frames), desc="demo", unit="frame"):
        scene = gen.sample(i)
        panels = {
            "RGB": scene.frame.rgb,
            "depth": colorize_depth(scene.frame.depth),
            "ground truth": colorize(truth_set.to_train_ids(scene.labels), truth_set),
            "prediction": colorize(segmenter(scene.frame).labels, segmenter.label_set),
        }
        panel = np.concatenate([titled(image, title) for title, image in panels.items()], axis=1)
        written.add(write_png(out / f"preview_{i:03d}.png", panel).name)
        write_png(frames / "rgb" / f"{i:03d}.png", scene.frame.rgb)
        write_png(frames / "depth" / f"{i:03d}.png", metres_to_millimetres_u16(scene.frame.depth))
    for stale in out.glob("preview_*.png"):  # an earlier demo's extra previews
        if stale.name not in written:
            stale.unlink()
    print(f"wrote {args.frames} previews ({' | '.join(panels)}) to {out.resolve()}")
    checkpoint = data_path() / DEMO_CHECKPOINT
    print(f"wrote the frames as files to {frames.resolve()} (rgb/, depth/ in 16-bit millimetres, camera_info.yaml)")
    print(
        f"  segment them: rgbd-seg segment --rgb-dir {frames / 'rgb'} --depth-dir {frames / 'depth'} --camera-info "
        f"{frames / 'camera_info.yaml'} --checkpoint {checkpoint if checkpoint.is_file() else 'CHECKPOINT'} "
        f"--out {out / 'segment'}"
    )
    return _demo_replay(out, args, segmenter)


def _demo_segmenter(size: tuple[int, int]):
    """The first checkpoint in ``rgbd_seg_ros/data/`` or, until one exists, a random-weight SGNet-R18; and a note."""
    from rgbd_seg_ros import data_path
    from rgbd_seg_ros.pipeline import Segmenter

    data = data_path()
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


def _demo_replay(out: Path, args: argparse.Namespace, segmenter) -> int:
    """Write a small synthetic bag, replay it with ``segmenter`` and say where the report and overlays are."""
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
    result = replay(bag, segmenter, out / "replay", ReplayOptions(), overwrite=True)  # the previous demo's
    print(format_summary(result))
    return _replay_status(result, "demo")


def _replay_status(result, command: str) -> int:
    """The exit code of a finished replay; says on stderr why when it is not 0."""
    report = result.report
    if result.interrupted:
        return EXIT_INTERRUPTED
    if report.processed == 0:
        why = "; ".join(report.unprocessed_reasons()) or "the bag holds no colour images"
        print(f"rgbd-seg {command}: error: nothing processed: {why}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    if report.rejected:
        print(
            f"rgbd-seg {command}: warning: {report.rejected} of {report.synchronized} synchronised sets rejected "
            "(reasons above; the outputs cover the rest)",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_make_bag(args: argparse.Namespace) -> int:
    """Write a dataset split as a camera recording (rosbag2) with a ground-truth label topic."""
    from rgbd_seg_ros.bag import StreamTiming, dataset_samples, write_dataset_bag

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"--out {out} exists already; choose another path or remove it")
    _check_creatable(out, "--out")
    if args.root is not None and not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root {args.root}: no such folder")
    samples = dataset_samples(args.dataset, args.frames, args.root, args.split, args.size, args.seed)
    timing = StreamTiming(fps=args.fps, jitter_ms=args.jitter_ms, seed=args.seed)
    counts = write_dataset_bag(args.out, samples, storage=args.storage, timing=timing, compressed=args.compressed)
    print(f"wrote {args.out} ({args.storage}):")
    for topic, n in sorted(counts.items()):
        print(f"  {topic}: {n} messages")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Segment every synchronised set of a bag; write output.mcap, report.json/html and figures."""
    from rgbd_seg_ros.bag import InputTopics
    from rgbd_seg_ros.replay import (
        ReplayIncomplete,
        ReplayOptions,
        check_output_dir,
        format_summary,
        replay,
        validate_bag,
    )

    sync = {k: v for k, v in (("queue_size", args.queue_size), ("slop", args.slop)) if v is not None}
    options = ReplayOptions(
        topics=InputTopics(*args.topics) if args.topics else InputTopics(),
        label_topic="" if args.no_labels else args.labels_topic,
        realtime=args.realtime,
        depth_scale=args.depth_scale,
        samples=args.samples,
        points_stride=args.points,
        min_valid_depth=args.min_valid_depth,
        **sync,
    )
    # Everything that can be checked cheaply fails before the model loads.
    validate_bag(args.bag, options)
    check_output_dir(_writable_folder(args.out, "--out"), args.overwrite)
    _input_file(args.checkpoint, "--checkpoint")
    from rgbd_seg_ros.pipeline import Segmenter

    segmenter = Segmenter.from_checkpoint(args.checkpoint, run_options(args))
    segmenter.warmup()  # the ONNX export (once per checkpoint and size) stays out of the latency figures
    try:
        result = replay(args.bag, segmenter, args.out, options, overwrite=args.overwrite)
    except ReplayIncomplete as exc:
        print(format_summary(exc.result))
        print(f"rgbd-seg replay: error: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    print(format_summary(result))
    return _replay_status(result, "replay")


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment RGB + depth images from disk into labels, colour, overlay and confidence PNGs."""
    from rgbd_seg_ros.segment_files import (
        OUTPUTS,
        Calibration,
        Pair,
        find_pairs,
        prepare_output,
        read_camera_info,
        segment_pairs,
    )

    # Everything that can be checked cheaply fails before the model loads.
    if bool(args.rgb or args.depth) == bool(args.rgb_dir or args.depth_dir):
        raise ValueError("give either --rgb and --depth (one pair) or --rgb-dir and --depth-dir (two folders)")
    if args.rgb or args.depth:
        if not (args.rgb and args.depth):
            raise ValueError("--rgb and --depth go together: give both")
        rgb, depth = _input_file(args.rgb, "--rgb"), _input_file(args.depth, "--depth")
        pairs, bad = [Pair(rgb.stem, rgb, depth)], []
    else:
        if not (args.rgb_dir and args.depth_dir):
            raise ValueError("--rgb-dir and --depth-dir go together: give both")
        pairs, bad = find_pairs(args.rgb_dir, args.depth_dir)
    if args.camera_info:
        calibration = read_camera_info(_input_file(args.camera_info, "--camera-info"))
    else:
        calibration = Calibration(*args.intrinsics)
    _input_file(args.checkpoint, "--checkpoint")
    for name, reason in bad:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not pairs:
        why = f"all {len(bad)} names skipped (reasons above)" if bad else "no colour or depth images there"
        print(f"rgbd-seg segment: error: nothing to segment in {args.rgb_dir}: {why}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    out = prepare_output(_writable_folder(args.out, "--out"), [p.name for p in pairs], args.overwrite)

    from rgbd_seg_ros.pipeline import Segmenter

    segmenter = Segmenter.from_checkpoint(args.checkpoint, run_options(args))
    segmenter.warmup()  # the ONNX export (once per checkpoint and size) stays out of the latency figures
    summary = segment_pairs(segmenter, pairs, calibration, out, args.depth_scale, args.overlay_alpha)
    summary.skipped[:0] = bad
    total = len(summary.written) + len(summary.skipped)
    folders = " ".join(f"{kind}/" for kind in OUTPUTS)
    print(f"segmented {len(summary.written)} of {total} pairs into {out.resolve()} ({folders})")
    names = [name for name, _ in summary.skipped]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if not summary.written:
        print(f"rgbd-seg segment: error: nothing segmented; skipped {listed} (reasons above)", file=sys.stderr)
        return EXIT_NOTHING_DONE
    if names:
        print(
            f"rgbd-seg segment: warning: skipped {len(names)} of {total} pairs: {listed} (reasons above; the "
            "outputs cover the rest)",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """Print parameters and GMACs of every registered model/backbone."""
    from rgbd_seg_ros.models.summary import print_model_table

    print_model_table(size=args.size, macs=not args.no_macs)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Per-stage Segmenter timings on synthetic frames."""
    if args.checkpoint is not None:
        _input_file(args.checkpoint, "--checkpoint")
    from rgbd_seg_ros.benchmark import run

    run(args.checkpoint, sizes=tuple(args.size), frames=args.frames, options=run_options(args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX with its metadata (model, label set, input spec, input size)."""
    checkpoint = _input_file(args.checkpoint, "checkpoint")
    onnx = Path(args.onnx)
    if onnx.suffix != ".onnx":
        raise ValueError(f"--onnx {onnx}: the output must be a .onnx file")
    if onnx.is_dir():
        raise IsADirectoryError(f"--onnx {onnx} is a folder, expected a .onnx file")
    if onnx.exists() and onnx.resolve() == checkpoint.resolve():
        raise ValueError(f"--onnx {onnx} is the input checkpoint; choose another output path")
    _check_creatable(onnx, "--onnx")
    replaced = onnx.exists()
    from rgbd_seg_ros.export import export_checkpoint_onnx

    path, size = export_checkpoint_onnx(checkpoint, onnx, input_size=args.input_size, coarse=args.coarse_logits)
    print(f"{'replaced' if replaced else 'wrote'} {path} (input {size[0]}x{size[1]})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbd-seg",
        description="Real-time RGB-D semantic segmentation tools.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo on the embedded synthetic scenes")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--frames", type=_positive_int, default=4, help="number of synthetic frames (default: 4)")
    demo.add_argument("--size", type=_size, default=(480, 640), help="frame size HxW (default: 480x640)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    demo.add_argument("--replay-frames", type=_positive_int, default=3, help="frames in the replayed bag (default: 3)")
    demo.add_argument(
        "--replay-size", type=_size, default=(240, 320), help="frame size HxW of the replayed bag (default: 240x320)"
    )
    demo.set_defaults(func=cmd_demo)

    make_bag = sub.add_parser("make-bag", help="write a dataset split as a rosbag2 camera recording with ground truth")
    make_bag.add_argument("--dataset", default="synthetic", choices=("synthetic", "nyudv2", "sunrgbd", "cityscapes"))
    make_bag.add_argument(
        "--frames", type=_positive_int, help="frames (synthetic: required; datasets: the first N, default all)"
    )
    make_bag.add_argument("--out", required=True, help="bag folder, or a .mcap / .db3 file (must not exist)")
    make_bag.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="default: mcap")
    make_bag.add_argument("--root", help="dataset root folder (real datasets)")
    make_bag.add_argument("--split", default="test", help="dataset split (default: test)")
    make_bag.add_argument("--size", type=_size, default=(480, 640), help="synthetic frame size HxW (default: 480x640)")
    make_bag.add_argument("--fps", type=_positive_float, default=30.0, help="camera frame rate (default: 30)")
    make_bag.add_argument(
        "--jitter-ms",
        type=_non_negative_float,
        default=3.0,
        help="σ of the depth-vs-colour stamp offset, ms (default: 3; clip ±2σ)",
    )
    make_bag.add_argument("--seed", type=int, default=0, help="scene and timing seed (default: 0)")
    make_bag.add_argument(
        "--compressed",
        action="store_true",
        help="colour and depth as image_transport's CompressedImage topics (JPEG on <colour topic>/compressed, "
        "16UC1 compressedDepth PNG on <depth topic>/compressedDepth) instead of raw Image",
    )
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
        type=_positive_float,
        metavar="RATE",
        help="simulate the live node at RATE x recorded speed: sets arriving while the model is busy are dropped",
    )
    add_run_arguments(rep)
    rep.add_argument("--depth-scale", type=_positive_float, help="metres per depth unit (default: REP 118 units)")
    rep.add_argument("--queue-size", type=_positive_int, help="synchroniser queue per input (default: the node's, 10)")
    rep.add_argument("--slop", type=_positive_float, help="synchroniser slop, s (default: the node's, 0.02)")
    rep.add_argument("--samples", type=_non_negative_int, default=6, help="sample overlays in the report (default: 6)")
    rep.add_argument(
        "--min-valid-depth",
        type=_fraction,
        default=DEFAULT_MIN_VALID_DEPTH,
        help="valid-depth fraction below which a set counts as a depth outage, as the node's parameter "
        f"(default: {DEFAULT_MIN_VALID_DEPTH})",
    )
    rep.add_argument(
        "--points",
        type=_positive_int,
        metavar="STRIDE",
        help="also write the node's semantic point cloud (/rgbd_seg/points) at this pixel stride",
    )
    rep.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier replay in --out (output.mcap, report.*, figures, overlays/)",
    )
    rep.set_defaults(func=cmd_replay)

    seg = sub.add_parser(
        "segment",
        help="segment RGB + depth images from disk: label, colour, overlay and confidence PNGs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the pipeline on a registered colour + depth pair from disk, or on two folders of them\n"
        "(paired by file name without extension), and write for each NAME under --out:\n"
        "  labels/NAME.png      indexed PNG: pixel value = train id (255 = none), palette = the label set's\n"
        "  color/NAME.png       the label set's colours (RGB)\n"
        "  overlay/NAME.png     the colours blended over the input (RGB)\n"
        "  confidence/NAME.png  16-bit grey: probability of the chosen class x 65535",
        epilog="Depth must be registered to the colour image at the same size. The intrinsics are required (the "
        "XYZ and HHA\nencodings back-project depth through them, and every frame carries them): --intrinsics for "
        "the images as\nthey are, or --camera-info with a camera_info_manager calibration file or the output of "
        "`ros2 topic echo\n--once <camera_info topic>`; K is scaled (with a warning) for images of its aspect "
        "ratio but another size.\n\n"
        "A pair that cannot be used (missing partner, unreadable file, 8-bit or multi-channel depth, sizes that\n"
        "differ) is reported by name and skipped. Existing output files are never replaced without --overwrite.\n\n"
        "exit codes: 0 every pair segmented; 1 some pairs skipped; 2 bad command line, checkpoint, camera info or\n"
        "--out (before the model loads); 3 nothing segmented (every pair skipped).",
    )
    inputs = seg.add_argument_group("inputs (one pair, or two folders)")
    inputs.add_argument("--rgb", metavar="IMAGE", help="colour image (8-bit PNG, JPEG, ...)")
    inputs.add_argument("--depth", metavar="IMAGE", help="depth image registered to --rgb")
    inputs.add_argument("--rgb-dir", metavar="DIR", help="folder of colour images")
    inputs.add_argument("--depth-dir", metavar="DIR", help="folder of depth images, named as the colour images")
    seg.add_argument(
        "--depth-scale",
        type=_positive_float,
        metavar="M_PER_UNIT",
        help="metres per depth unit (default: integer images such as 16-bit PNG are millimetres, 0.001; float "
        "TIFF, EXR and .npy are metres, 1.0; e.g. 0.0002 for 5000 units per metre)",
    )
    camera = seg.add_mutually_exclusive_group(required=True)
    camera.add_argument(
        "--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="pinhole intrinsics, pixels"
    )
    camera.add_argument(
        "--camera-info", metavar="YAML", help="camera_info_manager calibration file or `ros2 topic echo` output"
    )
    seg.add_argument("--checkpoint", required=True, help="checkpoint (.safetensors) or exported .onnx")
    seg.add_argument("--out", required=True, help="output folder (labels/ color/ overlay/ confidence/)")
    seg.add_argument("--overwrite", action="store_true", help="replace output files of an earlier run")
    seg.add_argument(
        "--overlay-alpha", type=_fraction, default=0.5, help="weight of the colours in overlay/ (default: 0.5)"
    )
    add_run_arguments(seg)
    seg.set_defaults(func=cmd_segment)

    models = sub.add_parser("models", help="table of registered models: parameters and GMACs")
    models.add_argument("--size", type=_size, default=(480, 640), help="input size HxW for GMACs (default: 480x640)")
    models.add_argument("--no-macs", action="store_true", help="parameters only (fast)")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("benchmark", help="per-stage pipeline timings on synthetic frames")
    bench.add_argument("--checkpoint", help="checkpoint or .onnx file (default: random-weight SGNet-R18)")
    bench.add_argument(
        "--size", type=_size, nargs="+", default=[(480, 640)], help="frame sizes HxW (default: 480x640)"
    )
    add_run_arguments(bench)
    bench.add_argument("--frames", type=_positive_int, default=10, help="timed frames per size (default: 10)")
    bench.set_defaults(func=cmd_benchmark)

    export = sub.add_parser("export", help="export a checkpoint to ONNX")
    export.add_argument("checkpoint", help="checkpoint written by training or save_checkpoint")
    export.add_argument("--onnx", required=True, help="output .onnx path")
    export.add_argument(
        "--input-size", "--size", type=_size, help="model input HxW (default: the checkpoint's training size)"
    )
    export.add_argument(
        "--coarse-logits",
        action="store_true",
        help="end the graph before the model's final bilinear upsampling (SGNet, SA-Gate, GFF): faster in this "
        "package's runtime, which upsamples while it takes labels; default: logits at the input size",
    )
    export.set_defaults(func=cmd_export)
    from rgbd_seg_ros.convert_cli import add_convert_parser  # rgbd-seg convert: the authors' released weights

    add_convert_parser(sub)
    return parser


def _error_text(exc: BaseException) -> str:
    """An expected failure as text: an OS error as ``path: reason``, a missing package with how to install it."""
    if isinstance(exc, ModuleNotFoundError):
        return f"the Python package {exc.name!r} is missing: pip install {exc.name} (or reinstall rgbd_seg_ros)"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        target = f"{exc.filename} → {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{target}: {exc.strerror}"
    return str(exc).strip() or type(exc).__name__


def _is_ours(exc: ModuleNotFoundError) -> bool:
    return (exc.name or "").split(".")[0] in ("rgbd_seg_ros", "training")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rgbd-seg`` command; returns its exit code (see :data:`EXIT_CODES_HELP`).

    Expected failures (bad input files, unusable outputs, bad values, a missing package, CUDA unavailable or out
    of memory) print one line ``rgbd-seg COMMAND: error: ...`` and exit 2; anything else is a bug and prints its
    traceback with a request to report it.
    """
    args = build_parser().parse_args(argv)  # exits 2 on a bad command line
    tune_allocator()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"rgbd-seg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        if _is_ours(exc):
            return _bug(args.command)
        print(f"rgbd-seg {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"rgbd-seg {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        return _bug(args.command)


def _bug(command: str) -> int:
    traceback.print_exc()
    print(
        f"rgbd-seg {command}: this is a bug in rgbd_seg_ros, not a problem with your input; please report it with "
        "the traceback above and the command line",
        file=sys.stderr,
    )
    return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
