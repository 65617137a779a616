"""The whole pipeline on the memory source: batching, order, retries, commits, pause, revoke."""

import asyncio
from collections import defaultdict

from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

TOPIC = "t"


def broker_with(records_per_partition: int, partitions: int = 2) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic(TOPIC, partitions)
    for p in range(partitions):
        for i in range(records_per_partition):
            broker.produce(TOPIC, b'{"n": %d}' % i, key=b"k%d" % p, partition=p)
    return broker


class Recorder:
    """A handler that records (partition, offset) per call; optionally fails or blocks."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.fail_offsets: set[int] = set()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, batch) -> None:
        self.calls.append([(r.partition, r.offset) for r in batch.records])
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_offsets.intersection(r.offset for r in batch.records):
            raise RuntimeError("poison")

    def handled(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for call in self.calls:
            for p, o in call:
                out[p].append(o)
        return out


async def test_every_record_is_handled_once_in_order_and_committed():
    broker = broker_with(250)
    rec = Recorder()
    async with running_worker(rec, broker, [TOPIC], {"batching": {"batch_size": 40}}):
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    assert rec.handled() == {0: list(range(250)), 1: list(range(250))}
    assert all(len(c) <= 40 for c in rec.calls)
    assert all(len({p for p, _ in c}) == 1 for c in rec.calls)  # one partition per batch


async def test_a_partial_batch_waits_for_the_window_then_goes():
    broker = broker_with(3, partitions=1)
    rec = Recorder()
    settings = {"batching": {"batch_size": 100, "maximum_batching_window_ms": 30}}
    async with running_worker(rec, broker, [TOPIC], settings):
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    assert rec.calls == [[(0, 0), (0, 1), (0, 2)]]


async def test_a_failing_batch_is_retried_until_it_succeeds_and_nothing_passes_it():
    broker = broker_with(30, partitions=1)
    rec = Recorder()
    rec.fail_offsets = {12}
    settings = {"batching": {"batch_size": 10}, "errors": {"bisect_batch_on_function_error": False}}
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        await wait_until(lambda: len(rec.calls) >= 5)  # batch 10..19 failed several times
        assert broker.committed("test", TOPIC, 0) == 10
        assert all(c[0] == (0, 10) for c in rec.calls[1:])  # retried, never skipped
        rec.fail_offsets = set()
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        retries = w.metrics.retries.labels("memory", "t-0").value
    assert retries >= 3
    assert rec.handled()[0][-10:] == list(range(20, 30))


async def test_a_full_buffer_pauses_the_partition_and_draining_resumes_it():
    broker = broker_with(500, partitions=1)
    rec = Recorder()
    rec.gate = asyncio.Event()
    settings = {"batching": {"batch_size": 10}, "runtime": {"max_buffered_records": 50}}
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        source = w.source
        source.max_records = 20  # small fetches, as a real consumer's would be
        await wait_until(lambda: ("t", 0) in source.paused)
        partition = w.partition(("t", 0))
        assert partition.buffered_records < 50 + 20  # bounded: limit plus one fetch
        rec.gate.set()
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        assert ("t", 0) not in source.paused
    assert rec.handled()[0] == list(range(500))


async def test_revoke_finishes_the_batch_in_flight_commits_it_and_drops_the_rest():
    broker = broker_with(100, partitions=1)
    rec = Recorder()
    rec.gate = asyncio.Event()
    settings = {"batching": {"batch_size": 10}, "runtime": {"rebalance_timeout_s": 5}}
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        await rec.entered.wait()
        revoke = asyncio.create_task(w.source.revoke([("t", 0)]))
        await asyncio.sleep(0)  # let the revoke begin while the batch is still running
        assert not revoke.done()
        rec.gate.set()
        await revoke
        assert broker.committed("test", TOPIC, 0) == 10  # the batch in flight, and no more
        assert w.partition(("t", 0)) is None
        await w.source.assign([("t", 0)])  # given back: resumes from the commit
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    assert rec.handled()[0] == list(range(100))


async def test_revoke_abandons_a_batch_that_misses_the_deadline_uncommitted():
    broker = broker_with(20, partitions=1)
    rec = Recorder()
    rec.gate = asyncio.Event()  # never opened: the handler hangs
    settings = {"batching": {"batch_size": 10}, "runtime": {"rebalance_timeout_s": 0.05}}
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        await rec.entered.wait()
        await w.source.revoke([("t", 0)])
        assert broker.committed("test", TOPIC, 0) is None
        rec.gate.set()


async def test_shutdown_lets_the_batch_in_flight_finish_and_commits_it():
    """The gate opens only once the partition is being stopped with the batch still
    inside the handler, so a stop that cancels in-flight batches fails this test."""
    broker = broker_with(10, partitions=1)
    rec = Recorder()
    rec.gate = asyncio.Event()
    async with running_worker(rec, broker, [TOPIC], {"batching": {"batch_size": 10}}) as w:
        await rec.entered.wait()
        partition = w.partition((TOPIC, 0))
        assert partition is not None
        w.request_exit()
        await wait_until(lambda: partition.releasing)
        rec.gate.set()
    assert broker.committed("test", TOPIC, 0) == 10


async def test_commits_that_fail_are_retried_and_nothing_is_lost():
    broker = broker_with(50, partitions=1)
    rec = Recorder()
    async with running_worker(rec, broker, [TOPIC], {"batching": {"batch_size": 10}}) as w:
        w.source.commit_error = ConnectionError("broker down")
        failures = w.metrics.commit_failures.labels("memory")._value.get
        # Until a commit was tried and refused: the committer may still be sleeping its
        # interval when the last batch is handled (clearing the error then raced it).
        await wait_until(lambda: len(rec.handled()[0]) == 50 and failures() >= 1)
        assert broker.committed("test", TOPIC, 0) is None
        w.source.commit_error = None
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))


async def test_metrics_count_per_batch_what_happened():
    broker = broker_with(100, partitions=2)
    rec = Recorder()
    async with running_worker(rec, broker, [TOPIC], {"batching": {"batch_size": 25}}) as w:
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        m = w.metrics

        def value(metric, *labels):
            child = metric.labels(*labels)
            return child.value if hasattr(child, "value") else child._value.get()  # tally or gauge

        for p in ("t-0", "t-1"):
            assert value(m.records_polled, "memory", p) == 100
            assert value(m.records_invoked, "memory", p) == 100
            assert value(m.records_committed, "memory", p) == 100
            assert value(m.batches, "memory", p, "success") == 4
            assert value(m.offset_lag, "memory", p) == 0
        assert value(m.assigned_partitions, "memory") == 2


async def test_the_memory_budget_pauses_every_partition_and_bounds_all_buffers_together():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 4)
    rec = Recorder()
    rec.gate = asyncio.Event()
    budget = 1024 * 1024
    settings = {
        "batching": {"batch_size": 10},
        "runtime": {"memory_budget_bytes": budget, "max_buffered_records": 1_000_000},
    }
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        w.source.max_records = 100  # small fetches, as a real consumer's would be
        for i in range(8000):
            broker.produce(TOPIC, b"x" * 500, key=b"k%d" % i, partition=i % 4)
        await wait_until(lambda: len(w.source.paused) == 4)
        fetch = 100 * (500 + 320)  # one more fetch may land after the check
        assert sum(p.buffered_bytes for p in w.assignments.partitions()) <= budget + fetch
        # Pausing sticks while the handler is blocked, whatever the lanes' own limits say.
        assert all(p.paused for p in w.assignments.partitions())
        rec.gate.set()
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]), timeout_s=30)
        assert not w.source.paused
    assert sum(len(v) for v in rec.handled().values()) == 8000


async def test_losing_one_partition_does_not_hold_back_the_commits_of_the_others(caplog):
    broker = broker_with(0, partitions=2)
    entered, gate = asyncio.Event(), asyncio.Event()

    async def handler(batch):
        if batch.partition == "t-1":
            entered.set()
            await gate.wait()

    async with running_worker(handler, broker, [TOPIC], {"batching": {"batch_size": 10}}) as w:
        broker.produce(TOPIC, b"x", partition=1)
        await entered.wait()
        del w.source.positions[("t", 1)]  # ownership gone, its revoke not yet delivered
        gate.set()  # t-1 now has something to commit, and cannot
        for i in range(40):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 40)
        assert w.partition(("t", 0)).committed == 39
        assert broker.committed("test", TOPIC, 1) is None
        assert w.metrics.commits_refused.labels("memory")._value.get() == 1
    refused = [r for r in caplog.records if "event=commit_refused" in r.getMessage()]
    assert refused and refused[0].levelname == "WARNING" and "t-1@0" in refused[0].getMessage()


async def test_partitions_stuck_on_poison_do_not_starve_a_healthy_one_of_the_budget():
    """Three partitions retrying a poison record for ever keep their buffers: more than
    half the memory budget. The first version resumed a budget-paused partition only when
    the total fell under half the budget, so the healthy partition never ran again."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 4)
    budget = 1024 * 1024
    for i in range(3 * 600):  # partitions 0..2: a poison record first, then a full buffer
        broker.produce(TOPIC, b"x" * 500, key=b"k", partition=i % 3)
    handled: list[int] = []

    async def handler(batch) -> None:
        if batch.partition != "t-3":
            raise RuntimeError("poison")  # retried for ever (no retry limit)
        handled.extend(r.offset for r in batch.records)

    settings = {
        "batching": {"batch_size": 10},
        "errors": {"retry_backoff_ms": [50, 50]},
        "runtime": {"memory_budget_bytes": budget, "max_buffered_bytes": 200_000,
                    "max_buffered_records": 1_000_000},
    }  # fmt: skip
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        w.source.max_records = 100
        await wait_until(lambda: all((p := w.partition((TOPIC, i))) and p.paused for i in range(3)))
        stuck = [w.partition((TOPIC, i)) for i in range(3)]
        held = sum(p.buffered_bytes for p in stuck)
        assert held > budget // 2  # the stuck partitions hold more than half the budget
        for _ in range(6000):  # 3 MB for the healthy partition: three times the budget
            broker.produce(TOPIC, b"y" * 500, partition=3)
        await wait_until(lambda: len(handled) == 6000, timeout_s=30)
        assert sum(p.buffered_bytes for p in w.assignments.partitions()) <= budget + 100 * 820
    assert handled == list(range(6000))


