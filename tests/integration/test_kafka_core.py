"""The Kafka core against the real Apache Kafka broker: delivery and rebalance.

Crashes (kill -9) and shutdown (SIGTERM) are aimed at batches inside the handler in
`test_kafka_crash.py`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    end_offsets,
    eventually,
    keyed_topic,
    produce_keyed,
    read_handled,
    scrape,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka
PARTITIONS = 4


def setup_topic(kafka: str, count: int, partitions: int = PARTITIONS) -> tuple[str, dict[int, int]]:
    return keyed_topic(kafka, count, partitions)


def fully_committed(kafka: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    return committed(kafka, group, topic) == ends


def test_clean_run_handles_every_record_once_in_order_and_commits_to_the_end(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, ends = setup_topic(kafka, 20_000)
    assert sum(ends.values()) == 20_000 and all(ends.values())
    group = unique("g")
    worker = WorkerProcess(write_config(tmp_path / "w.toml", kafka, topic, group), tmp_path)
    try:
        port = worker.metrics_port
        eventually(lambda: fully_committed(kafka, group, topic, ends), what="all committed")
        handled = read_handled(tmp_path, worker.pid)
        assert {p: offsets for p, offsets in handled.items()} == {
            p: list(range(end)) for p, end in ends.items()
        }

        m = scrape(port)
        for p, end in ends.items():
            labels = (("partition", f"{topic}-{p}"), ("source", "kafka"))
            assert m[("worker_records_polled_total", labels)] == end
            assert m[("worker_records_invoked_total", labels)] == end
            assert m[("worker_records_committed_total", labels)] == end
            assert m[("worker_records_failed_total", labels)] == 0
            assert m[("worker_offset_lag_records", labels)] == 0
            assert m[("worker_committed_position", labels)] == end
            assert 0 <= m[("worker_iterator_age_seconds", labels)] < 600
            success = (("outcome", "success"), *labels)
            assert m[("worker_batches_total", success)] >= end / 100
        src = (("source", "kafka"),)
        assert m[("worker_assigned_partitions", src)] == PARTITIONS
        assert m[("worker_rebalances_total", src)] >= 1
        assert (
            m[("worker_batch_size_records_count", src)]
            == m[("worker_handler_duration_seconds_count", src)]
        )
        assert m[("worker_batch_size_records_sum", src)] == 20_000
        # A new group's start is no failed poll (aiokafka raised "no committed offset"
        # once while the source was still seeking: a warning, counted, a 1 s pause).
        assert m[("worker_poll_errors_total", src)] == 0
        assert "poll_failed" not in worker.log()

        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


def assigned_count(worker: WorkerProcess, nth: int) -> int:
    line = worker.wait_for_log(r"event=assigned partitions=(\S*)", count=nth).group(1)
    return len([p for p in line.split(",") if p])


def test_two_workers_split_the_partitions_and_stopping_one_moves_them(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, _ = setup_topic(kafka, 4000)
    group = unique("g")
    config = write_config(tmp_path / "w.toml", kafka, topic, group)
    a = WorkerProcess(config, tmp_path)
    b = None
    try:
        assert assigned_count(a, 1) == PARTITIONS
        b = WorkerProcess(config, tmp_path)
        assert assigned_count(b, 1) == PARTITIONS // 2
        assert assigned_count(a, 2) == PARTITIONS // 2
        asyncio.run(produce_keyed(kafka, topic, 4000))
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        eventually(lambda: fully_committed(kafka, group, topic, ends), what="split run committed")
        handled_by_b = read_handled(tmp_path, b.pid)
        assert len(handled_by_b) == PARTITIONS // 2  # both really worked

        b.terminate()
        assert b.wait() == 0
        assert assigned_count(a, 3) == PARTITIONS
        asyncio.run(produce_keyed(kafka, topic, 4000))
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        eventually(lambda: fully_committed(kafka, group, topic, ends), what="moved run committed")
    finally:
        a.stop()
        if b is not None:
            b.stop()
    handled = read_handled(tmp_path)
    for p, end in ends.items():
        assert set(handled[p]) == set(range(end)), f"partition {p} lost records"


async def test_records_fetched_while_an_assignment_is_prepared_are_not_skipped(
    kafka: str, monkeypatch: pytest.MonkeyPatch
):
    """Found by the three-node fault suite: aiokafka fetches newly assigned partitions while
    the assigned callback still reads their committed offsets; the first version's poll loop
    dropped those records (no partition object yet) while the consumer's position moved on,
    so a worker joining onto a backlog skipped them and committed over them, or idled with
    lag. The callback is slowed at our own listener boundary, as a loaded coordinator
    slows it; the broker is not touched."""
    from tests.integration.kafka_helpers import committed_offsets, create_topic
    from tests.integration.test_kafka_failures import config, produce_numbered, running
    from worker.sources.kafka.source import KafkaSource

    topic, group = unique("joined"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    await produce_numbered(kafka, topic, 800, PARTITIONS)
    prepare = KafkaSource.prepare

    async def slow_prepare(self: KafkaSource, partitions: list) -> None:
        await prepare(self, partitions)
        await asyncio.sleep(1.5)

    monkeypatch.setattr(KafkaSource, "prepare", slow_prepare)
    handled: list[tuple[int, int]] = []

    async def handler(batch) -> None:
        handled.extend((r.partition, r.offset) for r in batch.records)

    cfg = config(kafka, topic, group, batching={"maximum_batching_window_ms": 0})
    ends = await end_offsets(kafka, topic, PARTITIONS)
    async with running(cfg, handler):
        for _ in range(300):
            if await committed_offsets(kafka, group, topic) == ends:
                break
            await asyncio.sleep(0.1)
    assert sorted(handled) == sorted((p, o) for p, end in ends.items() for o in range(end))
    assert await committed_offsets(kafka, group, topic) == ends


async def test_a_failing_assignment_callback_stops_the_worker_instead_of_owning_idle_partitions(
    kafka: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """aiokafka logs and swallows an error raised in a rebalance callback: the first version
    then owned the partitions with nothing processing them, ready, for ever. The fault is
    raised in our own callback (the broker is not touched)."""
    from tests.integration.kafka_helpers import committed_offsets, create_topic
    from tests.integration.test_kafka_failures import config, produce_numbered
    from worker.runtime.worker import Worker
    from worker.sources.kafka.source import KafkaSource

    topic, group = unique("broken"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    await produce_numbered(kafka, topic, 40, PARTITIONS)

    async def broken_prepare(self: KafkaSource, partitions: list) -> None:
        raise RuntimeError("cannot read committed offsets")

    monkeypatch.setattr(KafkaSource, "prepare", broken_prepare)

    async def handler(batch) -> None:
        raise AssertionError("nothing may be handled")

    worker = Worker(config(kafka, topic, group), handler=handler)
    code = await asyncio.wait_for(worker.serve(), timeout=60)
    assert code == 1
    assert "cannot read committed offsets" in (worker.failure or "")
    assert "event=source_failed" in caplog.text
    assert await committed_offsets(kafka, group, topic) in ({}, {p: 0 for p in range(PARTITIONS)})


# aiokafka takes the setting as it is (`group_instance_id`); the test runs on librdkafka
# only, to keep CI short (it passed on both when written). It was long while librdkafka's
# revoke commit stalled (about 2 runs in 12): fixed by running commits on the poller thread.
@pytest.mark.parametrize("kafka_client", ["librdkafka"], indirect=True)
def test_a_static_member_restarted_within_the_session_gets_its_partitions_back_quietly(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """`source.group_instance_id`: a member that stops and comes back within the session
    timeout is given the same partitions, and the other member is never rebalanced."""
    topic, _ = setup_topic(kafka, 2000)
    group = unique("g")

    def config(name: str) -> Path:
        return write_config(
            tmp_path / f"{name}.toml", kafka, topic, group,
            source={"group_instance_id": name, "session_timeout_ms": 20_000},
        )  # fmt: skip

    a, b = WorkerProcess(config("a"), tmp_path), None
    a2 = None
    try:
        assert assigned_count(a, 1) == PARTITIONS
        b = WorkerProcess(config("b"), tmp_path)
        kept = a.wait_for_log(r"event=assigned partitions=(\S*)", count=2).group(1)
        b.wait_for_log(r"event=assigned partitions=\S+")
        a.terminate()
        assert a.wait() == 0
        a2 = WorkerProcess(config("a"), tmp_path)
        assert a2.wait_for_log(r"event=assigned partitions=(\S*)").group(1) == kept
        asyncio.run(produce_keyed(kafka, topic, 2000))
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        eventually(lambda: fully_committed(kafka, group, topic, ends), what="all committed")
        assert b.log().count("event=assigned") == 1 and "event=revoked" not in b.log()
    finally:
        for w in (a, b, a2):
            if w is not None:
                w.stop()
    handled = read_handled(tmp_path)
    for p, end in ends.items():
        assert set(handled[p]) == set(range(end)), f"partition {p} lost records"
