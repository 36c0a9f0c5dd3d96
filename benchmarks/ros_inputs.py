"""The node's CPU cost of compressed inputs and of ``~/points``, per 640×480 frame, beside raw-image baselines.

* decode: a JPEG colour image (quality 90, ``rgb8; jpeg compressed bgr8``) plus a ``16UC1; compressedDepth png``
  depth image (image_transport's defaults: PNG level 9 is the plugin's default, level 1 what ``make-bag
  --compressed`` writes), decoded by :func:`rgbd_seg_ros.ros.compressed.decode_inputs` and turned into the frame
  (:func:`~rgbd_seg_ros.ros.convert.to_rgbd_frame`), against the same pair sent raw (``rgb8`` + ``16UC1`` Image).
* points: :func:`~rgbd_seg_ros.ros.points.semantic_cloud` plus the rclpy ``PointCloud2`` message (what the worker
  does before publishing) at stride 1 and 4, against the bare back-projection (:func:`depth.points.backproject`).

CPU time (``time.process_time``, all threads of the process) and wall time per call are printed, min and median of
``--repeat`` calls, with the ratio of medians to the baseline. The frames are synthetic rooms (textured enough for
JPEG to work), so sizes and times are like a camera's.

    .venv/bin/python benchmarks/ros_inputs.py               # ~1 min on 2 shared cores
    .venv/bin/python benchmarks/ros_inputs.py --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from rgbd_seg_ros.depth.points import backproject
from rgbd_seg_ros.frames import metres_to_millimetres_u16
from rgbd_seg_ros.ros.compressed import decode_inputs, encode_color, encode_depth
from rgbd_seg_ros.ros.convert import image_from_array, to_rgbd_frame
from rgbd_seg_ros.ros.points import point_cloud_message, semantic_cloud
from rgbd_seg_ros.synthetic import SceneGenerator


def measure(fn: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """(CPU ms, wall ms) of ``repeat`` calls after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return cpu, wall


def report(name: str, result: tuple[list[float], list[float]], baseline: tuple[list[float], list[float]] | None):
    cpu, wall = result
    text = f"{name:50s} cpu {min(cpu):7.2f} {statistics.median(cpu):7.2f}"
    text += f"   wall {min(wall):7.2f} {statistics.median(wall):7.2f}"
    if baseline is not None:
        text += f"   {statistics.median(cpu) / statistics.median(baseline[0]):5.1f}x baseline cpu"
    print(text, flush=True)


def compressed_message(header, fmt: str, data: bytes):
    try:
        from sensor_msgs.msg import CompressedImage
    except ImportError:  # without the ROS wheels: the same fields, duck-typed
        return SimpleNamespace(header=header, format=fmt, data=data)
    msg = CompressedImage(format=fmt, data=data)
    msg.header = header
    return msg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per case (default: 20)")
    args = parser.parse_args()

    from std_msgs.msg import Header

    sample = SceneGenerator(height=480, width=640, seed=0).sample(0)
    frame, labels = sample.frame, sample.labels
    header = Header(frame_id="camera_color_optical_frame")
    mm = metres_to_millimetres_u16(frame.depth)
    k = frame.intrinsics
    raw = (image_from_array(frame.rgb, "rgb8", header), image_from_array(mm, "16UC1", header))
    color_fmt, color_data = encode_color(frame.rgb, "jpeg", quality=90)
    print(f"640x480: JPEG q90 {len(color_data) / 1e3:.0f} kB (raw rgb8 {frame.rgb.nbytes / 1e3:.0f} kB)")
    print(f"{'case (ms per frame)':50s} cpu     min  median   wall     min  median")

    baseline = measure(lambda: to_rgbd_frame(*raw, k), args.repeat)
    report("raw rgb8 + 16UC1 Image → frame (baseline)", baseline, None)
    for level in (1, 9):
        depth_fmt, depth_data = encode_depth(mm, png_level=level)
        pair = (compressed_message(header, color_fmt, color_data), compressed_message(header, depth_fmt, depth_data))
        decoded = decode_inputs(*pair)
        assert np.array_equal(decoded[1].pixels, np.where(mm > 10000, 0, mm))  # lossless below depth_max
        kb = len(depth_data) / 1e3
        report(
            f"JPEG + compressedDepth (png {level}, {kb:.0f} kB) → frame",
            measure(lambda pair=pair: to_rgbd_frame(*decode_inputs(*pair), k), args.repeat),
            baseline,
        )

    confidence = np.full(labels.shape, 0.8, np.float32)
    points_baseline = measure(lambda: backproject(frame.depth, k), args.repeat)
    report("backproject only, stride 1 (baseline)", points_baseline, None)
    for stride in (1, 4):

        def build(stride=stride):
            cloud = semantic_cloud(frame.depth, k, frame.rgb, labels, confidence, stride, depth_range=(0.1, 10.0))
            return point_cloud_message(cloud, header), cloud

        _, cloud = build()
        report(
            f"~/points stride {stride} ({cloud.width} points, {cloud.width * 24 / 1e6:.1f} MB)",
            measure(build, args.repeat),
            points_baseline,
        )


if __name__ == "__main__":
    main()
