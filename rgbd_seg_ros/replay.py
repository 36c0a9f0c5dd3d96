"""Replay evaluation: run the Segmenter over a recorded rosbag2 as the live node would, and report on it.

Pairing is the node's (:func:`rgbd_seg_ros.bag.read_synchronized`: recording order, ApproximateTime policy,
the node's ``queue_size`` and ``slop``), and so are the frames (:func:`rgbd_seg_ros.bag.frame_of`) and
the outputs. Two modes:

* **offline** (default): every synchronised set is segmented; nothing is dropped.
* **real time** (``realtime=RATE``): the recording plays at ``RATE``× speed on a simulated clock, and the
  sets are handled with the node's worker policy. One set is in flight and only the newest set waits; a
  waiting set replaced by a newer one is *dropped*. A set keeps the worker busy for its measured wall time
  (decode → segment → output images), so the recorded camera timing and the measured model decide together
  what a live node on this machine would have dropped. Nothing sleeps.

Each output carries its colour image's stamp, and its bag timestamp is that stamp too, so ``ros2 bag play``
plays outputs on the recording's timeline. Ground truth (a label image stamped like its colour image,
holding dataset ids) is mapped with the model's label set (``LabelSet.to_train_ids``). It is accumulated in one
:class:`~rgbd_seg_ros.metrics.ConfusionMatrix` over the processed sets.

Ctrl-C (SIGINT) lets the current set finish, then writes the output bag and the report with
``"interrupted": true``; a second Ctrl-C aborts at once (the output bag is still closed properly).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rgbd_seg_ros.bag import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SLOP,
    LABEL_TOPIC,
    OUTPUT_TOPICS,
    BagError,
    BagReader,
    BagWriter,
    InputTopics,
    LabelMessage,
    SyncedSet,
    check_inputs,
    frame_of,
    label_ids,
    read_synchronized,
)
from rgbd_seg_ros.labels import colorize, overlay
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.ros.convert import COLOR_ENCODINGS, DEPTH_ENCODINGS
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer

__all__ = [
    "OUTPUT_BAG",
    "LiveScheduler",
    "ReplayOptions",
    "ReplayResult",
    "format_summary",
    "replay",
    "summarize",
    "validate_bag",
]

OUTPUT_BAG = "output.mcap"
#: Ground-truth or prediction images kept while waiting for their partner (stamp order, oldest dropped first).
_MAX_WAITING = 64


@dataclass
class ReplayOptions:
    """What to read and how.

    Attributes:
        topics: colour, depth and depth-CameraInfo topics.
        label_topic: ground truth; None = :data:`~rgbd_seg_ros.bag.LABEL_TOPIC` when the bag has it,
            ``""`` = no evaluation.
        queue_size, slop: the synchroniser's (the node's defaults).
        realtime: None = offline; a rate (> 0, 1.0 = recorded speed) = simulate the live node's drops.
        depth_scale: metres per depth unit; None = REP 118 units.
        overlay_alpha: palette weight of the overlay output.
        samples: sample overlays kept for the report (spread over the bag).
        progress: show a progress bar (on a terminal).
    """

    topics: InputTopics = field(default_factory=InputTopics)
    label_topic: str | None = None
    queue_size: int = DEFAULT_QUEUE_SIZE
    slop: float = DEFAULT_SLOP
    realtime: float | None = None
    depth_scale: float | None = None
    overlay_alpha: float = 0.5
    samples: int = 6
    progress: bool = True

    def __post_init__(self) -> None:
        if int(self.queue_size) < 1 or not self.slop > 0:
            raise ValueError(f"queue_size must be ≥ 1 and slop > 0 s, got {self.queue_size} and {self.slop}")
        if self.samples < 0:
            raise ValueError(f"samples must be ≥ 0, got {self.samples}")
        if self.realtime is not None and not self.realtime > 0:
            raise ValueError(f"realtime rate must be > 0 (1.0 = recorded speed), got {self.realtime}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")


@dataclass
class ReplayResult:
    """The report (as written to ``report.json``) and the files written."""

    report: dict[str, Any]
    files: dict[str, Path]

    @property
    def interrupted(self) -> bool:
        return bool(self.report.get("interrupted"))


def validate_bag(bag: str | Path, options: ReplayOptions) -> str | None:
    """Check that ``bag`` can be replayed with ``options`` (cheap: no model); returns the label topic used.

    Raises:
        FileNotFoundError, BagError: not a bag, unreadable, missing topics or wrong types.
    """
    with BagReader(bag) as reader:
        label_topic = _label_topic(reader, options.label_topic)
        check_inputs(reader, options.topics, label_topic)
    return label_topic


def _label_topic(reader: BagReader, requested: str | None) -> str | None:
    if requested is None:
        return LABEL_TOPIC if LABEL_TOPIC in reader.topics else None
    return requested or None


def summarize(values: Any) -> dict[str, float | None]:
    """``p50``, ``p95``, ``max`` and ``mean`` of ``values`` (None each when empty)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    p50, p95 = np.percentile(arr, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "max": float(arr.max()), "mean": float(arr.mean())}


