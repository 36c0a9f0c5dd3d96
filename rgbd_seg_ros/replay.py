"""Replay evaluation: run the Segmenter over a recorded rosbag2 as the live node would, and report on it.

Pairing is the node's (:func:`rgbd_seg_ros.bag.read_synchronized`: recording order, ApproximateTime policy,
the node's ``queue_size`` and ``slop``), and so are the frames (:func:`rgbd_seg_ros.bag.frame_of`) and
the outputs (:func:`rgbd_seg_ros.render.render_outputs`). Two modes:

* **offline** (default): every synchronised set is segmented; nothing is dropped.
* **real time** (``realtime=RATE``): the recording plays at ``RATE``× speed on a simulated clock, and the
  sets are handled with the node's worker policy. One set is in flight and only the newest set waits; a
  waiting set replaced by a newer one is *dropped*. A set keeps the worker busy for its measured wall time
  (decode → segment → output images), so the recorded camera timing and the measured model decide together
  what a live node on this machine would have dropped. Nothing sleeps.

Each output carries its colour image's stamp, and its bag timestamp is that stamp too, so ``ros2 bag play``
plays outputs on the recording's timeline. Ground truth (a label image stamped like its colour image,
holding dataset ids) is mapped with the model's label set (``LabelSet.to_train_ids``). It is accumulated in one
:class:`~rgbd_seg_ros.metrics.ConfusionMatrix` over the processed sets; scores are reported in percent.

Outputs (:data:`REPLAY_FILES`: ``output.mcap``, ``report.json``, ``report.html``, figures, ``overlays/``) are
written into a hidden staging folder inside ``out_dir`` and moved into place when the run ends, so the folder
never mixes two runs. A folder that holds another run's files is refused unless ``overwrite`` is given; then
exactly those files are replaced and anything else in the folder is left alone.

Ctrl-C (SIGINT) lets the current set finish, then writes the output bag and the report with
``"interrupted": true``; a second Ctrl-C aborts at once and writes nothing (an earlier run stays as it was).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rgbd_seg_ros.bag import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SLOP,
    LABEL_TOPIC,
    OUTPUT_TOPICS,
    POINTS_TOPIC,
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
    resolve_input_topics,
)
from rgbd_seg_ros.frames import DEPTH_UNITS_WARNING, valid_depth_fraction
from rgbd_seg_ros.labels import LabelSet
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.render import render_outputs
from rgbd_seg_ros.report import (
    REPORT_FILES,
    AccuracyReport,
    DepthReport,
    LatencyReport,
    ReplayReport,
    Stats,
    write_report,
)
from rgbd_seg_ros.ros.compressed import message_encoding
from rgbd_seg_ros.ros.convert import COLOR_ENCODINGS, DEPTH_ENCODINGS, stamp_to_ns
from rgbd_seg_ros.ros.points import semantic_cloud
from rgbd_seg_ros.settings import DEFAULT_MIN_VALID_DEPTH, LOG, RunOptions, resolve_depth_range
from rgbd_seg_ros.sync import ApproximateTimeSynchronizer

__all__ = [
    "OUTPUT_BAG",
    "REPLAY_FILES",
    "LiveScheduler",
    "ReplayIncomplete",
    "ReplayOptions",
    "ReplayResult",
    "check_output_dir",
    "format_summary",
    "replay",
    "validate_bag",
]

OUTPUT_BAG = "output.mcap"
#: Everything a replay writes into its output folder; ``overwrite`` replaces exactly these.
REPLAY_FILES: tuple[str, ...] = (OUTPUT_BAG, *REPORT_FILES)
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
        min_valid_depth: valid-depth fraction below which a set counts as a depth outage (the node's parameter).
        points_stride: also write the node's ``~/points`` (:data:`~rgbd_seg_ros.bag.POINTS_TOPIC`, the depth
            image's stamp and frame) at this pixel stride; None = no point cloud.
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
    points_stride: int | None = None
    min_valid_depth: float = DEFAULT_MIN_VALID_DEPTH

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_valid_depth <= 1.0:
            raise ValueError(f"min_valid_depth must be a fraction in [0, 1], got {self.min_valid_depth}")
        if self.points_stride is not None and int(self.points_stride) < 1:
            raise ValueError(f"points_stride must be ≥ 1, got {self.points_stride}")
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
    """The report (also in ``report.json``) and the files written (name → path)."""

    report: ReplayReport
    files: dict[str, Path]

    @property
    def interrupted(self) -> bool:
        return self.report.interrupted


class ReplayIncomplete(BagError):
    """The bag turned out corrupt part-way; :attr:`result` covers the sets before it (outputs and report written)."""

    def __init__(self, message: str, result: ReplayResult) -> None:
        super().__init__(message)
        self.result = result


def validate_bag(bag: str | Path, options: ReplayOptions) -> str | None:
    """Check that ``bag`` can be replayed with ``options`` (cheap: no model); returns the label topic used.

    Raises:
        FileNotFoundError, BagError: not a bag, unreadable, missing topics or wrong types.
    """
    with BagReader(bag) as reader:
        label_topic = _label_topic(reader, options.label_topic)
        check_inputs(reader, options.topics, label_topic)
    return label_topic


def check_output_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Check that a replay may write into ``out_dir`` (cheap: call it before loading a model).

    Raises:
        NotADirectoryError: ``out_dir`` is a file.
        FileExistsError: it holds another run's files (:data:`REPLAY_FILES`) and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the output folder {out} is a file")
    previous = [name for name in REPLAY_FILES if (out / name).exists()]
    if previous and not overwrite:
        raise FileExistsError(
            f"the output folder {out} holds another replay run ({', '.join(previous[:3])}"
            f"{', ...' if len(previous) > 3 else ''}); choose a new folder, or pass --overwrite to "
            "replace that run's files"
        )
    return out


def _label_topic(reader: BagReader, requested: str | None) -> str | None:
    if requested is None:
        return LABEL_TOPIC if LABEL_TOPIC in reader.topics else None
    return requested or None


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


class _Evaluation:
    """Pairs predictions with ground truth by colour stamp and accumulates the confusion matrix."""

    def __init__(self, label_set: LabelSet) -> None:
        self.label_set = label_set
        self.confusion = ConfusionMatrix(label_set.num_classes, ignore_index=label_set.ignore_index)
        self.waiting_truth: dict[int, np.ndarray] = {}
        self.waiting_prediction: dict[int, np.ndarray] = {}
        self.labels_read = 0
        self.evaluated = 0

    def add_truth(self, label: LabelMessage) -> tuple[int, np.ndarray] | None:
        """A ground-truth image; returns ``(stamp, train ids)`` if its set was processed already."""
        self.labels_read += 1
        try:
            truth = self.label_set.to_train_ids(label_ids(label.msg))
        except ValueError as exc:
            raise BagError(f"ground truth stamped {label.stamp_ns} ns: {exc}") from None
        prediction = self.waiting_prediction.pop(label.stamp_ns, None)
        if prediction is None:
            _keep(self.waiting_truth, label.stamp_ns, truth)
            return None
        self._score(label.stamp_ns, prediction, truth)
        return label.stamp_ns, truth

    def add_prediction(self, stamp: int, prediction: np.ndarray) -> np.ndarray | None:
        """A processed set's labels; returns its ground truth if that was read already."""
        truth = self.waiting_truth.pop(stamp, None)
        if truth is None:
            _keep(self.waiting_prediction, stamp, prediction)
            return None
        self._score(stamp, prediction, truth)
        return truth

    def _score(self, stamp: int, prediction: np.ndarray, truth: np.ndarray) -> None:
        if truth.shape != prediction.shape:
            raise BagError(
                f"ground truth stamped {stamp} ns is {truth.shape[1]}x{truth.shape[0]} but its colour image is "
                f"{prediction.shape[1]}x{prediction.shape[0]}"
            )
        self.confusion.update(prediction, truth)
        self.evaluated += 1


