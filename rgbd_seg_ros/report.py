"""The replay report: ``report.json``, PNG figures and a self-contained-folder ``report.html``.

Figures are drawn with matplotlib's Agg canvas on ``Figure`` objects (no pyplot, no global backend state):

* ``latency.png``: per-set latency over the recording (total and model stage), and its histogram with p50 / p95;
* ``iou.png``: per-class IoU bars (classes seen in ground truth or predictions) with the mIoU;
* ``confusion.png``: the row-normalised confusion matrix over those classes;
* ``overlays.png`` and ``overlays/<stamp>.png``: sample sets as RGB | prediction | ground truth.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rgbd_seg_ros.labels import LabelSet, overlay
from rgbd_seg_ros.metrics import ConfusionMatrix

__all__ = ["write_report"]

_MIN_PANEL_WIDTH = 160  # px, per panel of the overlay strip


def write_report(
    out_dir: str | Path,
    report: dict[str, Any],
    records: Sequence[dict[str, float]],
    confusion: ConfusionMatrix | None,
    label_set: LabelSet,
    samples: Sequence[Any] = (),
) -> dict[str, Path]:
    """Write ``report.json``, the figures and ``report.html`` into ``out_dir``; returns name → path.

    Args:
        report: JSON-ready summary (see :func:`rgbd_seg_ros.replay.replay`); a ``files`` entry is added.
        records: per processed set, ``stamp_ns`` and stage times in ms (``total``, ``model``, …).
        samples: objects with ``stamp_ns``, ``rgb`` (H×W×3), ``prediction`` and ``ground_truth`` (H×W train ids
            or None).
    """
    out = Path(out_dir)
    files: dict[str, Path] = {}
    if records:
        files["latency"] = _latency_figure(out / "latency.png", records, report)
    if confusion is not None and confusion.total > 0:
        files["iou"] = _iou_figure(out / "iou.png", confusion, label_set)
        files["confusion"] = _confusion_figure(out / "confusion.png", confusion, label_set)
    if samples:
        files["overlays"] = _overlay_strip(out / "overlays.png", samples, label_set)
        files.update(_overlay_files(out / "overlays", samples, label_set))
    report["files"] = {name: str(path.relative_to(out)) for name, path in files.items()}
    report["files"]["html"] = "report.html"
    files["json"] = out / "report.json"
    files["json"].write_text(json.dumps(report, indent=2, allow_nan=False))
    files["html"] = out / "report.html"
    files["html"].write_text(_html(report, label_set))
    return files


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _latency_figure(path: Path, records: Sequence[dict[str, float]], report: dict[str, Any]) -> Path:
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
    lat = report.get("latency_ms", {})
    for key, style in (("p50", "-"), ("p95", "--")):
        if lat.get(key) is not None:
            ax_hist.axvline(lat[key], color="k", ls=style, lw=1, label=f"{key} {lat[key]:.1f} ms")
    ax_hist.set(xlabel="total latency (ms)", ylabel="sets", title="Histogram")
    ax_hist.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    fig.savefig(path)
    return path


def _present_classes(confusion: ConfusionMatrix) -> np.ndarray:
    m = confusion.matrix
    return np.flatnonzero((m.sum(0) > 0) | (m.sum(1) > 0))


def _iou_figure(path: Path, confusion: ConfusionMatrix, label_set: LabelSet) -> Path:
    classes = _present_classes(confusion)
    iou = np.nan_to_num(confusion.per_class_iou()[classes], nan=0.0)
    fig = _figure(7, 1.2 + 0.28 * len(classes))
    ax = fig.subplots()
    y = np.arange(len(classes))
    ax.barh(y, iou, color=label_set.palette[classes] / 255.0, edgecolor="k", lw=0.5)
    ax.set_yticks(y, [label_set.class_names[c] for c in classes], fontsize=8)
    ax.invert_yaxis()
    miou = confusion.miou()
    if not math.isnan(miou):
        ax.axvline(miou, color="k", ls="--", lw=1, label=f"mIoU {miou:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlim=(0, 1), xlabel="IoU", title="Per-class IoU (classes in ground truth or predictions)")
    fig.savefig(path, bbox_inches="tight")
    return path


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
    fig.savefig(path, bbox_inches="tight")
    return path


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
    cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    return path


def _overlay_files(folder: Path, samples: Sequence[Any], label_set: LabelSet) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    files = {}
    for sample in samples:
        panel = np.concatenate([image for _, image in _panels(sample, label_set)], axis=1)
        path = folder / f"{sample.stamp_ns}.png"
        cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        files[f"overlay_{sample.stamp_ns}"] = path
    return files


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _html(report: dict[str, Any], label_set: LabelSet) -> str:
    lat = report.get("latency_ms") or {}
    rows = [
        ("bag", report.get("bag")),
        ("model", f"{report.get('model')} ({report.get('label_set')}, {report.get('device')})"),
        ("synchronised sets", report.get("synchronized")),
        ("processed", report.get("processed")),
        ("dropped (real-time simulation)", report.get("dropped")),
        ("rejected", report.get("rejected")),
        ("latency p50 / p95 / max (ms)", " / ".join(_fmt(lat.get(k), 1) for k in ("p50", "p95", "max"))),
        ("throughput (sets/s, wall clock)", _fmt(report.get("throughput_fps"), 2)),
        ("interrupted", report.get("interrupted")),
    ]
    if report.get("error"):
        rows.append(("error", report["error"]))
    metrics = report.get("metrics")
    if metrics:
        names = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "mean_accuracy": "mean accuracy"}
        rows += [(name, _fmt(metrics.get(key))) for key, name in names.items()]
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    topics = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{n}</td><td>{(report.get('unmatched') or {}).get(t, '')}</td></tr>"
        for t, n in (report.get("frames_per_topic") or {}).items()
    )
    stages = "".join(
        f"<tr><td>{html.escape(s)}</td>"
        + "".join(f"<td>{_fmt(v.get(k), 1)}</td>" for k in ("p50", "p95", "max"))
        + "</tr>"
        for s, v in (lat.get("stages") or {}).items()
    )
    per_class = ""
    if metrics:
        per_class = "<h2>Per-class IoU</h2><table><tr><th>class</th><th>IoU</th><th>accuracy</th></tr>" + "".join(
            f"<tr><td>{html.escape(n)}</td><td>{_fmt(i)}</td><td>{_fmt(a)}</td></tr>"
            for n, i, a in zip(label_set.class_names, metrics["per_class_iou"], metrics["per_class_accuracy"])
            if i is not None or a is not None
        )
        per_class += "</table>"
    figures = "".join(
        f'<h2>{html.escape(name)}</h2><img src="{html.escape(rel)}" alt="{html.escape(name)}">'
        for name, rel in (report.get("files") or {}).items()
        if name in ("latency", "iou", "confusion", "overlays")
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rgbd_seg_ros replay report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>Replay report</h1><table>{table}</table>"
        f"<h2>Topics</h2><table><tr><th>topic</th><th>messages</th><th>unmatched</th></tr>{topics}</table>"
        f"<h2>Stage latency (ms)</h2><table><tr><th>stage</th><th>p50</th><th>p95</th><th>max</th></tr>{stages}</table>"
        f"{per_class}{figures}</body></html>\n"
    )
