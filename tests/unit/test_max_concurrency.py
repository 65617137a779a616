"""handler.max_concurrency: one cap on calls in flight across partitions and key lanes."""

import asyncio
import threading
import time

from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until


def _broker(partitions: int, records: int) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", partitions)
    for i in range(records):
        broker.produce("t", b"%d" % i, key=b"k%d" % i, partition=i % partitions)
    return broker


async def test_eight_partitions_and_lanes_never_run_more_than_the_cap_and_lose_nothing():
    broker = _broker(8, 2000)
    seen: list[bytes] = []
    now = {"calls": 0, "max": 0}

    async def handler(batch):
        now["calls"] += 1
        now["max"] = max(now["max"], now["calls"])
        await asyncio.sleep(0.001)
        seen.extend(r.value for r in batch.records)
        now["calls"] -= 1

    settings = {
        "handler": {"max_concurrency": 2, "parallelization_factor": 4},
        "batching": {"batch_size": 10},
    }
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), 30)
    assert now["max"] == 2  # the cap was reached, never passed
    assert sorted(seen) == sorted(b"%d" % i for i in range(2000))


async def test_the_timeout_starts_when_the_call_starts_not_while_it_waits_for_a_slot():
    """Calls of 0.3 s with a 0.5 s timeout, one slot, four partitions: each waits up to
    0.9 s for its slot; counted as handler time, most would time out."""
    broker = _broker(4, 4)
    calls: list[float] = []

    async def handler(batch):
        await asyncio.sleep(0.3)
        calls.append(time.monotonic())

    settings = {"handler": {"max_concurrency": 1, "timeout_s": 0.5}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), 10)
        failed = sum(s.value for s in w.metrics.records_failed.collect()[0].samples)
    assert len(calls) == 4 and failed == 0
    waited = w.metrics.outputs.slot_wait.labels("memory").collect()[0].samples
    assert [s.value for s in waited if s.name.endswith("_count")] == [3]


async def test_thread_handlers_share_the_same_cap():
    broker = _broker(8, 400)
    lock = threading.Lock()
    now = {"calls": 0, "max": 0}

    def handler(batch):
        with lock:
            now["calls"] += 1
            now["max"] = max(now["max"], now["calls"])
        time.sleep(0.002)
        with lock:
            now["calls"] -= 1

    settings = {
        "handler": {"max_concurrency": 3, "concurrency": "thread"},
        "batching": {"batch_size": 5},
    }
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), 30)
    assert now["max"] == 3