def _keep(waiting: dict[int, np.ndarray], stamp: int, image: np.ndarray) -> None:
    waiting[stamp] = image
    while len(waiting) > _MAX_WAITING:
        del waiting[min(waiting)]


class _Worker:
    """What the node's worker does per set: decode, segment, render and write the outputs; timed per stage."""

    def __init__(self, segmenter: Any, writer: BagWriter, options: ReplayOptions, expected: int) -> None:
        self.segmenter = segmenter
        self.label_set: LabelSet = segmenter.label_set
        self.writer = writer
        self.options = options
        self.evaluation: _Evaluation | None = None
        self.records: list[dict[str, float]] = []
        self.write_ms: list[float] = []
        self.rejected: Counter[str] = Counter()
        self.samples: dict[int, _Sample] = {}
        self.sample_every = max(1, -(-expected // max(1, options.samples)))
        self.units_warned = False  # depth that looks like another unit is reported once per replay
        self.valid_depth: list[float] = []  # per processed set: fraction with depth in the model's range
        self.depth_range = getattr(segmenter, "depth_range_m", None) or resolve_depth_range(RunOptions(), {})

    def accepts(self, synced: SyncedSet) -> bool:
        """The node's callback check: sets with an unsupported encoding are rejected, not queued."""
        for role, msg, allowed in (("colour", synced.color, COLOR_ENCODINGS), ("depth", synced.depth, DEPTH_ENCODINGS)):
            if message_encoding(msg) not in allowed:
                self.rejected[f"{role} image encoding {message_encoding(msg)!r} is not supported"] += 1
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
        if frame.meta.get(DEPTH_UNITS_WARNING) and not self.units_warned:
            self.units_warned = True
            LOG.warning("%s", frame.meta[DEPTH_UNITS_WARNING])
        self.valid_depth.append(valid_depth_fraction(frame, *self.depth_range))
        t1 = time.perf_counter()
        result = self.segmenter(frame)
        t2 = time.perf_counter()
        images = render_outputs(
            frame.rgb, result.labels, result.confidence, self.label_set, overlay_alpha=self.options.overlay_alpha
        )
        t3 = time.perf_counter()
        for name, (array, encoding) in images.items():
            self.writer.write_image(OUTPUT_TOPICS[name], array, encoding, frame.stamp_ns, frame.frame_id)
        if self.options.points_stride is not None:
            self._write_points(frame, result, synced.depth.header)
        t4 = time.perf_counter()
        record = {"stamp_ns": frame.stamp_ns, "convert": (t1 - t0) * 1e3}
        record.update({k: float(v) for k, v in result.timings.items() if k != "total"})
        record.update(segment=(t2 - t1) * 1e3, render=(t3 - t2) * 1e3, total=(t3 - t0) * 1e3)
        self.records.append(record)
        self.write_ms.append((t4 - t3) * 1e3)
        labels = images["labels"][0]
        if (len(self.records) - 1) % self.sample_every == 0 and len(self.samples) < self.options.samples:
            self.samples[frame.stamp_ns] = _Sample(frame.stamp_ns, frame.rgb, labels)
        if self.evaluation is not None:
            self._attach(frame.stamp_ns, self.evaluation.add_prediction(frame.stamp_ns, labels))
        return t3 - t0

    def _write_points(self, frame: Any, result: Any, depth_header: Any) -> None:
        """The node's ``~/points`` of a processed set (ros/points.py), with the depth image's stamp and frame."""
        cloud = semantic_cloud(
            frame.depth,
            frame.intrinsics,
            frame.rgb,
            result.labels,
            result.confidence,
            int(self.options.points_stride),
            depth_range=self.depth_range,  # as the node: the Segmenter's valid depth
        )
        stamp = stamp_to_ns(depth_header.stamp)
        self.writer.write_points(POINTS_TOPIC, cloud, stamp, depth_header.frame_id)

    def add_truth(self, label: LabelMessage) -> None:
        """A ground-truth image for the evaluation (and the sample strip)."""
        if self.evaluation is not None:
            matched = self.evaluation.add_truth(label)
            if matched is not None:
                self._attach(*matched)

    def _attach(self, stamp: int, truth: np.ndarray | None) -> None:
        if truth is not None and stamp in self.samples:
            self.samples[stamp].ground_truth = truth


@dataclass
class _Session:
    """One replay's state: what is read, how it is paired and handled, and how the run ended."""

    reader: BagReader
    options: ReplayOptions
    label_topic: str | None
    sync: ApproximateTimeSynchronizer
    worker: _Worker
    scheduler: LiveScheduler | None
    stop: _Stop
    wall_s: float = 0.0
    error: str | None = None

    @property
    def labels_read(self) -> int:
        return self.worker.evaluation.labels_read if self.worker.evaluation else 0


def replay(
    bag: str | Path,
    segmenter: Any,
    out_dir: str | Path,
    options: ReplayOptions | None = None,
    overwrite: bool = False,
) -> ReplayResult:
    """Replay ``bag`` through ``segmenter``; write ``output.mcap``, ``report.json``, ``report.html`` and figures.

    Args:
        bag: a rosbag2 folder or ``.mcap`` / ``.db3`` file.
        segmenter: a :class:`~rgbd_seg_ros.pipeline.Segmenter` (anything with ``label_set`` and
            ``__call__(RGBDFrame) -> Segmentation``).
        out_dir: created if needed. If it holds another run (:data:`REPLAY_FILES`), it is refused unless
            ``overwrite``, which replaces exactly those files when the new run ends.

    Raises:
        FileNotFoundError, BagError: the bag cannot be replayed (nothing is written).
        FileExistsError, OSError: ``out_dir`` holds another run, or cannot be written.
        ReplayIncomplete: the bag was found corrupt part-way; the output bag and report of the sets before
            it have been written (``exc.result``).
    """
    options = options or ReplayOptions()
    out = check_output_dir(out_dir, overwrite)
    stop = _Stop()
    with BagReader(bag) as reader:
        label_topic = _label_topic(reader, options.label_topic)
        check_inputs(reader, options.topics, label_topic)
        options = replace(options, topics=resolve_input_topics(reader, options.topics))  # raw or compressed
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".replay-", suffix=".partial", dir=out))
        try:
            with stop.on_sigint(), BagWriter(staging / OUTPUT_BAG) as writer:
                worker = _Worker(segmenter, writer, options, expected=reader.topics[options.topics.color].count)
                if label_topic is not None:
                    worker.evaluation = _Evaluation(worker.label_set)
                session = _Session(
                    reader,
                    options,
                    label_topic,
                    ApproximateTimeSynchronizer(3, options.queue_size, options.slop),
                    worker,
                    LiveScheduler(worker.process) if options.realtime else None,
                    stop,
                )
                _run(session)
            report = _report(session)
            report.outputs = {"bag": OUTPUT_BAG, "topics": dict(OUTPUT_TOPICS), "messages": dict(writer.counts)}
            evaluation = worker.evaluation
            staged = write_report(
                staging,
                report,
                worker.records,
                evaluation.confusion if evaluation else None,
                worker.label_set,
                list(worker.samples.values()),
            )
            staged["bag"] = staging / OUTPUT_BAG
            files = _commit(staging, out, staged)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    result = ReplayResult(report, files)
    if report.error is not None:
        raise ReplayIncomplete(
            f"{report.error} (the output bag and report in {out} cover the {report.processed} sets before it)", result
        )
    return result


