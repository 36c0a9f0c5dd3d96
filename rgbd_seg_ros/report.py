"""The replay report: its contents (:class:`ReplayReport`), ``report.json``, PNG figures and ``report.html``.

Scores (mIoU, pixel and mean accuracy, per-class IoU and accuracy) are **percent (0–100)**, as in training
logs and ``metrics.json``. Figures are drawn with matplotlib's Agg canvas on ``Figure`` objects (no pyplot, no
global backend state):

* ``latency.png``: per-set latency over the recording (total and model stage), and its histogram with p50 / p95;
* ``iou.png``: per-class IoU bars (classes seen in ground truth or predictions) with the mIoU;
* ``confusion.png``: the row-normalised confusion matrix over those classes;
* ``overlays.png`` and ``overlays/<stamp>.png``: sample sets as RGB | prediction | ground truth.

Every file is written atomically (:mod:`rgbd_seg_ros.fileio`).
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rgbd_seg_ros.fileio import atomic_write_bytes, atomic_write_text
from rgbd_seg_ros.labels import LabelSet, overlay
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.render import write_png

__all__ = ["REPORT_FILES", "AccuracyReport", "DepthReport", "LatencyReport", "ReplayReport", "Stats", "write_report"]

#: Everything :func:`write_report` may write into its folder (files, and the ``overlays`` folder).
REPORT_FILES: tuple[str, ...] = (
    "report.json",
    "report.html",
    "latency.png",
    "iou.png",
    "confusion.png",
    "overlays.png",
    "overlays",
)
SCORE_UNIT = "percent"

_MIN_PANEL_WIDTH = 160  # px, per panel of the overlay strip


# -- contents ----------------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """``p50``, ``p95``, ``max`` and ``mean`` of some values (None each when there are none)."""

    p50: float | None = None
    p95: float | None = None
    max: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, values: Any) -> Stats:
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return cls()
        p50, p95 = np.percentile(arr, [50, 95])
        return cls(float(p50), float(p95), float(arr.max()), float(arr.mean()))


@dataclass
class LatencyReport(Stats):
    """Per-set latency (ms, decode → output images) and the same statistics per pipeline stage."""

    stages: dict[str, Stats] = field(default_factory=dict)


@dataclass
class AccuracyReport:
    """Accuracy over the sets that had ground truth; every score in percent (0–100), None where undefined."""

    miou: float | None
    pixel_accuracy: float | None
    mean_accuracy: float | None
    per_class_iou: list[float | None]
    per_class_accuracy: list[float | None]
    num_pixels: int
    class_names: list[str]
    frames: int
    frames_without_labels: int
    confusion_matrix: list[list[int]]
    unit: str = SCORE_UNIT

    @classmethod
    def of(cls, confusion: ConfusionMatrix, label_set: LabelSet, frames: int, processed: int) -> AccuracyReport:
        summary = confusion.as_dict(list(label_set.class_names))
        return cls(**summary, frames=frames, frames_without_labels=processed - frames)


@dataclass
class DepthReport:
    """Valid depth per processed set, in percent of its pixels: depth inside the model's range, before hole filling
    (:func:`rgbd_seg_ros.frames.valid_depth_fraction`); ``frames_below``: sets under ``min_valid_depth_percent``
    (depth outages, as the node warns of them)."""

    valid_percent: Stats
    min_percent: float | None
    min_valid_depth_percent: float
    frames_below: int

    @classmethod
    def of(cls, fractions: Sequence[float], min_valid_depth: float) -> DepthReport:
        percent = [100.0 * f for f in fractions]
        return cls(
            valid_percent=Stats.of(percent),
            min_percent=min(percent) if percent else None,
            min_valid_depth_percent=100.0 * min_valid_depth,
            frames_below=sum(1 for f in fractions if f < min_valid_depth),
        )


@dataclass
class ReplayReport:
    """What a replay did, as ``report.json`` holds it (:meth:`to_json`). Times in ms unless named ``_s``.

    Attributes:
        topics: role (``color``, ``depth``, ``camera_info``, ``labels``) → topic (``labels`` None = not evaluated).
        frames_per_topic: messages read per input topic.
        synchronized: synchronised (colour, depth, CameraInfo) sets; ``processed`` of them were segmented,
            ``rejected`` refused before segmenting (reasons and counts in ``rejected_reasons``) and ``dropped``
            replaced while the model was busy (real-time simulation only).
        unmatched, queue_overflow: per input topic, messages that never joined a set / fell out of the queue.
        end_to_end_ms: arrival → outputs written, real-time simulation only.
        error: why the bag could not be read to its end (the report covers the sets before it), else None.
        metrics: accuracy, when the bag has ground truth.
        valid_depth: the valid-depth fraction of the processed sets (:class:`DepthReport`).
        outputs, files: the output bag's topics and counts; the files written (name → path in the folder).
    """

    bag: str
    storage: str
    model: str
    label_set: str
    device: str
    topics: dict[str, str | None]
    sync: dict[str, float]
    frames_per_topic: dict[str, int]
    synchronized: int
    unmatched: dict[str, int]
    queue_overflow: dict[str, int]
    rejected: int
    rejected_reasons: dict[str, int]
    processed: int
    dropped: int
    realtime_rate: float | None
    latency_ms: LatencyReport
    end_to_end_ms: Stats | None
    throughput_fps: float | None
    wall_time_s: float
    interrupted: bool
    error: str | None = None
    metrics: AccuracyReport | None = None
    valid_depth: DepthReport | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    score_unit: str = SCORE_UNIT

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict of ``report.json``."""
        return dataclasses.asdict(self)

    def unprocessed_reasons(self) -> list[str]:
        """Why synchronised sets (or colour images) were not processed: one line each, with counts."""
        lines = [f"{n} × {reason}" for reason, n in sorted(self.rejected_reasons.items(), key=lambda kv: -kv[1])]
        if self.dropped:
            lines.append(f"{self.dropped} × dropped while the model was busy (real-time simulation)")
        color = self.topics.get("color")
        if self.synchronized == 0:
            counts = ", ".join(f"{t}: {n}" for t, n in self.frames_per_topic.items())
            lines.append(
                f"no colour / depth / CameraInfo set could be synchronised within the {self.sync.get('slop')} s slop "
                f"(messages read: {counts})"
            )
        elif self.unmatched.get(color):
            lines.append(f"{self.unmatched[color]} colour images had no depth / CameraInfo partner")
        return lines


