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
    kafka: str, tmp_path: Path
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

        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


def assigned_count(worker: WorkerProcess, nth: int) -> int:
    line = worker.wait_for_log(r"event=assigned partitions=(\S*)", count=nth).group(1)
    return len([p for p in line.split(",") if p])


def test_two_workers_split_the_partitions_and_stopping_one_moves_them(kafka: str, tmp_path: Path):
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