def _commit(staging: Path, out: Path, staged: dict[str, Path]) -> dict[str, Path]:
    """Replace the replay files in ``out`` by the staged ones; returns the files' final paths."""
    for name in REPLAY_FILES:
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in sorted(staging.iterdir()):
        if entry.name in REPLAY_FILES:
            os.replace(entry, out / entry.name)
    return {name: out / path.relative_to(staging) for name, path in staged.items()}


def _run(session: _Session) -> None:
    """Play the bag to its end (or a Ctrl-C, or a corrupt message); time it."""
    start = time.perf_counter()
    try:
        _play(session)
    except BagError as exc:
        session.error = str(exc)
    if session.scheduler is not None and not session.stop.requested and session.error is None:
        session.scheduler.finish()
    session.wall_s = time.perf_counter() - start


def _play(session: _Session) -> None:
    """The replay loop: sets to the worker (directly or through the scheduler), labels to the evaluation."""
    from tqdm import tqdm

    options, worker, scheduler, sync = session.options, session.worker, session.scheduler, session.sync
    topics = (*options.topics.as_tuple(), *filter(None, [session.label_topic]))
    total_msgs = sum(session.reader.topics[t].count for t in topics)
    first_arrival = None
    with tqdm(total=total_msgs, desc="replay", unit="msg", disable=None if options.progress else True) as bar:
        for item in read_synchronized(session.reader, options.topics, sync, session.label_topic):
            if isinstance(item, LabelMessage):
                worker.add_truth(item)
            elif worker.accepts(item):
                if scheduler is None:
                    worker.process(item)
                else:
                    first_arrival = item.arrival_ns if first_arrival is None else first_arrival
                    scheduler.offer(item, (item.arrival_ns - first_arrival) / 1e9 / options.realtime)
            bar.update(sum(sync.received) + session.labels_read - bar.n)
            bar.set_postfix(sets=len(worker.records), dropped=scheduler.dropped if scheduler else 0, refresh=False)
            if session.stop.requested:
                break


