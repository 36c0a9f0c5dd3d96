"""The approximate-time policy of rgbd_seg_ros.sync, checked against a brute-force re-statement of the
documented message_filters policy (and against message_filters itself where it is installed)."""

from __future__ import annotations

import itertools
import logging
import random
import threading
from types import SimpleNamespace

import pytest

from rgbd_seg_ros.sync import ApproximateTimeSynchronizer, Match, slop_to_ns, stamp_ns_of, synchronize

MS = 1_000_000  # ns


class ReferencePolicy:
    """The policy as documented, written the slow obvious way: every combination, in product order."""

    def __init__(self, num_inputs: int, queue_size: int, slop_ns: int) -> None:
        self.queues: list[list[tuple[int, object]]] = [[] for _ in range(num_inputs)]  # insertion order
        self.queue_size, self.slop = queue_size, slop_ns

    def add(self, i: int, stamp: int, msg: object) -> tuple[tuple[int, ...], tuple[object, ...]] | None:
        q = self.queues[i]
        stamps = [t for t, _ in q]
        if stamp in stamps:
            q[stamps.index(stamp)] = (stamp, msg)
        else:
            q.append((stamp, msg))
        while len(q) > self.queue_size:
            q.remove(min(q, key=lambda e: e[0]))
        if stamp not in [t for t, _ in q]:
            return None
        lists = []
        for j, other in enumerate(self.queues):
            if j == i:
                lists.append([(stamp, msg)])
                continue
            near = [e for e in other if abs(e[0] - stamp) <= self.slop]
            if not near:
                return None
            lists.append(sorted(near, key=lambda e: abs(e[0] - stamp)))
        for combo in itertools.product(*lists):
            ts = [t for t, _ in combo]
            if max(ts) - min(ts) < self.slop:
                for j, (t, _) in enumerate(combo):
                    self.queues[j] = [e for e in self.queues[j] if e[0] != t]
                return tuple(ts), tuple(m for _, m in combo)
        return None


def random_events(rng: random.Random, num_inputs: int, n: int) -> list[tuple[int, int, object]]:
    """Camera-like streams: per-input rate and offset, jitter on a 1 ms grid (so stamps often sit exactly
    ``slop`` apart), dropped frames, duplicated stamps, and arrival order shuffled locally."""
    events = []
    base = rng.choice([10, 20, 33]) * MS
    for i in range(num_inputs):
        period = base * rng.choice([1, 1, 2])  # some streams at half the rate
        offset = rng.randint(0, 5) * MS
        for k in range(n):
            if rng.random() < 0.1:
                continue  # missing message
            stamp = k * period + offset + rng.randint(-3, 3) * MS
            if stamp < 0:
                continue
            arrival = stamp + rng.randint(0, 40) * MS  # transport latency, reorders nearby messages
            events.append((arrival, i, stamp, f"m{i}-{k}"))
            if rng.random() < 0.05:
                events.append((arrival + MS, i, stamp, f"m{i}-{k}-dup"))  # same stamp again
    events.sort(key=lambda e: (e[0], e[1]))
    return [(i, stamp, msg) for _, i, stamp, msg in events]


def test_matches_reference_policy_on_random_streams() -> None:
    totals = {"sets": 0, "dropped": 0, "unmatched": 0}
    for seed in range(60):
        rng = random.Random(seed)
        num_inputs = rng.choice([1, 2, 2, 3, 3, 4])
        queue_size = rng.choice([1, 2, 3, 5, 10])
        slop = rng.choice([0.002, 0.003, 0.005, 0.01, 0.02])
        sync = ApproximateTimeSynchronizer(num_inputs, queue_size, slop)
        ref = ReferencePolicy(num_inputs, queue_size, slop_to_ns(slop))
        for i, stamp, msg in random_events(rng, num_inputs, 60):
            got = sync.add(i, msg, stamp)
            want = ref.add(i, stamp, msg)
            assert (None if got is None else (got.stamps_ns, got.messages)) == want, f"seed {seed}"
            totals["sets"] += want is not None
        assert sync.pending() == [sorted(t for t, _ in q) for q in ref.queues]
        totals["dropped"] += sum(sync.dropped)
        totals["unmatched"] += sum(sync.unmatched)
    # the streams exercise matching, queue overflow and leftovers, not just one of them
    assert min(totals.values()) > 100, totals


def _header(stamp_ns: int) -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9))