async def test_while_commits_fail_handled_but_uncommitted_work_stays_bounded():
    """The first version bounded only unhandled records: with commits failing it handled
    20,000 records with max_buffered_records = 100, all of which a crash would redo."""
    broker = broker_with(0, partitions=1)
    rec = Recorder()
    settings = {"batching": {"batch_size": 10}, "runtime": {"max_buffered_records": 100}}
    async with running_worker(rec, broker, [TOPIC], settings) as w:
        w.source.max_records = 50
        w.source.commit_error = ConnectionError("broker down")
        for i in range(2000):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: w.partition((TOPIC, 0)) is not None)
        p = w.partition((TOPIC, 0))
        await wait_until(lambda: p.paused and p.stats().unfinished == 0)
        assert len(rec.handled()[0]) == p.outstanding_records <= 2 * 100 + 50
        w.source.commit_error = None
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]), timeout_s=30)
    assert rec.handled()[0] == list(range(2000))


async def test_the_last_commit_time_is_exported_per_partition_and_goes_with_it():
    broker = broker_with(30, partitions=1)
    async with running_worker(Recorder(), broker, [TOPIC], {"batching": {"batch_size": 10}}) as w:
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        labels = {"source": "memory", "partition": "t-0"}
        stamp = w.metrics.registry.get_sample_value("worker_last_commit_timestamp_seconds", labels)
        assert stamp is not None and abs(stamp - __import__("time").time()) < 60
        await w.source.revoke([(TOPIC, 0)])
        gone = w.metrics.registry.get_sample_value("worker_last_commit_timestamp_seconds", labels)
        assert gone is None


async def test_the_lanes_take_what_a_fetch_fed_before_the_next_fetch():
    """A fetch of records already there returns without yielding (aiokafka's prefetched
    results do, as the memory source does): the loop still lets the lanes run between
    fetches. Else a backlog is buffered until the partition pauses before the first call,
    and pressure cuts free nothing until every partition is paused."""
    broker = broker_with(0, partitions=1)
    buffered: list[int] = []
    calls: list[int] = []
    settings = {"batching": {"batch_size": 10}, "runtime": {"max_buffered_records": 5000}}

    async def handler(batch) -> None:
        buffered.append(w.partition((TOPIC, 0)).buffered_records)
        calls.append(len(batch.records))

    async with running_worker(handler, broker, [TOPIC], settings) as w:
        w.source.max_records = 10
        for i in range(2000):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    assert sum(calls) == 2000
    assert max(buffered) <= 30, max(buffered)  # a fetch or two ahead, never the backlog
