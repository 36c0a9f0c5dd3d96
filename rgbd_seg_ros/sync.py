"""Approximate-time pairing of several message streams, with message_filters' Python policy, without ROS.

The ROS node uses ``message_filters.ApproximateTimeSynchronizer`` when it is installed and this class
otherwise; the bag replay always uses this class, so replay pairs what the live node pairs. The policy
is the one of ``ros2/message_filters`` ``src/message_filters/__init__.py`` (the same on Humble, Iron,
Jazzy and Rolling); this is an independent implementation of it. On each arrival of message ``m`` with
stamp ``s`` on input ``i``:

1. ``queue[i][s] = m`` (a message with a stamp already queued on that input replaces it and keeps its
   place); then, while ``queue[i]`` holds more than ``queue_size`` messages, the one with the *smallest
   stamp* is dropped — possibly ``m`` itself, which then matches nothing.
2. For every other input ``j``, the candidates are its queued stamps ``t`` with ``|t - s| ≤ slop``,
   ordered by ``|t - s|`` (ties keep queue insertion order). If any input has none, nothing happens.
3. Combinations are tried in lexicographic order of those lists (lowest input index outermost), with
   ``s`` fixed at position ``i``; the first whose stamps span strictly less than ``slop``
   (``max - min < slop``) is emitted and its messages leave their queues. At most one set per arrival.

Consequences: two stamps exactly ``slop`` apart never pair (the candidate filter is ``≤``, the match
test ``<``); the emitted set is the first found, not necessarily the tightest; unmatched messages are
never purged by a later match, only pushed out by ``queue_size``; only an arrival triggers a search.
``slop`` is in seconds and becomes ``int(slop * 1e9)`` nanoseconds, as ``rclpy.duration.Duration`` does.
Messages without ``header.stamp`` are dropped with a warning unless ``allow_headerless``, which stamps
them with ``clock()`` (message_filters uses the ROS clock's ``now()``).

Thread safety: :meth:`ApproximateTimeSynchronizer.add` may be called from several threads (e.g. one per
subscription in a multi-threaded executor); a re-entrant lock serialises it, and callbacks run under
the lock, in match order, after the set has left the queues. Keep callbacks short (store the set,
return): the node's worker thread does the inference.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

__all__ = ["ApproximateTimeSynchronizer", "Match", "slop_to_ns", "stamp_ns_of", "synchronize"]

_LOG = logging.getLogger(__name__)
_NS_PER_S = 1_000_000_000


class Match(NamedTuple):
    """One synchronised set: a stamp (int ns) and a message per input, in input order."""

    stamps_ns: tuple[int, ...]
    messages: tuple[Any, ...]


def slop_to_ns(slop: float) -> int:
    """``slop`` seconds → int nanoseconds, truncating like ``rclpy.duration.Duration(seconds=slop)``."""
    return int(slop * _NS_PER_S)


def stamp_ns_of(msg: Any) -> int | None:
    """``msg.header.stamp`` as int nanoseconds (``builtin_interfaces/Time`` or ``rclpy.time.Time``); None if absent."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None:
        return None
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