class LiveScheduler:
    """The node's worker policy on a simulated clock: one set in flight, only the newest one waiting.

    ``process(item) -> seconds busy`` runs an item. :meth:`offer` is called with each item at its arrival
    time (seconds, non-decreasing). An item that arrives while the worker is idle starts at once. Otherwise
    it waits, and replaces (drops) an item already waiting. When the worker frees up, the waiting item
    starts. ``timeline`` holds ``(arrival, start, finish)`` per processed item; ``dropped`` counts the
    replaced ones.
    """

    def __init__(self, process: Callable[[Any], float]) -> None:
        self.process = process
        self.free_at = float("-inf")
        self.waiting: tuple[Any, float] | None = None
        self.dropped = 0
        self.timeline: list[tuple[float, float, float]] = []

    def offer(self, item: Any, arrival: float) -> None:
        """``item`` arrives at ``arrival`` seconds."""
        if self.waiting is not None and self.free_at <= arrival:
            waiting, arrived = self.waiting
            self.waiting = None
            self._run(waiting, arrived, max(self.free_at, arrived))
        if self.free_at <= arrival:
            self._run(item, arrival, arrival)
            return
        if self.waiting is not None:
            self.dropped += 1
        self.waiting = (item, arrival)

    def finish(self) -> None:
        """End of the stream: the waiting item (if any) runs when the worker is free."""
        if self.waiting is not None:
            item, arrived = self.waiting
            self.waiting = None
            self._run(item, arrived, max(self.free_at, arrived))

    def _run(self, item: Any, arrival: float, start: float) -> None:
        busy = float(self.process(item))
        self.free_at = start + busy
        self.timeline.append((arrival, start, self.free_at))


class _Stop:
    """Set by the first SIGINT while a replay runs (main thread only); the second raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def on_sigint(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print(
                "\ninterrupted: finishing the current set, then writing the output bag and the report "
                "(Ctrl-C again to abort)",
                file=sys.stderr,
                flush=True,
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


@dataclass
class _Sample:
    """A processed set kept for the report's overlay strip (ground truth attached when it is known)."""

    stamp_ns: int
    rgb: np.ndarray
    prediction: np.ndarray
    ground_truth: np.ndarray | None = None


