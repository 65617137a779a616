"""Pressure cuts under faults: a partition paused at the budget's crossing must resume once
the budget allows, and a partition whose lane is busy (a slow or stuck call) must not
absorb the cut the younger waiting batches need. Frozen batching clock: no window ends."""

import asyncio

from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"
SETTINGS = {
    "runtime": {"memory_budget_bytes": 1024 * 1024, "max_buffered_records": 1_000_000,
                "max_buffered_bytes": 64 * 1024 * 1024},
    "handler": {"timeout_s": 600},
}  # fmt: skip


def frozen() -> float:
    return 0.0


async def test_a_partition_paused_at_the_budget_crossing_resumes_once_under_the_budget():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 2)
    handled: list[int] = []

    async def handler(batch) -> None:
        handled.extend(r.partition for r in batch.records)

    for _ in range(1200):  # about 1.6 MB: over the 1 MiB budget in one fetch
        broker.produce(TOPIC, b"x" * 1000, partition=0)
    broker.produce(TOPIC, b"y", partition=1)  # a small partial batch, younger
    settings = {**SETTINGS, "batching": {"batch_size": 10_000,
                                         "maximum_batching_window_ms": 300_000}}  # fmt: skip
    async with running_worker(handler, broker, [TOPIC], settings, clock=frozen) as w:
        await wait_until(lambda: handled.count(0) == 1200)  # partition 0's cut freed it all
        p1 = w.assignments.get((TOPIC, 1))
        # 321 bytes held of a 1 MiB budget: partition 1 is under its low water and its
        # half share, so it fetches again (it stayed paused until its window ended).
        await wait_until(lambda: not p1.paused and (TOPIC, 1) not in w.source.paused)


async def test_a_partition_with_a_busy_lane_does_not_absorb_the_cut_of_younger_batches():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 2)
    calls: list[int] = []
    release = asyncio.Event()

    async def handler(batch) -> None:
        calls.append(batch.records[0].partition)
        if batch.records[0].partition == 0:
            await release.wait()  # a slow call: partition 0's lane is busy

    for _ in range(100):
        broker.produce(TOPIC, b"x" * 1000, partition=0)
    settings = {**SETTINGS, "batching": {"batch_size": 100,
                                         "maximum_batching_window_ms": 300_000}}  # fmt: skip
    async with running_worker(handler, broker, [TOPIC], settings, clock=frozen):
        await wait_until(lambda: calls == [0])
        for _ in range(1100):  # waits behind the busy lane: over the budget
            broker.produce(TOPIC, b"x" * 1000, partition=0)
        broker.produce(TOPIC, b"y", partition=1)
        try:
            # Partition 0 is the oldest waiting, but its bytes are not freed while its call
            # runs: the cut must go on to partition 1's batch (it was never cut).
            await wait_until(lambda: 1 in calls)
        finally:
            release.set()