# -- files -------------------------------------------------------------------------------------------------------
def write_report(
    out_dir: str | Path,
    report: ReplayReport,
    records: Sequence[dict[str, float]],
    confusion: ConfusionMatrix | None,
    label_set: LabelSet,
    samples: Sequence[Any] = (),
) -> dict[str, Path]:
    """Write ``report.json``, the figures and ``report.html`` into ``out_dir``; returns name → path.

    Args:
        report: the replay's report; its ``files`` are filled in here.
        records: per processed set, ``stamp_ns`` and stage times in ms (``total``, ``model``, …).
        samples: objects with ``stamp_ns``, ``rgb`` (H×W×3), ``prediction`` and ``ground_truth`` (H×W train ids
            or None).
    """
    out = Path(out_dir)
    files: dict[str, Path] = {}
    if records:
        files["latency"] = _latency_figure(out / "latency.png", records, report.latency_ms)
    if confusion is not None and confusion.total > 0:
        files["iou"] = _iou_figure(out / "iou.png", confusion, label_set)
        files["confusion"] = _confusion_figure(out / "confusion.png", confusion, label_set)
    if samples:
        files["overlays"] = _overlay_strip(out / "overlays.png", samples, label_set)
        files.update(_overlay_files(out / "overlays", samples, label_set))
    report.files = {name: str(path.relative_to(out)) for name, path in files.items()}
    report.files["html"] = "report.html"
    files["json"] = atomic_write_text(out / "report.json", json.dumps(report.to_json(), indent=2, allow_nan=False))
    files["html"] = atomic_write_text(out / "report.html", _html(report, label_set))
    return files


