"""Replay throughput: ``rgbd-seg replay`` over a synthetic bag against the bare Segmenter on the same frames.

The baseline is the Segmenter called directly on the decoded frames, in the same process and on the same
machine, so the ratio shows what replay adds: bag reading, synchronisation, decoding, output images, writing
``output.mcap`` and the report. A real-time pass at the bag's frame rate then shows how many sets a live
node on this machine would drop. Figures on a shared CPU are noisy.

    .venv/bin/python benchmarks/replay.py                          # random-weight SGNet-R18, 8 frames, 480x640
    .venv/bin/python benchmarks/replay.py --checkpoint CKPT --frames 20 --size 240x320 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rgbd_seg_ros.bag import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SLOP,
    BagReader,
    InputTopics,
    StreamTiming,
    SyncedSet,
    dataset_samples,
    frame_of,
    read_synchronized,
    write_dataset_bag,
)
from rgbd_seg_ros.cli import _size
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.replay import ReplayOptions, replay
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer


def segmenter_for(checkpoint: str | None, device: str) -> Segmenter:
    """The checkpoint's Segmenter, or a random-weight SGNet-R18 (label set ``synthetic``)."""
    if checkpoint:
        return Segmenter.from_checkpoint(checkpoint, device=device)
    from rgbd_seg_ros.models import build_model

    torch.manual_seed(0)
    return Segmenter.from_model(build_model("sgnet", 40, backbone="resnet18"), "synthetic", device=device)


def decoded_frames(bag: Path) -> list:
    """The RGBDFrames of every synchronised set of ``bag``, as replay decodes them."""
    with BagReader(bag) as reader:
        sync = ApproximateTimeSynchronizer(3, DEFAULT_QUEUE_SIZE, DEFAULT_SLOP)
        return [frame_of(s)[0] for s in read_synchronized(reader, InputTopics(), sync) if isinstance(s, SyncedSet)]


def direct_ms(segmenter: Segmenter, frames: list) -> list[float]:
    """Wall ms of ``segmenter(frame)`` per frame."""
    times = []
    for frame in frames:
        start = time.perf_counter()
        segmenter(frame)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint (default: random-weight SGNet-R18)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=_size, default=(480, 640), help="HxW (default: 480x640)")
    parser.add_argument("--fps", type=float, default=30.0, help="bag frame rate for the real-time pass")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bag = work / "bag"
        timing = StreamTiming(fps=args.fps)
        write_dataset_bag(bag, dataset_samples("synthetic", args.frames, size=args.size), timing=timing)
        segmenter = segmenter_for(args.checkpoint, args.device)
        frames = decoded_frames(bag)
        segmenter(frames[0])  # warm-up
        print(
            f"{segmenter.model_name} on {segmenter.device}, torch threads {torch.get_num_threads()}, "
            f"{args.frames} frames {args.size[0]}x{args.size[1]}; times in ms (median)"
        )
        before = direct_ms(segmenter, frames)
        start = time.perf_counter()
        offline = replay(bag, segmenter, work / "offline", ReplayOptions(progress=False)).report.to_json()
        offline_wall = time.perf_counter() - start
        after = direct_ms(segmenter, frames)
        live = replay(bag, segmenter, work / "live", ReplayOptions(realtime=1.0, progress=False)).report.to_json()

    stages = offline["latency_ms"]["stages"]
    bare = statistics.median(before + after)
    replay_fps = offline["processed"] / offline_wall
    print(
        f"{'bare Segmenter (before / after)':<36} {statistics.median(before):9.1f} / {statistics.median(after):.1f} ms"
    )
    print(
        f"{'replay, offline (wall, incl. report)':<36} {1e3 / replay_fps:9.1f} ms/set  {replay_fps:.3f} sets/s "
        f"(bare: {1e3 / bare:.3f} frames/s, ratio {replay_fps * bare / 1e3:.2f})"
    )
    lat = offline["latency_ms"]
    print(f"{'  per-set latency p50 / p95 / max':<36} {lat['p50']:9.1f} / {lat['p95']:.1f} / {lat['max']:.1f} ms")
    extra = sum(stages[s]["p50"] for s in ("convert", "render", "write"))
    print(
        f"{'  replay overhead (decode+render+write)':<36} {extra:9.1f} ms/set = "
        f"{100 * extra / stages['segment']['p50']:.1f}% of the Segmenter call in the same run"
    )
    print(
        f"{f'real time at {args.fps:g} fps':<36} processed {live['processed']} of {live['synchronized']} sets, "
        f"dropped {live['dropped']}"
    )


if __name__ == "__main__":
    main()