def _report(session: _Session) -> ReplayReport:
    worker, sync, scheduler, options = session.worker, session.sync, session.scheduler, session.options
    records = worker.records
    topics = options.topics.as_tuple()
    stages = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("stamp_ns", "total")]
    latency = LatencyReport(**vars(Stats.of([r["total"] for r in records])))
    latency.stages = {s: Stats.of([r[s] for r in records if s in r]) for s in stages}
    latency.stages["write"] = Stats.of(worker.write_ms)
    frames_per_topic = dict(zip(topics, sync.received))
    if session.label_topic:
        frames_per_topic[session.label_topic] = session.labels_read
    evaluation = worker.evaluation
    return ReplayReport(
        bag=str(session.reader.path),
        storage=session.reader.storage,
        model=getattr(worker.segmenter, "model_name", type(worker.segmenter).__name__),
        label_set=worker.label_set.name,
        device=str(getattr(worker.segmenter, "device", "cpu")),
        topics={"color": topics[0], "depth": topics[1], "camera_info": topics[2], "labels": session.label_topic},
        sync={"queue_size": options.queue_size, "slop": options.slop},
        frames_per_topic=frames_per_topic,
        synchronized=sync.matched,
        unmatched=dict(zip(topics, sync.unmatched)),
        queue_overflow=dict(zip(topics, sync.dropped)),
        rejected=sum(worker.rejected.values()),
        rejected_reasons=dict(worker.rejected),
        processed=len(records),
        dropped=scheduler.dropped if scheduler else 0,
        realtime_rate=options.realtime,
        latency_ms=latency,
        end_to_end_ms=Stats.of([(f - a) * 1e3 for a, _, f in scheduler.timeline]) if scheduler else None,
        throughput_fps=len(records) / session.wall_s if session.wall_s > 0 else None,
        wall_time_s=session.wall_s,
        interrupted=session.stop.requested,
        error=session.error,
        metrics=(
            AccuracyReport.of(evaluation.confusion, worker.label_set, evaluation.evaluated, len(records))
            if evaluation
            else None
        ),
        valid_depth=DepthReport.of(worker.valid_depth, options.min_valid_depth),
    )