def _save_figure(fig: Any, path: Path, **kwargs: Any) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _latency_figure(path: Path, records: Sequence[dict[str, float]], lat: LatencyReport) -> Path:
    stamps = np.array([r["stamp_ns"] for r in records], dtype=np.float64)
    t = (stamps - stamps.min()) / 1e9
    total = np.array([r["total"] for r in records])
    fig = _figure(11, 3.6)
    ax_time, ax_hist = fig.subplots(1, 2, width_ratios=(2, 1))
    ax_time.plot(t, total, ".-", lw=0.8, ms=3, label="total (decode → outputs)")
    if all("model" in r for r in records):
        ax_time.plot(t, [r["model"] for r in records], ".-", lw=0.8, ms=3, label="model")
    ax_time.set(xlabel="colour stamp − first stamp (s)", ylabel="latency (ms)", title="Latency per processed set")
    ax_time.set_ylim(bottom=0)
    ax_time.legend(loc="upper right", fontsize=8)
    ax_hist.hist(total, bins=min(40, max(5, len(total) // 2)), color="tab:blue", alpha=0.8)
    for key, value, style in (("p50", lat.p50, "-"), ("p95", lat.p95, "--")):
        if value is not None:
            ax_hist.axvline(value, color="k", ls=style, lw=1, label=f"{key} {value:.1f} ms")
    ax_hist.set(xlabel="total latency (ms)", ylabel="sets", title="Histogram")
    ax_hist.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    return _save_figure(fig, path)


def _present_classes(confusion: ConfusionMatrix) -> np.ndarray:
    m = confusion.matrix
    return np.flatnonzero((m.sum(0) > 0) | (m.sum(1) > 0))


def _iou_figure(path: Path, confusion: ConfusionMatrix, label_set: LabelSet) -> Path:
    classes = _present_classes(confusion)
    iou = 100.0 * np.nan_to_num(confusion.per_class_iou()[classes], nan=0.0)
    fig = _figure(7, 1.2 + 0.28 * len(classes))
    ax = fig.subplots()
    y = np.arange(len(classes))
    ax.barh(y, iou, color=label_set.palette[classes] / 255.0, edgecolor="k", lw=0.5)
    ax.set_yticks(y, [label_set.class_names[c] for c in classes], fontsize=8)
    ax.invert_yaxis()
    miou = confusion.as_dict()["miou"]
    if miou is not None:
        ax.axvline(miou, color="k", ls="--", lw=1, label=f"mIoU {miou:.1f} %")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlim=(0, 100), xlabel="IoU (%)", title="Per-class IoU (classes in ground truth or predictions)")
    return _save_figure(fig, path, bbox_inches="tight")


def _confusion_figure(path: Path, confusion: ConfusionMatrix, label_set: LabelSet) -> Path:
    classes = _present_classes(confusion)
    m = confusion.matrix[np.ix_(classes, classes)].astype(np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 2.5 + 0.3 * len(classes)
    fig = _figure(size + 1.5, size)
    ax = fig.subplots()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    names = [label_set.class_names[c] for c in classes]
    ax.set_xticks(range(len(classes)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), names, fontsize=7)
    ax.set(xlabel="prediction", ylabel="ground truth", title="Confusion matrix (rows normalised)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save_figure(fig, path, bbox_inches="tight")


def _panels(sample: Any, label_set: LabelSet) -> list[tuple[str, np.ndarray]]:
    panels = [("RGB", sample.rgb), ("prediction", overlay(sample.rgb, sample.prediction, label_set))]
    if sample.ground_truth is not None:
        panels.append(("ground truth", overlay(sample.rgb, sample.ground_truth, label_set)))
    return panels


def _overlay_strip(path: Path, samples: Sequence[Any], label_set: LabelSet) -> Path:
    """One row per sample (RGB | prediction | ground truth), full resolution, a header naming the columns."""
    scale = -(-_MIN_PANEL_WIDTH // samples[0].rgb.shape[1])  # small frames are enlarged (nearest) to stay legible
    rows = [np.concatenate([image for _, image in _panels(s, label_set)], axis=1) for s in samples]
    if scale > 1:
        rows = [cv2.resize(r, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for r in rows]
    width = max(r.shape[1] for r in rows)
    gap = np.full((4, width, 3), 255, np.uint8)
    body = []
    for row in rows:
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        body += [np.concatenate([row, pad], axis=1), gap]
    header = np.full((24, width, 3), 255, np.uint8)
    panel_w = samples[0].rgb.shape[1] * scale
    for col, (title, _) in enumerate(
        _panels(next((s for s in samples if s.ground_truth is not None), samples[0]), label_set)
    ):
        cv2.putText(header, title, (col * panel_w + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    strip = np.concatenate([header, *body[:-1]], axis=0)
    return write_png(path, strip)


def _overlay_files(folder: Path, samples: Sequence[Any], label_set: LabelSet) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    files = {}
    for sample in samples:
        panel = np.concatenate([image for _, image in _panels(sample, label_set)], axis=1)
        files[f"overlay_{sample.stamp_ns}"] = write_png(folder / f"{sample.stamp_ns}.png", panel)
    return files


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _html(report: ReplayReport, label_set: LabelSet) -> str:
    lat = report.latency_ms
    rows: list[tuple[str, Any]] = [
        ("bag", report.bag),
        ("model", f"{report.model} ({report.label_set}, {report.device})"),
        ("synchronised sets", report.synchronized),
        ("processed", report.processed),
        ("dropped (real-time simulation)", report.dropped),
        ("rejected", report.rejected),
        ("latency p50 / p95 / max (ms)", " / ".join(_fmt(v, 1) for v in (lat.p50, lat.p95, lat.max))),
        ("throughput (sets/s, wall clock)", _fmt(report.throughput_fps, 2)),
        ("interrupted", report.interrupted),
    ]
    if report.error:
        rows.append(("error", report.error))
    metrics = report.metrics
    if metrics:
        rows += [
            ("mIoU (%)", _fmt(metrics.miou, 2)),
            ("pixel accuracy (%)", _fmt(metrics.pixel_accuracy, 2)),
            ("mean accuracy (%)", _fmt(metrics.mean_accuracy, 2)),
        ]
    depth = report.valid_depth
    if depth and depth.valid_percent.p50 is not None:
        rows += [
            ("valid depth per set, median / min (%)", f"{depth.valid_percent.p50:.1f} / {depth.min_percent:.1f}"),
            (f"sets below min_valid_depth ({depth.min_valid_depth_percent:g} %)", depth.frames_below),
        ]
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    problems = ""
    reasons = report.unprocessed_reasons()
    if reasons:
        title = "Nothing was processed" if report.processed == 0 else "Not processed"
        items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
        style = " style='color:#b00'" if report.processed == 0 else ""
        problems = f"<h2{style}>{title}</h2><ul>{items}</ul>"
    topics = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{n}</td><td>{report.unmatched.get(t, '')}</td></tr>"
        for t, n in report.frames_per_topic.items()
    )
    stages = "".join(
        f"<tr><td>{html.escape(s)}</td>" + "".join(f"<td>{_fmt(v, 1)}</td>" for v in (st.p50, st.p95, st.max)) + "</tr>"
        for s, st in lat.stages.items()
    )
    per_class = ""
    if metrics:
        per_class = (
            "<h2>Per-class IoU</h2><table><tr><th>class</th><th>IoU (%)</th><th>accuracy (%)</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(n)}</td><td>{_fmt(i, 2)}</td><td>{_fmt(a, 2)}</td></tr>"
                for n, i, a in zip(label_set.class_names, metrics.per_class_iou, metrics.per_class_accuracy)
                if i is not None or a is not None
            )
            + "</table>"
        )
    figures = "".join(
        f'<h2>{html.escape(name)}</h2><img src="{html.escape(rel)}" alt="{html.escape(name)}">'
        for name, rel in report.files.items()
        if name in ("latency", "iou", "confusion", "overlays")
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rgbd_seg_ros replay report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>Replay report</h1><p>Scores are percentages (0–100).</p><table>{table}</table>{problems}"
        f"<h2>Topics</h2><table><tr><th>topic</th><th>messages</th><th>unmatched</th></tr>{topics}</table>"
        f"<h2>Stage latency (ms)</h2><table><tr><th>stage</th><th>p50</th><th>p95</th><th>max</th></tr>{stages}</table>"
        f"{per_class}{figures}</body></html>\n"
    )