class ApproximateTimeSynchronizer:
    """Pairs messages from ``num_inputs`` streams by stamp (see the module docstring for the policy).

    Args:
        num_inputs: number of streams (≥ 1).
        queue_size: messages kept per stream while waiting for partners (≥ 1).
        slop: largest stamp difference within a set, seconds (exclusive; > 0).
        allow_headerless: stamp messages without ``header.stamp`` with ``clock()`` instead of dropping them.
        clock: ``() -> int`` ns, used for headerless messages.

    Counters (for diagnostics and replay reports): ``received[i]``, ``dropped[i]`` (pushed out by
    ``queue_size`` or replaced by a message with the same stamp), ``matched`` (sets emitted),
    ``headerless_dropped``; ``unmatched[i] = received[i] - matched``.
    """

    def __init__(
        self,
        num_inputs: int,
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if int(num_inputs) < 1:
            raise ValueError(f"num_inputs must be ≥ 1, got {num_inputs}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be ≥ 1 (0 would drop every message), got {queue_size}")
        slop_ns = slop_to_ns(slop)
        if not slop_ns > 0:
            raise ValueError(f"slop must be > 0 s (at least 1 ns; sets need a span < slop), got {slop}")
        self.num_inputs = int(num_inputs)
        self.queue_size = int(queue_size)
        self.slop_ns = slop_ns
        self.allow_headerless = bool(allow_headerless)
        self._clock = clock
        self._queues: list[dict[int, Any]] = [{} for _ in range(self.num_inputs)]
        self._callbacks: list[Callable[..., Any]] = []
        self._lock = threading.RLock()
        self.received = [0] * self.num_inputs
        self.dropped = [0] * self.num_inputs
        self.matched = 0
        self.headerless_dropped = 0

    def register_callback(self, callback: Callable[..., Any]) -> None:
        """Call ``callback(msg_0, …, msg_{n-1})`` for every emitted set, like message_filters."""
        self._callbacks.append(callback)

    @property
    def unmatched(self) -> tuple[int, ...]:
        """Per input, messages received that have not (yet) been part of an emitted set."""
        return tuple(r - self.matched for r in self.received)

    def pending(self) -> list[list[int]]:
        """The queued stamps (ns) of each input, ascending."""
        with self._lock:
            return [sorted(q) for q in self._queues]

    def clear(self) -> None:
        """Drop every queued message (counters are kept)."""
        with self._lock:
            for q in self._queues:
                q.clear()

    def add(self, index: int, msg: Any, stamp_ns: int | None = None) -> Match | None:
        """Queue ``msg`` on input ``index`` and emit the set it completes, if any.

        ``stamp_ns`` (int ns ≥ 0) defaults to ``msg.header.stamp``. Returns the emitted :class:`Match`
        (callbacks have then been called) or None.
        """
        if not 0 <= index < self.num_inputs:
            raise IndexError(f"input index {index} out of range for {self.num_inputs} inputs")
        if stamp_ns is None:
            stamp_ns = stamp_ns_of(msg)
        if stamp_ns is None:
            if not self.allow_headerless:
                with self._lock:
                    self.headerless_dropped += 1
                    first = self.headerless_dropped == 1
                if first:
                    _LOG.warning("dropping messages without header.stamp (allow_headerless is off)")
                return None
            stamp_ns = self._clock()
        stamp = operator.index(stamp_ns)
        if stamp < 0:
            raise ValueError(f"stamps must be ≥ 0 ns, got {stamp}")
        with self._lock:
            return self._add_locked(index, msg, stamp)

    def _add_locked(self, index: int, msg: Any, stamp: int) -> Match | None:
        queue = self._queues[index]
        self.received[index] += 1
        if stamp in queue:
            self.dropped[index] += 1
        queue[stamp] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self.dropped[index] += 1
        if stamp not in queue:
            return None
        stamps = self._first_set(index, stamp)
        if stamps is None:
            return None
        messages = tuple(q.pop(t) for q, t in zip(self._queues, stamps))
        self.matched += 1
        for callback in self._callbacks:
            callback(*messages)
        return Match(stamps, messages)

    def _first_set(self, index: int, stamp: int) -> tuple[int, ...] | None:
        """The first combination (lexicographic over nearest-first candidates) spanning < slop."""
        slop = self.slop_ns
        options: list[list[int]] = []
        for j, queue in enumerate(self._queues):
            if j == index:
                options.append([stamp])
                continue
            near = sorted((t for t in queue if abs(t - stamp) <= slop), key=lambda t: abs(t - stamp))
            if not near:
                return None
            options.append(near)

        chosen: list[int] = []

        def extend(depth: int, lo: int, hi: int) -> bool:
            # Depth-first in lexicographic order; a prefix whose span already reaches slop cannot complete,
            # since adding stamps only widens the span, so pruning it keeps the first valid set the same.
            if depth == len(options):
                return True
            for t in options[depth]:
                new_lo, new_hi = min(lo, t), max(hi, t)
                if new_hi - new_lo < slop:
                    chosen.append(t)
                    if extend(depth + 1, new_lo, new_hi):
                        return True
                    chosen.pop()
            return False

        return tuple(chosen) if extend(0, stamp, stamp) else None


def synchronize(
    events: Iterable[tuple[int, int | None, Any]], synchronizer: ApproximateTimeSynchronizer
) -> Iterator[Match]:
    """Feed ``(input index, stamp_ns or None, message)`` events in arrival order; yield each emitted set.

    For offline streams (bag replay): arrival order is the recording order, as the live node saw it.
    """
    for index, stamp_ns, msg in events:
        match = synchronizer.add(index, msg, stamp_ns)
        if match is not None:
            yield match
