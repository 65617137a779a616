"""Buffer pressure cuts batches: partial batches waiting for their window give their memory
back at once when the budget (or a partition's own limit) is what holds partitions back.

The partitions' clock is frozen, so no window ever ends by time: whatever is invoked before
the batch is full was cut by pressure. Without the cut these runs stall until the timeout.
"""

from collections import defaultdict

import pytest

from worker.observe.metrics import CUT_REASONS, Metrics
from worker.partition.batcher import Batcher
from worker.runtime.backpressure import Backpressure
from worker.testing import MemoryBroker, fully_committed, make_batch, running_worker, wait_until

TOPIC = "t"


def frozen() -> float:
    return 0.0


def cuts(worker, partition: int) -> dict[str, float]:
    family = worker.metrics.batches_cut
    return {r: family.labels("memory", f"{TOPIC}-{partition}", r).value for r in CUT_REASONS}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int, bytes]]] = []

    async def __call__(self, batch) -> None:
        self.calls.append([(r.partition, r.offset, r.key) for r in batch.records])

    def offsets(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for call in self.calls:
            out[call[0][0]].extend(o for _, o, _ in call)
        return out

    def offsets_by_key(self) -> dict[tuple[int, bytes], list[int]]:
        out: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        for call in self.calls:
            for p, o, k in call:
                out[(p, k)].append(o)
        return out


def handled_in_order_and_committed(broker, rec: Recorder, partitions: int) -> dict[int, int]:
    """Per partition, the records handled: a prefix of its log, each once, committed."""
    handled = rec.offsets()
    done = {}
    for p in range(partitions):
        committed = broker.committed("test", TOPIC, p) or 0
        assert committed <= len(handled[p])  # nothing committed before it was handled
        done[p] = len(handled[p])
    return done


@pytest.mark.parametrize("lanes", [1, 3])
async def test_partial_batches_under_budget_pressure_are_cut_before_their_window_in_order(lanes):
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 4)
    per_partition = 600  # 4 x 600 x (500 + 320 overhead) B: about twice the budget
    rec = Recorder()
    settings = {
        "batching": {"batch_size": 10_000, "maximum_batching_window_ms": 300_000},
        "handler": {"parallelization_factor": lanes},
        "runtime": {"memory_budget_bytes": 1024 * 1024, "max_buffered_records": 1_000_000},
    }
    async with running_worker(rec, broker, [TOPIC], settings, clock=frozen) as w:
        w.source.max_records = 100  # small fetches, as a real consumer's would be
        for i in range(4 * per_partition):
            broker.produce(TOPIC, b"x" * 500, key=b"k%d" % (i % 7), partition=i % 4)
        # What is left waiting at the end is under the budget (about 1,300 records): all
        # the rest went before any window ended, and is committed.
        await wait_until(lambda: sum(map(len, rec.calls)) >= 4 * per_partition - 1400)
        await wait_until(lambda: sum(broker.committed("test", TOPIC, p) or 0 for p in range(4))
                         == sum(map(len, rec.calls)))  # fmt: skip
        counted = [cuts(w, p) for p in range(4)]
    if lanes == 1:
        for offsets in rec.offsets().values():
            assert offsets == list(range(len(offsets)))  # in order, each once, no gap
    for offsets in rec.offsets_by_key().values():
        assert offsets == sorted(set(offsets))  # per key: in order, each once
    handled_in_order_and_committed(broker, rec, 4)
    assert all(len(c) < 10_000 for c in rec.calls)  # every one partial, none by its window
    assert sum(c["pressure"] for c in counted) == len(rec.calls) >= 1  # each call one cut
    assert all(c["window"] == 0 and c["size"] == 0 for c in counted)


async def test_a_partition_at_its_own_buffer_limit_cuts_its_waiting_batch():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    rec = Recorder()
    settings = {
        "batching": {"batch_size": 10_000, "maximum_batching_window_ms": 300_000},
        "runtime": {"max_buffered_records": 100},
    }
    async with running_worker(rec, broker, [TOPIC], settings, clock=frozen) as w:
        w.source.max_records = 50
        for i in range(500):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: sum(map(len, rec.calls)) >= 400)  # the last < 100 wait
        counted = cuts(w, 0)
    offsets = rec.offsets()[0]
    assert offsets == list(range(len(offsets)))
    assert counted["pressure"] == len(rec.calls) and counted["window"] == 0


