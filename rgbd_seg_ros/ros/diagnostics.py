"""Thread-safe counters and latency windows of the node, and their ``diagnostic_msgs/DiagnosticArray``.

Counters are totals since start; :meth:`NodeStats.snapshot` also returns each counter's rate over the time
since the previous snapshot. Latencies are kept for the last ``window`` frames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["NodeStats", "diagnostic_array", "percentile"]


def percentile(values: Any, q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of ``values``; NaN when empty."""
    arr = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


class NodeStats:
    """Counters (``count(name)``) and sliding windows of values in ms (``add(name, ms)``)."""

    def __init__(self, window: int = 300, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._window = int(window)
        self._counts: dict[str, int] = {}
        self._series: dict[str, deque[float]] = {}
        self._last_counts: dict[str, int] = {}
        self._last_time = clock()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def add(self, name: str, value_ms: float) -> None:
        with self._lock:
            self._series.setdefault(name, deque(maxlen=self._window)).append(float(value_ms))

    def total(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def values(self, name: str) -> list[float]:
        with self._lock:
            return list(self._series.get(name, ()))

    def snapshot(self) -> dict[str, Any]:
        """``{"totals", "rates_hz", "period_s", "p50", "p95"}`` (dicts by name); starts a new rate period."""
        with self._lock:
            now = self._clock()
            period = max(now - self._last_time, 1e-9)
            totals = dict(self._counts)
            rates = {k: (v - self._last_counts.get(k, 0)) / period for k, v in totals.items()}
            series = {k: list(v) for k, v in self._series.items()}
            self._last_counts, self._last_time = totals, now
        return {
            "totals": totals,
            "rates_hz": rates,
            "period_s": period,
            "p50": {k: percentile(v, 50) for k, v in series.items()},
            "p95": {k: percentile(v, 95) for k, v in series.items()},
        }


def diagnostic_array(
    stamp: Any, name: str, hardware_id: str, level: int, message: str, values: Mapping[str, Any]
) -> Any:
    """One ``DiagnosticStatus`` (``level`` 0 OK, 1 WARN, 2 ERROR) in a ``DiagnosticArray`` stamped ``stamp``."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    def text(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    status = DiagnosticStatus(
        level=bytes([int(level)]),
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=text(v)) for k, v in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