def test_against_message_filters_itself() -> None:
    """Where ROS's message_filters is installed, its ApproximateTimeSynchronizer emits the same sets."""
    message_filters = pytest.importorskip("message_filters")
    from rclpy.time import Time

    for seed in range(15):
        rng = random.Random(100 + seed)
        num_inputs, queue_size = rng.choice([2, 3]), rng.choice([1, 3, 10])
        slop = rng.choice([0.003, 0.01, 0.02])
        inputs = [message_filters.SimpleFilter() for _ in range(num_inputs)]
        theirs = message_filters.ApproximateTimeSynchronizer(inputs, queue_size, slop)
        their_sets: list[tuple] = []
        theirs.registerCallback(lambda *msgs, out=their_sets: out.append(msgs))
        ours = ApproximateTimeSynchronizer(num_inputs, queue_size, slop)
        our_sets: list[tuple] = []
        ours.register_callback(lambda *msgs, out=our_sets: out.append(msgs))
        for i, stamp, name in random_events(rng, num_inputs, 40):
            msg = SimpleNamespace(header=SimpleNamespace(stamp=Time(nanoseconds=stamp).to_msg()), name=name)
            inputs[i].signalMessage(msg)
            ours.add(i, msg)
            assert our_sets == their_sets


def test_equal_stamps_pair_when_the_last_input_arrives() -> None:
    sync = ApproximateTimeSynchronizer(3, queue_size=5, slop=0.01)
    assert sync.add(0, "a", 5 * MS) is None
    assert sync.add(1, "b", 5 * MS) is None  # input 2 still missing
    match = sync.add(2, "c", 5 * MS)
    assert match == Match((5 * MS,) * 3, ("a", "b", "c"))
    assert sync.pending() == [[], [], []]


def test_slop_boundary_is_exclusive() -> None:
    slop = 0.01
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=slop)
    sync.add(0, "a", 0)
    assert sync.add(1, "exactly-slop", slop_to_ns(slop)) is None
    assert sync.add(1, "just-inside", slop_to_ns(slop) - 1) == Match((0, slop_to_ns(slop) - 1), ("a", "just-inside"))
    assert sync.pending() == [[], [slop_to_ns(slop)]]  # the boundary message is still waiting


def test_slop_seconds_convert_like_rclpy_duration() -> None:
    duration = pytest.importorskip("rclpy.duration")
    for slop in (0.1, 0.07, 0.3, 1 / 30, 0.005, 0.0166, 2.5):
        assert slop_to_ns(slop) == duration.Duration(seconds=slop).nanoseconds
        assert ApproximateTimeSynchronizer(2, 1, slop).slop_ns == slop_to_ns(slop)


def test_queue_overflow_drops_the_oldest_stamp() -> None:
    sync = ApproximateTimeSynchronizer(2, queue_size=3, slop=0.1)
    for k in range(5):
        sync.add(0, f"a{k}", k * 10**9)
    assert sync.pending()[0] == [2 * 10**9, 3 * 10**9, 4 * 10**9]
    assert sync.dropped == [2, 0]
    assert sync.add(1, "b0", 0) is None  # its partner was pushed out
    assert sync.add(1, "b2", 2 * 10**9).messages == ("a2", "b2")


def test_late_message_older_than_a_full_queue_is_dropped_on_arrival() -> None:
    sync = ApproximateTimeSynchronizer(2, queue_size=2, slop=0.01)
    sync.add(0, "a100", 100 * MS)
    sync.add(0, "a200", 200 * MS)
    assert sync.add(0, "a50-late", 50 * MS) is None
    assert sync.pending()[0] == [100 * MS, 200 * MS]
    assert sync.add(1, "b50", 50 * MS) is None
    assert sync.dropped[0] == 1


def test_out_of_order_arrival_pairs_by_stamp_not_by_arrival() -> None:
    period = 33 * MS
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.01)
    sync.add(0, "c2", 2 * period)
    sync.add(0, "c1", 1 * period)  # arrives late
    assert sync.add(1, "d1", period + 2 * MS).messages == ("c1", "d1")
    assert sync.add(1, "d2", 2 * period + 2 * MS).messages == ("c2", "d2")


def test_first_set_in_candidate_order_not_the_tightest() -> None:
    """Candidates are tried nearest-first per input, inputs in order; the first set under slop wins."""
    sync = ApproximateTimeSynchronizer(3, queue_size=5, slop=10e-9)  # 10 ns, stamps in ns
    sync.add(0, "a7", 7)
    sync.add(0, "a12", 12)
    sync.add(1, "b3", 3)
    match = sync.add(2, "c10", 10)
    # input 0 is tried nearest-first: 12 (|2|) before 7 (|3|); (12, 3, 10) spans 9 < 10, so it wins
    # although (7, 3, 10) spans only 7.
    assert match.messages == ("a12", "b3", "c10")
    assert sync.pending() == [[7], [], []]


def test_equidistant_candidates_keep_arrival_order() -> None:
    for first, second in (("a12", "a8"), ("a8", "a12")):
        sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=10e-9)
        for name in (first, second):
            sync.add(0, name, int(name[1:]))
        assert sync.add(1, "b10", 10).messages[0] == first


