"""Hostile cases for the settle round (committing a settled partition's fetch position past
the transaction markers its client skipped), on the real broker, both clients: it must
never commit past a readable record that was not handled.

- A record that fails for ever (retried, bisected) is the last before a commit marker:
  while its batch waits for its next attempt nothing of the partition is in a batcher,
  so only the unit left open keeps the partition from "settled". The other partition
  shows that settle rounds ran (its markers are passed, lag 0 there).
- kill -9 with key lanes, tiny buffers and fetches, a window and a slow handler, across
  many small transactions (aborted ones too): whatever the worker was doing when it died,
  every readable record below each committed offset was handled; a second worker then
  handles the rest, to the end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    end_offsets,
    eventually,
    long_run,
    read_handled,
    unique,
    write_config,
)
from tests.integration.test_kafka_transaction_markers import (
    PARTITIONS,
    caught_up,
    handled_pairs,
    write_transactions,
)

pytestmark = pytest.mark.kafka


def attempts(calls: Path, partition: int, offset: int) -> int:
    """Invocations whose batch held (partition, offset) (`RECORD_STARTED` lines)."""
    if not calls.exists():
        return 0
    n = 0
    for line in calls.read_text().splitlines():
        label, first, last = line.split(" ")
        if int(label.rsplit("-", 1)[1]) == partition and int(first) <= offset <= int(last):
            n += 1
    return n


@long_run
def test_a_record_failing_for_ever_before_a_commit_marker_is_never_passed(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, group = unique("txn-poison"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit", "abort", "commit"]))
    poison = max(o for p, o in readable if p == 0)  # the marker is poison + 1
    calls = tmp_path / "calls"
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        batching={"batch_size": 2, "maximum_batching_window_ms": 10},
        errors={"retry_backoff_ms": [300, 300]},  # the batch waits: settle rounds pass
    )  # fmt: skip
    worker = WorkerProcess(
        config, tmp_path, {"RECORD_POISON": f"0:{poison}", "RECORD_STARTED": str(calls)}
    )
    try:
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        eventually(lambda: committed(kafka, group, topic).get(1) == ends[1], timeout_s=60,
                   what="partition 1 passed its markers (settle rounds run)")  # fmt: skip
        eventually(lambda: attempts(calls, 0, poison) >= 4, what="the poison retried")
        at = committed(kafka, group, topic).get(0, 0)
        assert at <= poison, f"partition 0 committed at {at}, past its failing record {poison}"
        assert (0, poison) not in handled_pairs(tmp_path)
    finally:
        worker.stop()


@long_run
def test_kill_9_with_key_lanes_and_tiny_buffers_never_leaves_a_commit_past_an_unhandled_record(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, group = unique("txn-kill"), unique("g")
    plan = ["abort" if n % 3 == 2 else "commit" for n in range(30)]
    readable = asyncio.run(write_transactions(kafka, topic, plan))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"fetch_max_records": 3},
        batching={"batch_size": 2, "maximum_batching_window_ms": 30},
        handler={"parallelization_factor": 3},
        runtime={"log_format": "text", "max_buffered_records": 6},
    )  # fmt: skip
    first = WorkerProcess(config, tmp_path, {"RECORD_SLEEP_S": "0.01"})
    try:
        half = len(readable) // 2
        eventually(lambda: len(handled_pairs(tmp_path)) >= half, what="half handled")
        first.kill9()
        first.wait()
    finally:
        first.stop()
    at_kill = committed(kafka, group, topic)
    handled = set(handled_pairs(tmp_path))
    for p, at in at_kill.items():
        lost = {o for q, o in readable if q == p and o < at} - {o for q, o in handled if q == p}
        assert not lost, f"partition {p} committed at {at} past unhandled records {sorted(lost)}"
    second = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: readable <= set(handled_pairs(tmp_path)), what="all handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=60, what="lag 0")
        assert set(handled_pairs(tmp_path)) == readable, "an aborted record was handled"
        second.terminate()
        assert second.wait() == 0
    finally:
        second.stop()
    assert sum(len(v) for v in read_handled(tmp_path).values()) >= len(readable)


@long_run
def test_latest_with_a_transaction_open_at_the_start_reads_it_once_it_commits(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """`starting_position = "latest"`, a new group, a transaction open on partition 0 when
    the worker takes its start offsets: under read_committed the end is the last stable
    offset (before the open transaction), as the Java consumer's reset to latest takes it.
    Starting at the high watermark instead skips that transaction's records for good once
    it commits (and commits past them for the next owner): written before the start, but
    not readable then."""
    topic, group = unique("txn-latest"), unique("g")
    asyncio.run(write_transactions(kafka, topic, ["commit"]))

    async def begin() -> tuple[AIOKafkaProducer, set[tuple[int, int]]]:
        txn = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=unique("open"))
        await txn.start()
        await txn.begin_transaction()
        sent = [await txn.send(topic, b"open", partition=0) for _ in range(3)]
        return txn, {(m.partition, m.offset) for m in await asyncio.gather(*sent)}

    loop = asyncio.new_event_loop()
    txn, opened = loop.run_until_complete(begin())
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group, source={"starting_position": "latest"}
    )
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log(r"event=assigned")  # the start offsets were taken before it
        loop.run_until_complete(txn.commit_transaction())
        loop.run_until_complete(txn.stop())
        later = asyncio.run(write_transactions(kafka, topic, ["commit"], create=False))
        eventually(lambda: later <= set(handled_pairs(tmp_path)), what="later handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
        missed = opened - set(handled_pairs(tmp_path))
        assert not missed, f"the transaction open at the start was skipped: {sorted(missed)}"
    finally:
        worker.stop()
        loop.close()


def test_records_waiting_for_their_batching_window_are_never_passed(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Fetched records wait in their batcher for a 4 s window: no unit is open for them,
    nothing is in flight, the fetch position is past them and their markers, and a settle
    round runs every second meanwhile. The committed offsets must stay at or below the
    first readable record not handled yet, all along (checked until all are handled)."""
    topic, group = unique("txn-window"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit", "abort", "commit"]))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        batching={"batch_size": 1000, "maximum_batching_window_ms": 4000},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    checks = 0

    def all_handled_and_never_passed() -> bool:
        nonlocal checks
        at = committed(kafka, group, topic)
        handled = set(handled_pairs(tmp_path))
        for p, offset in at.items():
            waiting = [o for q, o in readable - handled if q == p]
            assert not waiting or offset <= min(waiting), (
                f"partition {p} committed at {offset} past unhandled records {sorted(waiting)}"
            )
        checks += 1
        return readable <= handled

    try:
        eventually(all_handled_and_never_passed, timeout_s=60, what="all handled")
        assert checks > 3, "the window ended before the commits were looked at"
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
    finally:
        worker.stop()


def never_passed(kafka: str, group: str, topic: str, readable: set, record_dir: Path) -> bool:
    """Asserts no partition is committed past a readable record not handled yet (by any
    worker so far); True once every readable record is handled."""
    at = committed(kafka, group, topic)
    handled = set(handled_pairs(record_dir))
    for p, offset in at.items():
        waiting = [o for q, o in readable - handled if q == p]
        assert not waiting or offset <= min(waiting), (
            f"partition {p} committed at {offset} past unhandled records {sorted(waiting)}"
        )
    return readable <= handled


@long_run
def test_members_joining_leaving_and_killed_while_transactions_arrive_never_pass_a_record(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Three workers with key lanes, tiny buffers and fetches, a window and a slow handler:
    one joins while transactions (some aborted) arrive, one is killed -9, one leaves on
    SIGTERM, a last one finishes. Checked all along: nothing committed past a readable
    record not handled yet; at the end every readable record is handled and lag is 0."""
    topic, group = unique("txn-churn"), unique("g")
    plan = ["abort" if n % 4 == 3 else "commit" for n in range(12)]
    readable = asyncio.run(write_transactions(kafka, topic, plan))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"fetch_max_records": 2},
        batching={"batch_size": 3, "maximum_batching_window_ms": 200},
        handler={"parallelization_factor": 2},
        runtime={"log_format": "text", "max_buffered_records": 5},
    )  # fmt: skip
    env = {"RECORD_SLEEP_S": "0.02"}
    workers = [WorkerProcess(config, tmp_path, env)]

    def check() -> bool:
        return never_passed(kafka, group, topic, readable, tmp_path)

    def some_handled(n: int) -> bool:
        check()
        return len(handled_pairs(tmp_path)) >= n

    try:
        eventually(lambda: some_handled(10), what="the first worker handling")
        workers.append(WorkerProcess(config, tmp_path, env))
        for n in range(4):
            kind = "abort" if n == 2 else "commit"
            readable |= asyncio.run(write_transactions(kafka, topic, [kind], create=False))
            check()
        workers[1].wait_for_log(r"event=assigned")
        eventually(lambda: some_handled(len(readable) // 2), what="half handled")
        workers[0].kill9()
        workers[0].wait()
        check()
        readable |= asyncio.run(write_transactions(kafka, topic, ["commit"], create=False))
        workers.append(WorkerProcess(config, tmp_path, env))
        workers[2].wait_for_log(r"event=assigned")
        workers[1].terminate()
        assert workers[1].wait() == 0
        readable |= asyncio.run(write_transactions(kafka, topic, ["commit", "abort"], create=False))
        eventually(check, timeout_s=90, what="all handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=60, what="lag 0")
        assert set(handled_pairs(tmp_path)) == readable, "an aborted record was handled"
    finally:
        for worker in workers:
            worker.stop()


@long_run
def test_a_partition_halted_by_the_dead_letter_guard_before_a_marker_is_never_passed(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Partition 0's last two readable records (a commit marker after them) fail: the first
    is dead-lettered, the second would be one too many in a row and halts the partition.
    More transactions follow (partition 0's fetched, never handled); settle rounds go on
    (partition 1's markers are passed); partition 0 stays committed at or before its
    second failing record."""
    topic, group = unique("txn-halt"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit", "abort", "commit"]))
    last_two = sorted(o for p, o in readable if p == 0)[-2:]
    dlq = tmp_path / "dlq.jsonl"
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        batching={"batch_size": 2, "maximum_batching_window_ms": 10},
        errors={"maximum_retry_attempts": 0, "on_failure": f"file://{dlq}",
                "max_consecutive_dead_letters": 1, "retry_backoff_ms": [10, 10]},
    )  # fmt: skip
    poison = ",".join(f"0:{o}" for o in last_two)
    worker = WorkerProcess(config, tmp_path, {"RECORD_POISON": poison})
    try:
        worker.wait_for_log(r"event=partition_halted partition=\S+-0 ")
        # After the halt: more transactions, partition 0's fetched and never handled.
        asyncio.run(write_transactions(kafka, topic, ["commit", "abort"], create=False))
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        eventually(
            lambda: committed(kafka, group, topic).get(1) == ends[1],
            timeout_s=60,
            what="partition 1 passed its markers (settle rounds ran after the halt)",
        )
        at = committed(kafka, group, topic).get(0, 0)
        assert at <= last_two[1], f"halted partition 0 committed at {at}, past {last_two[1]}"
    finally:
        worker.stop()


async def write_large_transactions(bootstrap: str, topic: str, plan: list[str]) -> set:
    """As `write_transactions` (the topic exists), with 60 KB values: a few fetches fill a
    1 MiB memory budget."""
    txn = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=unique("tx"), max_request_size=2**21
    )
    await txn.start()
    readable: set[tuple[int, int]] = set()
    try:
        for kind in plan:
            await txn.begin_transaction()
            sent = [
                await txn.send(topic, bytes(60_000), partition=i % PARTITIONS)
                for i in range(4 * PARTITIONS)
            ]
            metas = await asyncio.gather(*sent)
            if kind == "abort":
                await txn.abort_transaction()
                continue
            await txn.commit_transaction()
            readable |= {(m.partition, m.offset) for m in metas}
    finally:
        await txn.stop()
    return readable


@long_run
def test_a_memory_budget_pausing_and_hurrying_partitions_never_passes_a_record(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """A 1 MiB memory budget against 60 KB records in transactions (some aborted), a 4 s
    window and a slow handler: the budget pauses partitions and cuts their waiting
    batches early while their clients hold fetched records and positions past markers.
    Checked all along: nothing committed past a readable record not handled yet."""
    topic, group = unique("txn-budget"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit"]))
    plan = ["abort" if n % 4 == 3 else "commit" for n in range(10)]
    readable |= asyncio.run(write_large_transactions(kafka, topic, plan))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        batching={"batch_size": 1000, "maximum_batching_window_ms": 4000},
        runtime={"log_format": "text", "memory_budget_bytes": 1024 * 1024},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path, {"RECORD_SLEEP_S": "0.05"})
    try:
        eventually(lambda: never_passed(kafka, group, topic, readable, tmp_path),
                   timeout_s=90, what="all handled")  # fmt: skip
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
        assert set(handled_pairs(tmp_path)) == readable, "an aborted record was handled"
    finally:
        worker.stop()