def test_a_hurried_partial_batch_is_due_at_once_and_says_why_each_batch_was_cut():
    b = Batcher(batch_size=3, max_bytes=10, window_s=60, record_size=lambda r: len(r.value))
    b.hurry()  # nothing pending: nothing to hurry
    assert not b.hurried
    b.add(list(make_batch([b"x"] * 4).records), now=0.0)
    assert [r.offset for r in b.take(now=0.0)] == [0, 1, 2] and b.reason == "size"
    assert b.take(now=1.0) is None
    b.hurry()
    assert [r.offset for r in b.take(now=1.0)] == [3] and b.reason == "pressure"
    b.add(list(make_batch([b"x"], first_offset=4).records), now=2.0)
    assert b.take(now=3.0) is None  # a cut clears the hurry
    assert b.take(now=62.0) is not None and b.reason == "window"
    b.add(list(make_batch([b"x" * 6, b"x" * 6], first_offset=5).records), now=70.0)
    assert [r.offset for r in b.take(now=70.0)] == [5] and b.reason == "bytes"


class FakePartition:
    """What the controller reads of a partition, and the hurries it asks for."""

    def __init__(self, held: int) -> None:
        self.key = object()
        self.buffered_bytes = held
        self.paused = False
        self.hurried = 0

    def hurry(self) -> int:
        self.hurried += 1
        return self.buffered_bytes

    def below_low_water(self) -> bool:
        return self.buffered_bytes == 0

    def mark_paused(self) -> None:
        self.paused = True

    def mark_resumed(self) -> None:
        self.paused = False


class FakeSource:
    name = "memory"

    def fit_prefetch(self, share: int, partitions: int) -> int:
        return 0

    def pause(self, key) -> None: ...

    def resume(self, key) -> None: ...


def test_the_oldest_waiting_batches_are_cut_first_and_only_the_crossing_visits_every_partition():
    bp = Backpressure(FakeSource(), 1000, Metrics())  # type: ignore[arg-type]
    parts = [FakePartition(300) for _ in range(4)]
    bp.owned_changed(len(parts))
    for p in parts:  # they begin waiting in this order
        bp.held(p, 300)  # type: ignore[arg-type]
    visits = []

    def owned():
        visits.append(1)
        return parts

    bp.apply_budget(parts[3:], owned)  # type: ignore[arg-type]
    assert [p.hurried for p in parts] == [1, 1, 1, 0]  # 1200 - 500: the three oldest
    assert all(p.paused for p in parts) and len(visits) == 1
    parts[0].buffered_bytes = 0  # its batch was cut and taken: it waits no more
    bp.held(parts[0], -300)  # type: ignore[arg-type]
    parts[3].buffered_bytes = 600  # a fetch fed the youngest: 1500 held
    bp.held(parts[3], 300)  # type: ignore[arg-type]
    bp.apply_budget(parts[3:], owned)  # type: ignore[arg-type]
    assert len(visits) == 1  # past the crossing, only the touched and held back are seen
    assert [p.hurried for p in parts] == [1, 2, 2, 1]  # 1500 - 500 from the oldest on


def test_nearing_the_budget_cuts_the_oldest_waiting_batches_and_pauses_nothing():
    """Past three quarters of the budget the oldest batches are cut, before any partition
    must pause (a pause drops its prefetched data, fetched again on resume)."""
    bp = Backpressure(FakeSource(), 1000, Metrics())  # type: ignore[arg-type]
    parts = [FakePartition(200) for _ in range(4)]
    bp.owned_changed(len(parts))
    for p in parts[:3]:
        bp.held(p, 200)  # type: ignore[arg-type]
    bp.apply_budget(parts[2:3], lambda: parts)  # type: ignore[arg-type]
    assert [p.hurried for p in parts] == [0, 0, 0, 0]  # 600: under three quarters
    bp.held(parts[3], 200)  # type: ignore[arg-type]
    bp.apply_budget(parts[3:], lambda: parts)  # type: ignore[arg-type]
    assert [p.hurried for p in parts] == [1, 1, 0, 0]  # 800 - 500: the two oldest free it
    assert not any(p.paused for p in parts)


async def test_memory_waits_no_longer_than_the_window_with_a_real_clock():
    """The window stays the upper bound when nothing presses: a lone record goes by time."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    rec = Recorder()
    settings = {"batching": {"batch_size": 100, "maximum_batching_window_ms": 20}}
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        broker.produce(TOPIC, b"x", partition=0)
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        assert cuts(w, 0)["window"] == 1 and cuts(w, 0)["pressure"] == 0
