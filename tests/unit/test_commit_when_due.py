"""A partition near its uncommitted bound is committed without waiting the interval.

`max_buffered_records` bounds what a partition has handled and not yet checkpointed
(what a crash makes the next owner redo). With commits only every `commit_interval_ms`,
a partition handling more than that bound in one interval paused at every round: on the
real broker the librdkafka worker paused 20 to 60 times in 3 s, each pause dropping the
client's prefetched records, and read at ~0.8M records/s against ~1.1M without the pauses.
Here the interval is a minute: only a commit made early can let the partition go on.
"""

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