class _Run:
    """Segments synchronised sets, writes their outputs and accumulates timings, samples and metrics."""

    def __init__(self, segmenter: Any, writer: BagWriter, options: ReplayOptions, evaluate: bool, expected: int):
        self.segmenter = segmenter
        self.label_set = segmenter.label_set
        self.writer = writer
        self.options = options
        self.labels_encoding = "mono8" if self.label_set.label_dtype == np.uint8 else "mono16"
        self.confusion = (
            ConfusionMatrix(self.label_set.num_classes, ignore_index=self.label_set.ignore_index) if evaluate else None
        )
        self.waiting_truth: dict[int, np.ndarray] = {}
        self.waiting_prediction: dict[int, np.ndarray] = {}
        self.evaluated = 0
        self.labels_read = 0
        self.records: list[dict[str, float]] = []
        self.rejected: Counter[str] = Counter()
        self.samples: dict[int, _Sample] = {}
        self.sample_every = max(1, -(-expected // max(1, options.samples)))
        self.write_ms: list[float] = []

    # -- one set ------------------------------------------------------------------------------------------------
    def accepts(self, synced: SyncedSet) -> bool:
        """The node's callback check: sets with an unsupported encoding are rejected, not queued."""
        for role, msg, allowed in (("colour", synced.color, COLOR_ENCODINGS), ("depth", synced.depth, DEPTH_ENCODINGS)):
            if msg.encoding not in allowed:
                self.rejected[f"{role} image encoding {msg.encoding!r} is not supported"] += 1
                return False
        return True

    def process(self, synced: SyncedSet) -> float:
        """Segment one set, write its outputs; returns the seconds the node's worker would be busy."""
        t0 = time.perf_counter()
        try:
            frame, _ = frame_of(synced, self.options.depth_scale)
        except ValueError as exc:
            self.rejected[str(exc)] += 1
            return time.perf_counter() - t0
        t1 = time.perf_counter()
        result = self.segmenter(frame)
        t2 = time.perf_counter()
        labels = np.asarray(result.labels).astype(self.label_set.label_dtype, copy=False)
        outputs = {
            "labels": (labels, self.labels_encoding),
            "color": (colorize(labels, self.label_set), "rgb8"),
            "overlay": (overlay(frame.rgb, labels, self.label_set, self.options.overlay_alpha), "rgb8"),
            "confidence": (np.asarray(result.confidence, dtype=np.float32), "32FC1"),
        }
        t3 = time.perf_counter()
        for name, (array, encoding) in outputs.items():
            self.writer.write_image(OUTPUT_TOPICS[name], array, encoding, frame.stamp_ns, frame.frame_id)
        t4 = time.perf_counter()
        record = {"stamp_ns": frame.stamp_ns, "convert": (t1 - t0) * 1e3}
        record.update({k: float(v) for k, v in result.timings.items() if k != "total"})
        record.update(segment=(t2 - t1) * 1e3, render=(t3 - t2) * 1e3, total=(t3 - t0) * 1e3)
        self.records.append(record)
        self.write_ms.append((t4 - t3) * 1e3)
        if (len(self.records) - 1) % self.sample_every == 0 and len(self.samples) < self.options.samples:
            self.samples[frame.stamp_ns] = _Sample(frame.stamp_ns, frame.rgb, labels)
        if self.confusion is not None:
            self._pair(frame.stamp_ns, prediction=labels)
        return t3 - t0

    # -- ground truth ---------------------------------------------------------------------------------------------
    def add_truth(self, label: LabelMessage) -> None:
        """A ground-truth image: evaluated now if its set was processed, else kept until it is."""
        self.labels_read += 1
        if self.confusion is None:
            return
        try:
            truth = self.label_set.to_train_ids(label_ids(label.msg))
        except ValueError as exc:
            raise BagError(f"ground truth stamped {label.stamp_ns} ns: {exc}") from None
        self._pair(label.stamp_ns, truth=truth)

    def _pair(self, stamp: int, prediction: np.ndarray | None = None, truth: np.ndarray | None = None) -> None:
        if prediction is not None:
            truth = self.waiting_truth.pop(stamp, None)
            if truth is None:
                _keep(self.waiting_prediction, stamp, prediction)
                return
        else:
            prediction = self.waiting_prediction.pop(stamp, None)
            if prediction is None:
                _keep(self.waiting_truth, stamp, truth)
                return
        if truth.shape != prediction.shape:
            raise BagError(
                f"ground truth stamped {stamp} ns is {truth.shape[1]}x{truth.shape[0]} but its colour image is "
                f"{prediction.shape[1]}x{prediction.shape[0]}"
            )
        self.confusion.update(prediction, truth)
        self.evaluated += 1
        if stamp in self.samples:
            self.samples[stamp].ground_truth = truth


def _keep(waiting: dict[int, np.ndarray], stamp: int, image: np.ndarray) -> None:
    waiting[stamp] = image
    while len(waiting) > _MAX_WAITING:
        del waiting[min(waiting)]


def replay(bag: str | Path, segmenter: Any, out_dir: str | Path, options: ReplayOptions | None = None) -> ReplayResult:
    """Replay ``bag`` through ``segmenter``; write ``output.mcap``, ``report.json``, ``report.html`` and figures.

    Args:
        bag: a rosbag2 folder or ``.mcap`` / ``.db3`` file.
        segmenter: a :class:`~rgbd_seg_ros.pipeline.Segmenter` (anything with ``label_set`` and
            ``__call__(RGBDFrame) -> Segmentation``).
        out_dir: created if needed; earlier outputs of a replay there are replaced.

    Raises:
        FileNotFoundError, BagError: the bag cannot be replayed. A bag found corrupt part-way raises
        :class:`BagError` *after* the output bag and report of the sets before it have been written.
    """
    from rgbd_seg_ros.report import write_report

    options = options or ReplayOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    output = out / OUTPUT_BAG
    stop = _Stop()
    with stop.on_sigint(), BagReader(bag) as reader:
        label_topic = _label_topic(reader, options.label_topic)
        check_inputs(reader, options.topics, label_topic)
        if output.exists():
            output.unlink()
        expected = reader.topics[options.topics.color].count
        total_msgs = sum(reader.topics[t].count for t in (*options.topics.as_tuple(), *filter(None, [label_topic])))
        sync = ApproximateTimeSynchronizer(3, options.queue_size, options.slop)
        error = None
        start = time.perf_counter()
        with BagWriter(output) as writer:
            run = _Run(segmenter, writer, options, evaluate=label_topic is not None, expected=expected)
            scheduler = LiveScheduler(run.process) if options.realtime else None
            try:
                _play(reader, options, label_topic, sync, run, scheduler, stop, total_msgs)
            except BagError as exc:
                error = str(exc)
            if scheduler is not None and not stop.requested and error is None:
                scheduler.finish()
        wall = time.perf_counter() - start
        report = _report(reader, options, label_topic, sync, run, scheduler, wall, stop.requested, error)
        report["outputs"] = {"bag": OUTPUT_BAG, "topics": dict(OUTPUT_TOPICS), "messages": dict(writer.counts)}
        files = write_report(out, report, run.records, run.confusion, run.label_set, list(run.samples.values()))
    if error is not None:
        raise BagError(f"{error}\n(the output bag and report in {out} cover the {len(run.records)} sets before it)")
    return ReplayResult(report, files)


def _play(
    reader: BagReader,
    options: ReplayOptions,
    label_topic: str | None,
    sync: ApproximateTimeSynchronizer,
    run: _Run,
    scheduler: LiveScheduler | None,
    stop: _Stop,
    total_msgs: int,
) -> None:
    """The replay loop: sets to the worker (directly or through the scheduler), labels to the evaluation."""
    from tqdm import tqdm

    first_arrival = None
    with tqdm(total=total_msgs, desc="replay", unit="msg", disable=None if options.progress else True) as bar:
        for item in read_synchronized(reader, options.topics, sync, label_topic):
            if isinstance(item, LabelMessage):
                run.add_truth(item)
            elif run.accepts(item):
                if scheduler is None:
                    run.process(item)
                else:
                    first_arrival = item.arrival_ns if first_arrival is None else first_arrival
                    scheduler.offer(item, (item.arrival_ns - first_arrival) / 1e9 / options.realtime)
            bar.update(sum(sync.received) + run.labels_read - bar.n)
            bar.set_postfix(sets=len(run.records), dropped=scheduler.dropped if scheduler else 0, refresh=False)
            if stop.requested:
                break


def _report(
    reader: BagReader,
    options: ReplayOptions,
    label_topic: str | None,
    sync: ApproximateTimeSynchronizer,
    run: _Run,
    scheduler: LiveScheduler | None,
    wall: float,
    interrupted: bool,
    error: str | None,
) -> dict[str, Any]:
    topics = options.topics.as_tuple()
    stages = [k for k in dict.fromkeys(k for r in run.records for k in r) if k not in ("stamp_ns", "total")]
    latency = summarize([r["total"] for r in run.records])
    latency["stages"] = {s: summarize([r[s] for r in run.records if s in r]) for s in stages}
    latency["stages"]["write"] = summarize(run.write_ms)
    frames_per_topic = dict(zip(topics, sync.received))
    if label_topic:
        frames_per_topic[label_topic] = run.labels_read
    report: dict[str, Any] = {
        "bag": str(reader.path),
        "storage": reader.storage,
        "model": getattr(run.segmenter, "model_name", type(run.segmenter).__name__),
        "label_set": run.label_set.name,
        "device": str(getattr(run.segmenter, "device", "cpu")),
        "topics": {"color": topics[0], "depth": topics[1], "camera_info": topics[2], "labels": label_topic},
        "sync": {"queue_size": options.queue_size, "slop": options.slop},
        "frames_per_topic": frames_per_topic,
        "synchronized": sync.matched,
        "unmatched": dict(zip(topics, sync.unmatched)),
        "queue_overflow": dict(zip(topics, sync.dropped)),
        "rejected": sum(run.rejected.values()),
        "rejected_reasons": dict(run.rejected),
        "processed": len(run.records),
        "dropped": scheduler.dropped if scheduler else 0,
        "realtime_rate": options.realtime,
        "latency_ms": latency,
        "end_to_end_ms": summarize([(f - a) * 1e3 for a, _, f in scheduler.timeline]) if scheduler else None,
        "throughput_fps": len(run.records) / wall if wall > 0 else None,
        "wall_time_s": wall,
        "interrupted": interrupted,
        "error": error,
        "metrics": None,
    }
    if run.confusion is not None:
        metrics = run.confusion.as_dict(run.label_set.class_names)
        metrics.update(
            frames=run.evaluated,
            frames_without_labels=len(run.records) - run.evaluated,
            confusion_matrix=run.confusion.matrix.tolist(),
        )
        report["metrics"] = metrics
    return report


def format_summary(result: ReplayResult) -> str:
    """A few lines for the terminal: counts, latency, throughput, metrics and where the files are."""
    r, files = result.report, result.files
    lat = r["latency_ms"]
    color = r["topics"]["color"]
    ms = " / ".join("–" if lat[k] is None else f"{lat[k]:.1f}" for k in ("p50", "p95", "max"))
    lines = [
        f"{'interrupted after' if r['interrupted'] else 'replayed'} {r['processed']} of {r['synchronized']} "
        f"synchronised sets ({r['dropped']} dropped, {r['rejected']} rejected, {r['unmatched'][color]} colour "
        f"images unmatched) in {r['wall_time_s']:.1f} s: {r['throughput_fps'] or 0:.2f} sets/s",
        f"latency p50 / p95 / max: {ms} ms (decode → outputs; model {r['model']} on {r['device']})",
    ]
    metrics = r.get("metrics")
    if metrics and metrics["frames"]:
        m = {k: "–" if metrics[k] is None else f"{metrics[k]:.4f}" for k in ("miou", "pixel_accuracy", "mean_accuracy")}
        lines.append(
            f"mIoU {m['miou']}, pixel accuracy {m['pixel_accuracy']}, mean accuracy {m['mean_accuracy']} over "
            f"{metrics['frames']} labelled frames ({r['label_set']})"
        )
    out = files["json"].parent
    lines += [f"output bag: {out / OUTPUT_BAG}", f"report:     {files['html']} ({files['json'].name})"]
    if "overlays" in files:
        lines.append(f"overlays:   {files['overlays']} and {out / 'overlays'}/")
    return "\n".join(lines)
