"""Lanes waiting for work (`Partition._wait_for_work`, an `asyncio.timeout` on the lane's
wake-up) end cleanly whatever ends the wait: a revoke or shutdown while a partial batch
waits for its window, a partition that comes back after its series were removed, and
deadlines already past (a clock that leaps). Nothing is committed that was not handled,
no batch is invoked twice, order per partition (and per key) is kept."""

import asyncio
import itertools
from collections import defaultdict

import pytest

from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

TOPIC = "t"
WAITS = {"batching": {"batch_size": 1000, "maximum_batching_window_ms": 300_000}}


def frozen() -> float:
    return 0.0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[tuple[int, bytes, int]]] = []

    async def __call__(self, batch) -> None:
        self.calls.append([(r.partition, r.key, r.offset) for r in batch.records])

    def by(self, key) -> dict:
        out: dict = defaultdict(list)
        for call in self.calls:
            for p, k, o in call:
                out[key(p, k)].append(o)
        return out


def produce(broker: MemoryBroker, partition: int, n: int, keys: int = 5) -> None:
    for i in range(n):
        broker.produce(TOPIC, b"v", partition=partition, key=b"k%d" % (i % keys))


@pytest.mark.parametrize("lanes", [1, 3])
async def test_a_revoke_while_lanes_wait_for_their_window_drops_the_batches_and_they_come_back(
    lanes,
):
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    produce(broker, 0, 20)
    rec = Recorder()
    settings = {**WAITS, "handler": {"parallelization_factor": lanes}}
    async with running_worker(rec, broker, [TOPIC], settings, clock=frozen) as w:
        polled = w.metrics.records_polled.labels("memory", f"{TOPIC}-0")
        revoked = w.metrics.batches_cut.labels("memory", f"{TOPIC}-0", "revoke")
        await wait_until(lambda: polled.value == 20)
        async with asyncio.timeout(10):  # the lanes' window wait does not hold the revoke
            await w.source.revoke([(TOPIC, 0)])
        assert rec.calls == [] and broker.committed("test", TOPIC, 0) is None
        assert revoked.value >= 1  # counted before its series left with the partition
        assert w.metrics.records_polled.labels("memory", f"{TOPIC}-0") is not polled
        w.metrics.forget_partition("memory", f"{TOPIC}-0")  # the probe above made one
        await w.source.assign([(TOPIC, 0)])
        polled = w.metrics.records_polled.labels("memory", f"{TOPIC}-0")
        await wait_until(lambda: polled.value == 20)  # read again, counted from 0
        p = w.assignments.get((TOPIC, 0))
        p.hurry()  # buffer pressure: cut now, not in 300 s
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    by_key = rec.by(lambda p, k: k)
    assert all(offsets == sorted(offsets) for offsets in by_key.values())
    assert sorted(o for offsets in by_key.values() for o in offsets) == list(range(20))


@pytest.mark.parametrize("lanes", [1, 3])
async def test_a_shutdown_while_lanes_wait_for_their_window_ends_at_once_uncommitted(lanes):
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 2)
    produce(broker, 0, 10)
    produce(broker, 1, 10)
    rec = Recorder()
    settings = {**WAITS, "handler": {"parallelization_factor": lanes}}
    async with asyncio.timeout(20):  # the window is 300 s: the stop must not wait for it
        async with running_worker(rec, broker, [TOPIC], settings, clock=frozen) as w:
            shut = [w.metrics.batches_cut.labels("memory", f"{TOPIC}-{p}", "shutdown")
                    for p in (0, 1)]  # fmt: skip
            polled = [w.metrics.records_polled.labels("memory", f"{TOPIC}-{p}") for p in (0, 1)]
            await wait_until(lambda: all(c.value == 10 for c in polled))
    assert rec.calls == []
    assert broker.committed("test", TOPIC, 0) is None
    assert broker.committed("test", TOPIC, 1) is None
    assert all(c.value >= 1 for c in shut)


@pytest.mark.parametrize("lanes", [1, 3])
async def test_deadlines_already_past_run_every_batch_once_in_order(lanes):
    """A clock that leaps a minute at every reading: every window has ended whenever it
    is looked at, so each lane's wait has a deadline in the past."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 3)
    ticks = itertools.count(0, 60)
    rec = Recorder()
    settings = {"batching": {"batch_size": 7, "maximum_batching_window_ms": 1000},
                "handler": {"parallelization_factor": lanes}}  # fmt: skip
    async with running_worker(rec, broker, [TOPIC], settings, clock=lambda: next(ticks)):
        for _ in range(10):
            for p in range(3):
                produce(broker, p, 9)
            await asyncio.sleep(0.01)
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    for p in range(3):
        per_key = rec.by(lambda q, k: (q, k))
        handled = sorted(o for (q, _), offsets in per_key.items() if q == p for o in offsets)
        assert handled == list(range(90))  # each once
        assert all(offsets == sorted(offsets) for (q, _), offsets in per_key.items() if q == p)
    if lanes == 1:
        per_partition = rec.by(lambda q, k: q)
        assert all(offsets == list(range(90)) for offsets in per_partition.values())
