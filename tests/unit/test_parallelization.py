"""parallelization_factor > 1: per-key order, concurrency, and the low-watermark commit."""

import asyncio
import random
from collections import defaultdict

from worker.partition.key_lanes import route
from worker.testing import MemoryBroker, fully_committed, make_batch, running_worker, wait_until


def test_routing_is_stable_per_key_and_round_robin_without_a_key():
    batch = make_batch([b"v"] * 8, keys=[b"a", b"b", b"a", None, None, None, None, b"b"])
    lanes = route(batch.records, 4)
    where = {r.offset: i for i, lane in enumerate(lanes) for r in lane}
    assert where[0] == where[2] and where[1] == where[7]
    assert [where[o] for o in (3, 4, 5, 6)] == [3, 0, 1, 2]  # keyless: offset % 4
    assert all(lane == sorted(lane, key=lambda r: r.offset) for lane in lanes)


async def test_eight_lanes_keep_per_key_order_and_handle_everything():
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    seq: dict[bytes, int] = defaultdict(int)
    for i in range(2000):
        key = b"dev-%d" % (i % 37)
        broker.produce("t", b"%d" % seq[key], key=key)  # partition by key, as Kafka does
        seq[key] += 1
    rng = random.Random(5)
    seen: dict[bytes, list[int]] = defaultdict(list)
    concurrent = {"now": 0, "max": 0}

    async def handler(batch):
        concurrent["now"] += 1
        concurrent["max"] = max(concurrent["max"], concurrent["now"])
        await asyncio.sleep(rng.random() / 500)  # lanes finish in a random order
        for r in batch.records:
            seen[r.key].append(int(r.value))
        concurrent["now"] -= 1

    settings = {"handler": {"parallelization_factor": 8}, "batching": {"batch_size": 10}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        w.source.max_records = 50  # many chunks, so lanes finish them out of order
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert {k: v for k, v in seen.items()} == {k: list(range(n)) for k, n in seq.items()}
    assert concurrent["max"] > 2  # lanes really ran side by side


async def test_a_stuck_lane_does_not_hold_back_commits_of_what_precedes_it():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    gate = asyncio.Event()
    # Lanes by crc32 % 4: k5 -> 0, k1 -> 1, k4 -> 2, k0 -> 3. The stuck record has lane 3
    # to itself, so every chunk before its own is free to finish.
    busy, stuck_key = [b"k5", b"k1", b"k4"], b"k0"

    async def handler(batch):
        if any(r.offset == 53 for r in batch.records):
            await gate.wait()

    settings = {"handler": {"parallelization_factor": 4}, "batching": {"batch_size": 5}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        w.source.max_records = 10  # segments of five (batch_size): [0..4], [5..9], ...
        for i in range(100):
            broker.produce("t", b"x", key=stuck_key if i == 53 else busy[i % 3], partition=0)
        await wait_until(lambda: broker.committed("test", "t", 0) == 50)
        assert w.partition(("t", 0)).stats().committed == 49  # 50..54 holds the stuck record
        gate.set()
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))


async def test_work_finished_past_a_stuck_lane_still_counts_as_uncommitted():
    """A commit covered only the prefix before the gap, but counted every finished record
    as committed: the uncommitted bound (what a crash redoes) went blind past the gap."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    gate = asyncio.Event()
    busy, stuck_key = [b"k5", b"k1", b"k4"], b"k0"  # lanes 0, 1, 2; k0 has lane 3

    async def handler(batch):
        if any(r.offset == 53 for r in batch.records):
            await gate.wait()

    settings = {"handler": {"parallelization_factor": 4}, "batching": {"batch_size": 5}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        w.source.max_records = 10
        for i in range(100):
            broker.produce("t", b"x", key=stuck_key if i == 53 else busy[i % 3], partition=0)
        await wait_until(lambda: w.partition(("t", 0)) is not None)
        partition = w.partition(("t", 0))
        # All but the stuck segment [50..54] finished; the commit stops before it.
        await wait_until(lambda: broker.committed("test", "t", 0) == 50
                         and partition.unfinished_records == 5)  # fmt: skip
        assert partition.outstanding_records == 50  # 50..99, not just the stuck five
        gate.set()
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        assert partition.outstanding_records == 0
        assert w.metrics.records_committed.labels("memory", "t-0").value == 100
