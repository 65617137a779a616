"""Cuts from three quarters of the budget on, without pausing, when part of the memory
cannot be freed: a halted partition keeps its buffer, a partition whose handler blocks
keeps its call's batch and what waits behind it. The healthy partitions must still get
through (no stall: their partial batches are cut, or they pause and resume), all buffers
together stay within the budget plus one fetch at every check, and order holds.
Frozen batching clock: no window ends by time."""

import asyncio
from collections import defaultdict

import pytest

from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"
RECORD = b"x" * 1000
FETCH = 50  # records per fetch


def frozen() -> float:
    return 0.0


class Dlq:
    name = "memory://dlq"

    def __init__(self) -> None:
        self.records: list[int] = []

    async def start(self) -> None: ...

    async def send(self, event) -> None:
        self.records.extend(r.offset for r in event.records)

    async def stop(self) -> None: ...


@pytest.mark.parametrize("lanes", [1, 3])
async def test_a_halted_and_a_blocked_partition_do_not_stall_the_rest_or_outgrow_the_budget(
    lanes,
):
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 4)
    release = asyncio.Event()
    handled: dict[int, list[tuple[bytes, int]]] = defaultdict(list)

    async def handler(batch) -> None:
        p = batch.records[0].partition
        if p == 0:
            raise ValueError("poison")  # partition 0 halts after its first dead letters
        if p == 1:
            await release.wait()
        handled[p].extend((r.key, r.offset) for r in batch.records)

    # What cannot be freed: about 900 kB of the 1 MiB budget, past three quarters of it
    # (with the frozen clock, only a pressure cut takes the healthy ones' partial batches).
    for p, n in ((0, 480), (1, 320)):
        for i in range(n):
            broker.produce(TOPIC, RECORD, partition=p, key=b"k%d" % (i % 7))
    settings = {
        "runtime": {"memory_budget_bytes": 1024 * 1024, "max_buffered_records": 1_000_000,
                    "max_buffered_bytes": 64 * 1024 * 1024},
        "batching": {"batch_size": 40, "maximum_batching_window_ms": 300_000},
        "handler": {"timeout_s": 600, "parallelization_factor": lanes},
        "errors": {"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 1},
    }  # fmt: skip
    dlq = Dlq()
    async with running_worker(handler, broker, [TOPIC], settings, destination=dlq,
                              clock=frozen) as w:  # fmt: skip
        w.source.max_records = FETCH
        bp = w.backpressure
        held: list[int] = []
        check = bp.apply_budget

        def apply_budget(touched, owned) -> None:
            held.append(bp._held)  # after the fetch was fed: the most it holds
            check(touched, owned)

        bp.apply_budget = apply_budget  # type: ignore[method-assign]
        await wait_until(lambda: w.partition((TOPIC, 0)) is not None
                         and w.partition((TOPIC, 0)).halted is not None)  # fmt: skip
        await wait_until(lambda: 1 in handled or bp._held > 0)
        for p in (2, 3):
            for i in range(400):
                broker.produce(TOPIC, RECORD, partition=p, key=b"k%d" % (i % 7))
        for p in (2, 3):  # no stall behind what cannot be freed
            await wait_until(lambda p=p: broker.committed("test", TOPIC, p) == 400, 20)
        release.set()
        # Its last partial batches wait for their window once the total is back under
        # three quarters: cut them as the window's end would.
        p1 = w.assignments.get((TOPIC, 1))
        await wait_until(lambda: p1.hurry() >= 0 and broker.committed("test", TOPIC, 1) == 320)
        limit = bp.pipeline_budget_bytes + FETCH * (len(RECORD) + 400)
        assert max(held) <= limit, (max(held), limit)
    assert broker.committed("test", TOPIC, 0) in (None, 0)  # nothing past the halt
    for p, n in ((1, 320), (2, 400), (3, 400)):
        per_key: dict[bytes, list[int]] = defaultdict(list)
        for key, offset in handled[p]:
            per_key[key].append(offset)
        assert sorted(o for _, o in handled[p]) == list(range(n))  # each once
        assert all(offsets == sorted(offsets) for offsets in per_key.values())
