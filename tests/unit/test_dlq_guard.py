"""The dead-letter guard halts a partition instead of dead-lettering everything."""

from tests.unit.test_failure_policy import Handler, RecordingDestination, one_partition
from worker.handling.dead_letter import DeadLetterGuard
from worker.partition.steps import PartitionHalted
from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until


def test_consecutive_limit_counts_dead_letters_since_the_last_success():
    guard = DeadLetterGuard(max_ratio=1.0, max_consecutive=3)
    guard.check(3)
    guard.dead_lettered(3)
    guard.handled(10)
    guard.check(3)  # the success in between reset the run
    guard.dead_lettered(3)
    try:
        guard.check(1)
    except PartitionHalted as exc:
        assert "4 records in a row" in str(exc)
    else:
        raise AssertionError("the fourth in a row must halt")


def test_ratio_limit_waits_for_enough_records():
    guard = DeadLetterGuard(max_ratio=0.2, max_consecutive=0)
    guard.check(50)  # 50 of 50, but fewer than 100 resolved: no verdict yet
    guard.dead_lettered(50)
    guard.handled(100)
    try:
        guard.check(1)  # 51 of 151
    except PartitionHalted as exc:
        assert "51 of 151" in str(exc)
    else:
        raise AssertionError("a ratio over 0.2 must halt")