def format_summary(result: ReplayResult) -> str:
    """A few lines for the terminal: counts, why sets were not processed, latency, metrics and the files."""
    r, files = result.report, result.files
    lat = r.latency_ms
    color = r.topics["color"]
    ms = " / ".join("–" if v is None else f"{v:.1f}" for v in (lat.p50, lat.p95, lat.max))
    lines = [
        f"{'interrupted after' if r.interrupted else 'replayed'} {r.processed} of {r.synchronized} "
        f"synchronised sets ({r.dropped} dropped, {r.rejected} rejected, {r.unmatched[color]} colour "
        f"images unmatched) in {r.wall_time_s:.1f} s: {r.throughput_fps or 0:.2f} sets/s",
    ]
    reasons = r.unprocessed_reasons()
    if reasons and (r.rejected or r.processed == 0):
        lines.append("not processed:")
        lines += [f"  {reason}" for reason in reasons]
    lines.append(f"latency p50 / p95 / max: {ms} ms (decode → outputs; model {r.model} on {r.device})")
    depth = r.valid_depth
    if depth and depth.valid_percent.p50 is not None:
        lines.append(
            f"valid depth per set: median {depth.valid_percent.p50:.0f} %, min {depth.min_percent:.0f} %; "
            f"{depth.frames_below} sets below min_valid_depth ({depth.min_valid_depth_percent:g} %)"
        )
    metrics = r.metrics
    if metrics and metrics.frames:
        m = {
            k: "–" if v is None else f"{v:.2f} %"
            for k, v in (("miou", metrics.miou), ("pa", metrics.pixel_accuracy), ("ma", metrics.mean_accuracy))
        }
        lines.append(
            f"mIoU {m['miou']}, pixel accuracy {m['pa']}, mean accuracy {m['ma']} over "
            f"{metrics.frames} labelled frames ({r.label_set})"
        )
    out = files["json"].parent
    lines += [f"output bag: {out / OUTPUT_BAG}", f"report:     {files['html']} ({files['json'].name})"]
    if "overlays" in files:
        lines.append(f"overlays:   {files['overlays']} and {out / 'overlays'}/")
    return "\n".join(lines)
