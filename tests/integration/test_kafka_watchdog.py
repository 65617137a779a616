"""The commit watchdog on the real broker: a wedged handler makes the worker not ready and
exit non-zero after stall_timeout_s; a normal rebalance does not."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed_offsets,
    create_topic,
    eventually,
    open_transactions,
    produce_keyed,
    read_handled,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except urllib.error.HTTPError:
        return False


def test_a_wedged_handler_stalls_commits_and_the_worker_gives_up(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, group = unique("tel"), unique("g")
    asyncio.run(create_topic(kafka, topic, 1))
    asyncio.run(produce_keyed(kafka, topic, 500))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        handler={"timeout_s": 0.5},
        runtime={"stall_timeout_s": 3, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    # Each batch sleeps 30 s in its thread: every attempt times out and is retried.
    worker = WorkerProcess(config, tmp_path, {"RECORD_SLEEP_S": "30"})
    try:
        port = worker.metrics_port
        assert worker.wait_for_log(r"event=assigned")
        started = time.monotonic()
        eventually(lambda: not ready(port) or worker.proc.poll() is not None, 30, "not ready")
        code = worker.wait(30)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert code == 3
    assert 2.5 < took < 20
    log = worker.log()
    assert "event=commits_stalled" in log and "stacks=" in log and "thread handler" in log


def test_a_normal_rebalance_does_not_trip_the_watchdog(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, group = unique("tel"), unique("g")
    asyncio.run(create_topic(kafka, topic, 4))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        runtime={"stall_timeout_s": 2, "log_format": "text"},
    )  # fmt: skip
    a = WorkerProcess(config, tmp_path, {"RECORD_SLEEP_S": "0.05"})
    b = None
    try:
        a.wait_for_log(r"event=assigned partitions=\S+")
        asyncio.run(produce_keyed(kafka, topic, 3000))
        b = WorkerProcess(config, tmp_path, {"RECORD_SLEEP_S": "0.05"})
        b.wait_for_log(r"event=assigned partitions=\S+")
        asyncio.run(produce_keyed(kafka, topic, 3000))
        b.terminate()
        assert b.wait() == 0
        a.wait_for_log(r"event=assigned partitions=\S+", count=3)
        asyncio.run(produce_keyed(kafka, topic, 1000))
        a.keeps_running(5)  # longer than stall_timeout_s, with records flowing
    finally:
        a.stop()
        if b is not None:
            b.stop()
    assert "commits_stalled" not in a.log()


def test_a_worker_held_at_an_open_transaction_is_not_stalled(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Under read_committed, reading stops at the last stable offset while a transaction
    is open (a producer that hangs holds it up to its transaction timeout, 15 min at the
    broker's most). librdkafka's cached high watermark is past it: its source said
    records were waiting, and the watchdog ended a worker that had handled everything
    readable (exit 3) after stall_timeout_s."""
    topic, group = unique("tx-open"), unique("g")

    loop = asyncio.new_event_loop()
    txn = loop.run_until_complete(open_transactions(kafka, topic, 1))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        runtime={"stall_timeout_s": 3, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: len(read_handled(tmp_path).get(0, [])) == 5, 30, "all readable handled")
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)).get(0) == 5, 30,
                   "committed to the last stable offset")  # fmt: skip
        worker.keeps_running(8)  # well past stall_timeout_s, nothing readable left
    finally:
        worker.terminate()
        code = worker.wait(30)
        worker.stop()
        loop.run_until_complete(txn.abort_transaction())
        loop.run_until_complete(txn.stop())
        loop.close()
    assert code == 0, worker.log()[-3000:]
