"""A partition near its uncommitted bound is committed without waiting the interval.

`max_buffered_records` bounds what a partition has handled and not yet checkpointed
(what a crash makes the next owner redo). With commits only every `commit_interval_ms`,
a partition handling more than that bound in one interval paused at every round: on the
real broker the librdkafka worker paused 20 to 60 times in 3 s, each pause dropping the
client's prefetched records, and read at ~0.8M records/s against ~1.1M without the pauses.
Here the interval is a minute: only a commit made early can let the partition go on.
"""

import asyncio

from worker.sources.base import OwnershipLost
from worker.sources.memory import MemorySource
from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"
SETTINGS = {
    "batching": {"batch_size": 5, "maximum_batching_window_ms": 0},
    "source": {"commit_interval_ms": 60_000},
    "runtime": {"max_buffered_records": 20},
}


async def test_a_partition_at_half_its_uncommitted_bound_is_committed_before_the_interval():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    handled: list[int] = []

    async def handler(batch):
        handled.extend(r.offset for r in batch.records)

    source = MemorySource(broker, [TOPIC], group_id="test", max_records=5)  # a fetch a batch
    async with running_worker(handler, broker, [TOPIC], SETTINGS, source=source) as w:
        for i in range(200):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        # 200 records are ten times the bound: without early commits the partition
        # pauses at 20 handled and waits a minute for the next round. The last batch
        # (below half the bound) waits for the interval, as any batch always did.
        await wait_until(lambda: (broker.committed("test", TOPIC, 0) or 0) >= 195)
        await wait_until(lambda: len(handled) == 200)
        rounds = len(w.source.commits)
    assert handled == list(range(200))
    # Coalesced all the same: a round covers at least half the bound, never one a batch.
    assert rounds <= 200 // 10 + 1


async def test_after_a_failed_round_the_whole_interval_is_waited():
    """In an outage a due partition must not make the committer retry in a loop."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)

    async def handler(batch):
        return None

    settings = {**SETTINGS, "source": {"commit_interval_ms": 300}}
    source = MemorySource(broker, [TOPIC], group_id="test", max_records=5)
    async with running_worker(handler, broker, [TOPIC], settings, source=source) as w:
        w.source.commit_error = ConnectionError("broker down")
        tries = w.metrics.commit_failures.labels(w.source.name)
        for i in range(200):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: tries._value.get() >= 2)
        w.source.commit_error = None
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 200, timeout_s=20)
        assert tries._value.get() <= 4  # about one a round of 0.3 s, not one a batch


async def test_a_slow_lanes_gap_does_not_make_every_batch_a_round():
    """Key lanes: what the fast lane finished past the slow lane's gap is uncommitted, but
    no commit can take it. Judged on it, the partition stayed due and every batch of the
    slow lane (each move of the low watermark, two records here) was a round of its own:
    in a 2 s run with 4 lanes, 620 rounds/s of 5 records each against 10 before, for no
    more records handled. Due is judged on what the commit would take."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    slow, fast = b"a", b"d"  # lanes 1 and 0 of 2 (crc32 of the key)

    handled: list[int] = []

    async def handler(batch):
        handled.extend(r.offset for r in batch.records)
        if batch.records[0].key == slow:
            await asyncio.sleep(0.005)  # the slow lane: the fast one runs ahead meanwhile

    settings = {
        "batching": {"batch_size": 1, "maximum_batching_window_ms": 0},
        "handler": {"parallelization_factor": 2},
        "source": {"commit_interval_ms": 60_000},
        "runtime": {"max_buffered_records": 20},
    }
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        broker.produce(TOPIC, b"0", key=slow, partition=0)
        for i in range(1, 11):
            broker.produce(TOPIC, b"%d" % i, key=fast, partition=0)
        for i in range(11, 51):  # the watermark now moves two records a slow batch
            broker.produce(TOPIC, b"%d" % i, key=slow if i % 2 else fast, partition=0)
        await wait_until(lambda: len(handled) == 51 and _idle(w), timeout_s=20)
        commits = [c[(TOPIC, 0)] for c in w.source.commits if (TOPIC, 0) in c]
    assert broker.committed("test", TOPIC, 0) == 51
    moves = [b - a for a, b in zip([-1, *commits], commits, strict=False)]
    # Every round before the interval took half the bound; the last is the shutdown's.
    assert all(m >= 10 for m in moves[:-1]), moves


async def test_a_refused_round_keeps_the_whole_interval():
    """A partition whose commit is refused (a rebalance: REBALANCE_IN_PROGRESS, for as long
    as the group takes) stays due, nothing of it taken: hurried by it, every batch it
    finished was another commit the broker refused (186 a second against 2, batch_size 1)."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    refused: list[int] = []

    class Rebalancing(MemorySource):
        async def commit(self, positions):
            refused.append(1)
            raise OwnershipLost("rebalance in progress", list(positions))

    async def handler(batch):
        return None

    settings = {
        "batching": {"batch_size": 1, "maximum_batching_window_ms": 0},
        "source": {"commit_interval_ms": 60_000},
        "runtime": {"max_buffered_records": 20},
    }
    source = Rebalancing(broker, [TOPIC], group_id="test", max_records=1)
    async with running_worker(handler, broker, [TOPIC], settings, source=source) as w:
        for i in range(40):  # twice the bound: it stops at the bound, paused
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: _idle(w) and w.partition((TOPIC, 0)).paused)
        tries = len(refused)
    # The first batch's commit at once (idle), refused; then the interval. Hurried, each
    # of the 10 batches past half the bound was one more refused commit.
    assert tries <= 2, tries


def _idle(w) -> bool:
    """Partition 0 is assigned and has nothing fed that did not finish."""
    p = w.partition((TOPIC, 0))
    return p is not None and p.unfinished_records == 0


async def test_due_is_judged_once_a_round_not_once_a_batch(monkeypatch):
    """`commit_due` sums the partition's finished units (`commit_point`). Judged at every
    notify, a lane running a fetch's batches without yielding (a handler that does not
    await) summed them once a batch: quadratic in the fetch, 10,000 records of batch_size 1
    handled at 5,000/s against 35,000/s before the early commits (4,400 against 22,500 on
    the real broker, aiokafka). Once a partition made the round due, notices wait for it."""
    from worker.partition.partition import Partition

    calls = 0
    point = Partition.commit_point

    def counting(self):
        nonlocal calls
        calls += 1
        return point(self)

    monkeypatch.setattr(Partition, "commit_point", counting)
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    handled: list[int] = []

    async def handler(batch):
        handled.extend(r.offset for r in batch.records)

    settings = {
        "batching": {"batch_size": 1, "maximum_batching_window_ms": 0},
        "source": {"commit_interval_ms": 60_000},
        "runtime": {"max_buffered_records": 200},
    }
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        for i in range(2000):  # one fetch: past half the bound every batch is near
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: len(handled) == 2000 and _idle(w), timeout_s=20)
        rounds = len(w.source.commits)
    assert calls <= 4 * (rounds + 2), (calls, rounds)
