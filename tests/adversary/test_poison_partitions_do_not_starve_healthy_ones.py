"""Partitions stuck on a poison record keep their buffers; the healthy ones must go on.

backpressure.py says a paused partition resumes on its fair share of the memory budget
"whatever the others hold". Here two poisoned partitions each fill their own buffer
(within `max_buffered_bytes`), which together reach the budget: every partition is paused,
and a healthy partition with an empty buffer must resume on its share.
Fault injected: the handler raises on the first record of partitions 0 and 1.
"""

import asyncio

from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"
VALUE = b"x" * 10_000


async def test_a_healthy_partition_resumes_while_poisoned_ones_hold_the_budget():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 3)
    for p in (0, 1):
        for _ in range(70):  # 70 x ~10.3 kB each: ~720 kB buffered, behind the poison
            broker.produce(TOPIC, VALUE, partition=p)
    handled: list[int] = []
    entered = {0: asyncio.Event(), 1: asyncio.Event()}

    async def handler(batch):
        part = batch.records[0].partition
        if part in (0, 1):
            entered[part].set()
            raise RuntimeError("poison")
        handled.extend(r.offset for r in batch.records)

    settings = {
        "runtime": {"memory_budget_bytes": 1024 * 1024, "max_buffered_bytes": 800_000},
        "batching": {"batch_size": 1},
        "errors": {"retry_backoff_ms": [50, 50]},
    }
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        await wait_until(lambda: entered[0].is_set() and entered[1].is_set())
        await wait_until(lambda: w.partition((TOPIC, 2)).paused)  # the budget paused it
        for _ in range(5):
            broker.produce(TOPIC, b"{}", partition=2)
        try:
            await wait_until(lambda: broker.committed("test", TOPIC, 2) == 5, timeout_s=3)
        finally:
            print({s.label: (s.buffered, s.paused) for s in w.partition_stats()},
                  w.metrics.buffered_bytes.labels("memory")._value.get())  # fmt: skip
    assert handled == [0, 1, 2, 3, 4]
