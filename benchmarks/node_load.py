"""Load test of rgbd_seg_node: a 30 Hz RGB-D camera and a model slower than the camera.

Usage: ``python benchmarks/node_load.py [--duration 120] [--rate 30] [--model-time 0.1] [--size 480x640]
[--checkpoint model.safetensors --device cpu]``

A camera process publishes synthetic colour (rgb8), depth (16UC1, stamped 3 ms after colour) and CameraInfo at
``--rate`` with capture-time stamps, best effort like camera drivers (``--qos reliable`` to change); both
processes use the Fast DDS profile of ``--fastdds-profile`` (default ``config/fastdds_large_images.xml``, without
which Fast DDS loses most best-effort 640×480 images). This process runs the node (builtin sync, ``publish_all``,
all four outputs) with a stand-in model that takes ``--model-time`` seconds per frame (like GPU inference, it
releases the GIL), or the real Segmenter of ``--checkpoint``. It prints:

* latency header stamp → publish, p50 / p95 / max, and p95 against two model periods (the issue's bound),
  the model time being the stand-in's ``--model-time`` or, with a checkpoint, the measured inference p50;
* input (synchronised) and output rates, dropped sets (node counter and the last ``/diagnostics`` value);
* resident memory after warm-up and at the end, and its linear trend over the rest of the run.

DDS stays on loopback (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) in a private domain.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))

import numpy as np

from rgbd_seg_ros.allocator import tune_allocator

NAMESPACE = f"/bench{os.getpid()}"
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def camera(namespace: str, rate: float, size: tuple[int, int], qos: str, stop: mp.Event, ready: mp.Event) -> None:
    """Publish colour/depth/CameraInfo at ``rate`` Hz until ``stop`` (run in its own process)."""
    import rclpy
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    profile = qos_profile_sensor_data if qos == "sensor_data" else QoSProfile(depth=5)

    from rgbd_seg_ros.ros.convert import image_from_array
    from rgbd_seg_ros.synthetic import SceneGenerator

    rclpy.init()
    node = rclpy.create_node("camera", namespace=namespace)
    pubs = [
        node.create_publisher(Image, "color/image", profile),
        node.create_publisher(Image, "depth/image", profile),
        node.create_publisher(CameraInfo, "depth/camera_info", profile),
    ]
    gen = SceneGenerator(*size, seed=0)
    scenes = [gen.sample(i).frame for i in range(4)]
    k = scenes[0].intrinsics
    color = [image_from_array(f.rgb, "rgb8") for f in scenes]
    depth = [image_from_array(np.nan_to_num(f.depth * 1000, nan=0).astype(np.uint16), "16UC1") for f in scenes]
    info = CameraInfo(width=k.width, height=k.height, k=[k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0])
    while not all(p.get_subscription_count() for p in pubs):
        time.sleep(0.05)
    ready.set()
    period, n, start = 1.0 / rate, 0, time.monotonic()
    while not stop.is_set():
        t = time.time_ns()
        c, d = color[n % 4], depth[n % 4]
        for msg, stamp in ((c, t), (d, t + 3_000_000), (info, t + 3_000_000)):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = "camera_color_optical_frame"
        for pub, msg in zip(pubs, (c, d, info)):
            pub.publish(msg)
        n += 1
        time.sleep(max(0.0, start + n * period - time.monotonic()))
    node.destroy_node()
    rclpy.try_shutdown()


class SlowModel:
    """Stand-in segmenter taking ``seconds`` per frame (sleeping, so the GIL is free as during GPU inference)."""

    model_name = "stand-in"
    device = "cpu"
    metadata: dict = {}  # noqa: RUF012 - read-only, like the Segmenter's

    def __init__(self, seconds: float) -> None:
        from rgbd_seg_ros.labels import get_label_set

        self.label_set = get_label_set("nyuv2-40")
        self.seconds = seconds

    def __call__(self, frame):
        time.sleep(self.seconds)
        labels = (np.nan_to_num(frame.depth) * 4).astype(np.uint8) % 40
        return SimpleNamespace(labels=labels, confidence=np.ones(labels.shape, np.float32), timings={})


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(args: argparse.Namespace, model: object | None, duration: float) -> dict:
    """Run the camera and one node for ``duration`` s; ``model`` None = the Segmenter of ``--checkpoint``."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from rgbd_seg_ros.ros.diagnostics import NodeStats
    from rgbd_seg_ros.ros.node import SegmentationNode

    namespace = f"{NAMESPACE}_{'model' if model is None else id(model)}"
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    cam = ctx.Process(target=camera, args=(namespace, args.rate, args.size, args.qos, stop, ready), daemon=True)
    cam.start()
    params = [
        Parameter("publish_all", value=True),
        Parameter("sync_backend", value="builtin"),
        Parameter("input_qos", value=args.qos),
    ]
    if model is None:
        params += [Parameter("checkpoint", value=args.checkpoint), Parameter("device", value=args.device)]
    factory = None if model is None else (lambda _p: model)
    node = SegmentationNode(factory, namespace=namespace, parameter_overrides=params)
    node.stats = NodeStats(window=10**7)  # keep every latency of the run
    diag_dropped: list[int] = []
    name = f"{node.get_fully_qualified_name()}: segmentation"

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == name:
                diag_dropped.append(int({kv.key: kv.value for kv in status.values}["dropped sets"]))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    if not ready.wait(60):
        raise SystemExit("camera did not discover the node within 60 s")
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration:
        samples.append((elapsed, rss_mb()))
        time.sleep(1.0)
    counts = {k: node.stats.total(k) for k in ("color", "synchronised", "published", "dropped", "rejected", "errors")}
    stop.set()
    cam.join(10)
    time.sleep(1.5)  # one more diagnostics message
    series = {k: node.stats.values(k) for k in ("latency", "inference", "overhead", "input delay", "node latency")}
    series["queue wait"] = node.stats.values("queue wait")
    executor.shutdown()
    node.destroy_node()
    return {"counts": counts, "series": series, "samples": samples, "diag_dropped": diag_dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of camera stream (default 120)")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of the instant-model baseline (15)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate, Hz (default 30)")
    parser.add_argument("--model-time", type=float, default=0.1, help="stand-in model seconds per frame (0.1)")
    parser.add_argument("--size", type=_size, default=(480, 640), help="frame HxW (default 480x640)")
    parser.add_argument("--checkpoint", default="", help="use this checkpoint's Segmenter instead of the stand-in")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--qos",
        choices=("reliable", "sensor_data"),
        default="sensor_data",
        help="camera publishers and node inputs (default sensor_data: best effort, as camera drivers publish)",
    )
    parser.add_argument(
        "--fastdds-profile",
        default=str(PROFILE),
        help="Fast DDS XML profile of the camera and the node (default: config/fastdds_large_images.xml, as "
        "seg.launch.py and the README set it up; '' = Fast DDS defaults)",
    )
    args = parser.parse_args()
    tune_allocator()  # as rgbd_seg_node's main does
    os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if args.fastdds_profile:  # before rclpy.init here and inherited by the camera process
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = args.fastdds_profile

    import rclpy

    from rgbd_seg_ros.ros.diagnostics import percentile

    rclpy.init()
    base = run_phase(args, SlowModel(0.0), args.baseline) if args.baseline > 0 else None
    run = run_phase(args, None if args.checkpoint else SlowModel(args.model_time), args.duration)
    rclpy.try_shutdown()

    counts, series, samples = run["counts"], run["series"], run["samples"]
    if not series["latency"]:
        raise SystemExit(f"the node published nothing ({counts}); see its log above")
    model_s = args.model_time if not args.checkpoint else percentile(series["inference"], 50) / 1e3
    warmup = min(20.0, 0.2 * args.duration)
    late = [(t, m) for t, m in samples if t >= warmup]
    slope = np.polyfit(*np.array(late).T, 1)[0] * 60 if len(late) > 2 else float("nan")

    def p(name: str, q: float, result: dict = run) -> float:
        return percentile(result["series"][name], q)

    def per_s(n: int) -> str:
        return f"{n / args.duration:.1f} Hz"

    print(
        f"camera {args.rate:g} Hz {args.size[1]}x{args.size[0]} ({args.qos}, Fast DDS profile "
        f"{Path(args.fastdds_profile).name if args.fastdds_profile else 'none'}), {args.duration:g} s; model "
        f"{model_s * 1e3:.0f} ms (measured inference p50 {p('inference', 50):.1f} ms); node conversion+publish "
        f"p50 {p('overhead', 50):.1f} ms"
    )
    if base is not None:
        print(
            f"baseline (instant model, {args.baseline:g} s): latency stamp→publish p50 {p('latency', 50, base):.1f} "
            f"ms, p95 {p('latency', 95, base):.1f} ms; input delay p95 {p('input delay', 95, base):.1f} ms"
        )
    print(
        f"input: colour {per_s(counts['color'])}, synchronised {counts['synchronised']} sets "
        f"({per_s(counts['synchronised'])}); output: {counts['published']} sets ({per_s(counts['published'])})"
    )
    diag = run["diag_dropped"][-1] if run["diag_dropped"] else "none received"
    print(
        f"dropped: {counts['dropped']} ({counts['dropped'] / max(counts['synchronised'], 1):.0%} of sets); last "
        f"/diagnostics 'dropped sets' = {diag}; rejected {counts['rejected']}, errors {counts['errors']}"
    )
    print(f"input delay stamp→synchronised set: p50 {p('input delay', 50):.1f} ms, p95 {p('input delay', 95):.1f} ms")
    p95 = p("latency", 95)
    print(
        f"latency stamp→publish: p50 {p('latency', 50):.1f} ms, p95 {p95:.1f} ms, max "
        f"{max(series['latency']):.1f} ms (n={len(series['latency'])}); p95 / (2 × model) = "
        f"{p95 / (2e3 * model_s):.2f}"
    )
    print(
        f"node latency set synchronised→publish: p50 {p('node latency', 50):.1f} ms, p95 "
        f"{p('node latency', 95):.1f} ms; p95 / (2 × model) = {p('node latency', 95) / (2e3 * model_s):.2f}; "
        f"waiting for the worker p50 {p('queue wait', 50):.1f} ms, p95 {p('queue wait', 95):.1f} ms"
    )
    print(
        f"memory (RSS): {late[0][1]:.1f} MB after {warmup:.0f} s warm-up → {samples[-1][1]:.1f} MB at the end "
        f"({samples[-1][1] - late[0][1]:+.1f} MB); trend {slope:+.2f} MB/min"
    )
    quarters = [late[min(len(late) - 1, round(q * (len(late) - 1)))] for q in (0.25, 0.5, 0.75, 1.0)]
    print("  RSS over the run: " + ", ".join(f"{m:.1f} MB at {t:.0f} s" for t, m in quarters))


if __name__ == "__main__":
    main()