def test_stream_at_a_different_rate() -> None:
    """Colour at 30 Hz, depth at 15 Hz (3 ms later): each depth pairs with the colour frame nearest to it."""
    period, slop = 33_333_333, 0.01
    color = [(k * period, f"c{k}") for k in range(30)]
    depth = [(k * period + 3 * MS, f"d{k}") for k in range(0, 30, 2)]
    arrivals = sorted([(t + 5 * MS, 0, t, m) for t, m in color] + [(t + 8 * MS, 1, t, m) for t, m in depth])
    sync = ApproximateTimeSynchronizer(2, queue_size=10, slop=slop)
    matches = list(synchronize(((i, t, m) for _, i, t, m in arrivals), sync))
    expected = []
    for t_d, m_d in depth:
        t_c, m_c = min(color, key=lambda c: abs(c[0] - t_d))
        assert abs(t_c - t_d) < slop_to_ns(slop)
        expected.append(((t_c, t_d), (m_c, m_d)))
    assert [(m.stamps_ns, m.messages) for m in matches] == expected
    assert sync.unmatched == (15, 0)


def test_missing_message_leaves_its_partner_unmatched() -> None:
    period = 33 * MS
    sync = ApproximateTimeSynchronizer(2, queue_size=10, slop=0.01)
    events = []
    for k in range(20):
        events.append((0, k * period, f"c{k}"))
        if k != 7:
            events.append((1, k * period + 4 * MS, f"d{k}"))
    matches = list(synchronize(events, sync))
    assert [m.messages[0] for m in matches] == [f"c{k}" for k in range(20) if k != 7]
    assert sync.pending() == [[7 * period], []]
    assert sync.unmatched == (1, 0)


def test_repeated_stamp_replaces_the_queued_message() -> None:
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.01)
    sync.add(0, "old", 10 * MS)
    sync.add(0, "new", 10 * MS)
    assert sync.add(1, "b", 10 * MS).messages == ("new", "b")
    assert sync.dropped == [1, 0]


def test_single_input_passes_everything_through() -> None:
    sync = ApproximateTimeSynchronizer(1, queue_size=1, slop=0.01)
    assert [sync.add(0, k, k).messages for k in range(3)] == [(0,), (1,), (2,)]


class _Records(logging.Handler):
    """Keeps the records of one logger, attached to it directly.

    pytest's ``caplog`` listens on the root logger; in a sourced ROS 2 shell (launch_testing's plugin and launch's
    logging set-up loaded) the module logger's records did not reach it although they reached stderr, so the
    test listens where the records are made.
    """

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Records:
        self._saved = (self.logger.level, self.logger.disabled)
        self.logger.setLevel(logging.WARNING)
        self.logger.disabled = False
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._saved[0])
        self.logger.disabled = self._saved[1]


def test_header_stamps_and_headerless_messages() -> None:
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.01)
    a = SimpleNamespace(header=_header(3 * 10**9 + 5))
    b = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(nanoseconds=3 * 10**9 + 7)))  # rclpy Time
    assert stamp_ns_of(a) == 3 * 10**9 + 5
    sync.add(0, a)
    assert sync.add(1, b) == Match((3 * 10**9 + 5, 3 * 10**9 + 7), (a, b))

    with _Records("rgbd_seg_ros.sync") as log:
        assert sync.add(0, object()) is None
        assert sync.add(0, object()) is None
    assert sync.headerless_dropped == 2
    assert sum("header.stamp" in r.getMessage() for r in log.records) == 1  # warned once

    clocked = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.01, allow_headerless=True, clock=lambda: 42)
    clocked.add(0, "headerless")
    assert clocked.pending() == [[42], []]


def test_callbacks_get_messages_in_input_order() -> None:
    got = []
    sync = ApproximateTimeSynchronizer(3, queue_size=5, slop=0.01)
    sync.register_callback(lambda *msgs: got.append(msgs))
    sync.add(2, "c", 0)
    sync.add(0, "a", MS)
    sync.add(1, "b", 2 * MS)
    assert got == [("a", "b", "c")]


def test_concurrent_producers() -> None:
    """Two threads, one per input: with equal stamps 1 ms apart and slop 0.5 ms every pair forms exactly once,
    whatever the interleaving."""
    n = 400
    sync = ApproximateTimeSynchronizer(2, queue_size=n, slop=0.0005)
    sets = []
    sync.register_callback(lambda a, b: sets.append((a, b)))

    def produce(i: int) -> None:
        for k in range(n):
            sync.add(i, (i, k), k * MS)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sets) == [((0, k), (1, k)) for k in range(n)]
    assert sync.pending() == [[], []]


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_inputs=0), dict(queue_size=0), dict(slop=0.0), dict(slop=-0.1), dict(slop=1e-12)],
)
def test_bad_arguments(kwargs: dict) -> None:
    args = dict(num_inputs=2, queue_size=3, slop=0.01) | kwargs
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer(**args)


def test_bad_add_calls() -> None:
    sync = ApproximateTimeSynchronizer(2, queue_size=3, slop=0.01)
    with pytest.raises(IndexError):
        sync.add(2, "x", 0)
    with pytest.raises(TypeError):
        sync.add(0, "x", 1.5)  # stamps are int ns
    with pytest.raises(ValueError):
        sync.add(0, "x", -1)