async def test_a_handler_that_fails_everything_halts_the_partition_after_the_limit(caplog):
    broker = one_partition(50)
    handler = Handler(poison=set(range(50)))
    dlq = RecordingDestination()
    settings = {
        "batching": {"batch_size": 10},
        "errors": {"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 5},
    }
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(
            lambda: w.partition(("t", 0)) is not None and w.partition(("t", 0)).halted is not None
        )
        healthy, why = w.health.health()
        ready, _ = w.health.readiness()
        halted = w.metrics.halted.labels("memory", "t-0")._value.get()
        calls_at_halt = len(handler.calls)
    assert dlq.offsets() == [0, 1, 2, 3, 4]  # five, and not one more
    # Nothing past the halt (0, the next to read, carries the guard's note).
    assert broker.committed("test", "t", 0) in (None, 0)
    assert not healthy and not ready and "t-0" in why
    assert halted == 1
    assert len(handler.calls) == calls_at_halt  # nothing invoked after the halt
    assert "event=partition_halted" in caplog.text


async def test_a_revoked_partition_leaves_no_series_behind_halted_included():
    """A stale `worker_partition_halted = 1` on a pod that no longer owns the partition
    pages someone for nothing, and sums across pods (an autoscaler's) count it twice:
    gauges and counters both go."""
    from worker.observe.metrics import Metrics

    broker = one_partition(50)
    handler = Handler(poison=set(range(50)))
    metrics = Metrics()
    source_family = metrics.partition_gauge("worker_test_source_gauge", "a source's own")
    settings = {
        "batching": {"batch_size": 10},
        "errors": {"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 5},
    }
    labels = {"source": "memory", "partition": "t-0"}
    sample = metrics.registry.get_sample_value
    async with running_worker(handler, broker, ["t"], settings, metrics=metrics,
                              destination=RecordingDestination()) as w:  # fmt: skip
        await wait_until(lambda: (p := w.partition(("t", 0))) is not None and p.halted)
        source_family.labels("memory", "t-0").set(7)
        assert sample("worker_partition_halted", labels) == 1
        assert sample("worker_records_failed_total", labels) > 0
        assert w.health.health()[0] is False
        await w.source.revoke([("t", 0)])
        assert w.health.health() == (True, "ok")
        left = [
            s.name
            for family in metrics.registry.collect()
            for s in family.samples
            if s.labels.get("partition") == "t-0"
        ]
        assert left == []


async def test_a_halt_outlives_a_restart_and_a_fixed_handler_goes_on():
    """The guard's counts lived in memory: every restart of a halted worker (the
    orchestrator restarts it, since /healthz fails) dead-lettered another
    `max_consecutive_dead_letters` records. They are now written with the
    partition's checkpoints and read back by its next owner."""
    broker = one_partition(50)
    settings = {
        "batching": {"batch_size": 10},
        "errors": {"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 5},
    }
    dlq = RecordingDestination()

    async def run_until_halted(handler: Handler) -> None:
        async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
            await wait_until(lambda: (p := w.partition(("t", 0))) is not None and p.halted)

    await run_until_halted(Handler(poison=set(range(50))))
    assert dlq.offsets() == [0, 1, 2, 3, 4]
    for _ in range(2):  # the same bad deploy, restarted: halts before one more record
        bad = Handler(poison=set(range(50)))
        await run_until_halted(bad)
        assert bad.calls  # it did try
        assert dlq.offsets() == [0, 1, 2, 3, 4]

    fixed = Handler()
    async with running_worker(fixed, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(lambda: broker.committed("test", "t", 0) == 50)
        assert w.partition(("t", 0)).halted is None
    assert dlq.offsets() == [0, 1, 2, 3, 4]
    # 55 resolved, 5 of them dead-lettered; its first success reset the run.
    assert getattr(broker, "notes", {}).get(("test", "t", 0)) == "dlg1:55,5,0"


def report_all_failed(batch, n):
    """A bad deploy written as AWS documents: every record caught and reported failed."""
    return [r.offset for r in batch.records]


async def _dead_lettered_before_halt(partial_retry: str, batch_size: int) -> list[int]:
    broker = one_partition(50)
    handler = Handler(reply=report_all_failed)
    dlq = RecordingDestination()
    settings = {
        "batching": {"batch_size": batch_size},
        "errors": {
            "maximum_retry_attempts": 0,
            "max_consecutive_dead_letters": 5,
            "partial_retry": partial_retry,
        },
    }
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(
            lambda: (
                (p := w.partition(("t", 0))) is not None
                and (p.halted is not None or fully_committed(broker, "test", ["t"]))
            )
        )
    return dlq.offsets()


async def test_consecutive_limit_halts_a_handler_that_reports_every_record_failed():
    """A partial response naming the batch's first record counted as a success of zero
    records, which reset the run of dead letters: with `from_first_failure` giving up one
    record at a time, `max_consecutive_dead_letters` never halted a bad deploy that catches
    its errors and reports every record failed (the whole stream went to the DLQ)."""
    assert await _dead_lettered_before_halt("from_first_failure", 10) == [0, 1, 2, 3, 4]


async def test_consecutive_limit_halts_failed_only_reporting_every_record_failed():
    # Batches of 3 given up whole: the second would make 6 in a row.
    assert await _dead_lettered_before_halt("failed_only", 3) == [0, 1, 2]


async def test_failed_only_counts_every_record_not_reported_failed_as_handled():
    """Only the records before the first reported failure were counted: those between and
    after failures that succeeded were resolved but never counted, so the ratio guard saw
    more dead letters per record than there were and halted early."""
    broker = one_partition(10)
    handler = Handler(reply=lambda batch, n: [1, 4] if n == 1 else None)
    settings = {
        "batching": {"batch_size": 10},
        "errors": {"partial_retry": "failed_only", "max_dead_letter_ratio": 0.5},
    }
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert handler.calls == [list(range(10)), [1, 4]]
    assert broker.notes[("test", "t", 0)] == "dlg1:10,0,0"  # 8, then the 2 retried


async def test_a_window_final_invoke_of_no_records_does_not_reset_the_consecutive_limit():
    """A window's final invoke has no records; its success counted as a success of none
    and reset the run of dead letters. A bad deploy failing on every record, whose final
    invokes (nothing to process) succeed, dead-lettered the whole stream window by window."""
    import time

    broker = MemoryBroker()
    broker.create_topic("t", 1)
    base = (int(time.time()) // 60 - 10) * 60_000  # ten minutes ago, on a minute boundary
    for window in range(6):
        for i in range(2):
            broker.produce("t", b"{}", partition=0, timestamp_ms=base + window * 60_000 + i)

    def handler(event, context):
        if any(event["records"].values()):
            raise ValueError("cannot process")
        return {"state": {}}

    dlq = RecordingDestination()
    settings = {
        "batching": {"tumbling_window_s": 60, "batch_size": 12},
        "handler": {"style": "lambda"},
        "errors": {"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 3},
    }
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(
            lambda: (
                (p := w.partition(("t", 0))) is not None
                and (p.halted is not None or fully_committed(broker, "test", ["t"]))
            )
        )
    assert dlq.offsets() == [0, 1]  # the second window's two would make four in a row
