"""Adversary (46a176b): librdkafka's last stable offset (its statistics) ends what is
readable under read_committed. It must not hide a real stall, and a transaction that
commits while the worker waits at it must be read on at once. Real broker, both clients;
the faults are a handler held by the recording handler's gate and a producer's own
open transaction."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    LONG,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    eventually,
    long_run,
    open_transactions,
    read_handled,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka


@long_run
def test_a_wedged_handler_next_to_an_open_transaction_still_trips_the_watchdog(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Partition 1's handler is held on offset 2 past its stall timeout, both partitions
    end at an open transaction: exit 3 naming partition 1 only."""
    topic, group = unique("tx-wedge"), unique("g")
    loop = asyncio.new_event_loop()
    txn = loop.run_until_complete(open_transactions(kafka, topic, 2))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        batching={"batch_size": 1, "maximum_batching_window_ms": 0},
        runtime={"stall_timeout_s": 3, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path, {"RECORD_HOLD": "1:2", "RECORD_GATE": str(tmp_path)})
    try:
        code = worker.wait(40)
    finally:
        worker.stop()
        loop.run_until_complete(txn.abort_transaction())
        loop.run_until_complete(txn.stop())
        loop.close()
    log = worker.log()
    assert code == 3, log[-3000:]
    line = next(x for x in log.splitlines() if "event=commits_stalled" in x)
    assert f"partitions={topic}-1 " in line, line[:300]
    assert read_handled(tmp_path).get(0) == list(range(5)), "partition 0 read to its end"


@pytest.mark.parametrize(
    "kafka_client", [pytest.param("aiokafka", marks=LONG), "librdkafka"], indirect=True
)
def test_a_transaction_committed_while_the_worker_waits_is_read_on_at_once(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Held at an open transaction past the stall timeout (not ended), then the
    transaction commits: its records are handled and the lag is 0 within seconds."""
    topic, group = unique("tx-commit"), unique("g")
    loop = asyncio.new_event_loop()
    txn = loop.run_until_complete(open_transactions(kafka, topic, 1))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        runtime={"stall_timeout_s": 2, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    committed_open = False
    try:
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)).get(0) == 5, 30,
                   "committed to the last stable offset")  # fmt: skip
        worker.keeps_running(5)  # past stall_timeout_s, held at the transaction
        loop.run_until_complete(txn.commit_transaction())
        committed_open = True
        sent = time.monotonic()
        end = loop.run_until_complete(end_offsets(kafka, topic, 1))[0]
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)).get(0) == end,
                   20, "lag 0 after the transaction committed")  # fmt: skip
        took = time.monotonic() - sent
        assert read_handled(tmp_path).get(0) == list(range(9))
    finally:
        if not committed_open:
            loop.run_until_complete(txn.abort_transaction())
        loop.run_until_complete(txn.stop())
        worker.terminate()
        code = worker.wait(30)
        worker.stop()
        loop.close()
    assert code == 0, worker.log()[-3000:]
    print(f"lag 0 {took:.2f} s after the commit ({kafka_client})")
    assert took < 10, f"read on only {took:.2f} s after the commit"


@long_run
def test_kip848_a_worker_held_at_an_open_transaction_is_neither_stalled_nor_blind(
    kafka4: str, tmp_path: Path
):
    """librdkafka with `group_protocol = "consumer"` on Kafka 4: held at an open
    transaction past the stall timeout (not ended), then read on once it commits."""
    topic, group = unique("tx-848"), unique("g")
    loop = asyncio.new_event_loop()
    txn = loop.run_until_complete(open_transactions(kafka4, topic, 2))
    config = write_config(
        tmp_path / "w.toml", kafka4, topic, group,
        source={"client": "librdkafka", "group_protocol": "consumer",
                "session_timeout_ms": None, "heartbeat_interval_ms": None},
        runtime={"stall_timeout_s": 2, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    committed_open = False
    try:
        eventually(lambda: asyncio.run(committed_offsets(kafka4, group, topic)) == {0: 5, 1: 5},
                   40, "committed to the last stable offsets")  # fmt: skip
        worker.keeps_running(5)
        loop.run_until_complete(txn.commit_transaction())
        committed_open = True
        ends = loop.run_until_complete(end_offsets(kafka4, topic, 2))
        eventually(lambda: asyncio.run(committed_offsets(kafka4, group, topic)) == ends,
                   20, "lag 0 after the transaction committed")  # fmt: skip
    finally:
        if not committed_open:
            loop.run_until_complete(txn.abort_transaction())
        loop.run_until_complete(txn.stop())
        worker.terminate()
        code = worker.wait(30)
        worker.stop()
        loop.close()
    assert code == 0, worker.log()[-3000:]


def test_partitions_moved_away_and_back_at_an_open_transaction_are_neither_stalled_nor_blind(
    kafka: str, tmp_path: Path
):
    """librdkafka: a second worker takes a partition held at an open transaction and
    leaves again; the first gets it back (its statistics of that partition from before the
    move), holds past the stall timeout, and reads on to lag 0 once the transaction
    commits."""
    from tests.integration import kafka_helpers

    kafka_helpers.client["name"] = "librdkafka"
    topic, group = unique("tx-move"), unique("g")
    loop = asyncio.new_event_loop()
    txn = loop.run_until_complete(open_transactions(kafka, topic, 2))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        runtime={"stall_timeout_s": 3, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    kafka_helpers.client["name"] = "aiokafka"
    a = WorkerProcess(config, tmp_path)
    b = None
    committed_open = False
    try:
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)) == {0: 5, 1: 5},
                   30, "committed to the last stable offsets")  # fmt: skip
        b = WorkerProcess(config, tmp_path)
        b.wait_for_log(r"event=assigned", 30)
        b.terminate()
        assert b.wait(30) == 0, b.log()[-3000:]
        a.wait_for_log(r"event=assigned", 30, count=3)  # its own, the split, all back
        a.keeps_running(6)  # twice stall_timeout_s
        loop.run_until_complete(txn.commit_transaction())
        committed_open = True
        ends = loop.run_until_complete(end_offsets(kafka, topic, 2))
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)) == ends,
                   20, "lag 0 after the transaction committed")  # fmt: skip
    finally:
        if not committed_open:
            loop.run_until_complete(txn.abort_transaction())
        loop.run_until_complete(txn.stop())
        a.terminate()
        code = a.wait(30)
        a.stop()
        if b is not None:
            b.stop()
        loop.close()
    assert code == 0, a.log()[-3000:]
    assert "commits_stalled" not in a.log()


@pytest.mark.parametrize(
    "kafka_client", [pytest.param("aiokafka", marks=LONG), "librdkafka"], indirect=True
)
def test_a_worker_restarted_at_an_open_transaction_is_not_stalled(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """The group's commit is already at the open transaction when the worker starts, so
    it consumes nothing: librdkafka's position stays unknown, and its source compared the
    high watermark with the commit. The watchdog ended it after stall_timeout_s, and the
    restart was the same worker again: a crash loop until the transaction ends."""
    topic, group = unique("tx-restart"), unique("g")
    loop = asyncio.new_event_loop()
    txn = loop.run_until_complete(open_transactions(kafka, topic, 1))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        runtime={"stall_timeout_s": 2, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    first = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)).get(0) == 5, 30,
                   "committed to the last stable offset")  # fmt: skip
    finally:
        first.terminate()
        first.wait(30)
        first.stop()
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log(r"event=assigned", 30)
        worker.keeps_running(5)  # past stall_timeout_s
    finally:
        worker.terminate()
        code = worker.wait(30)
        worker.stop()
        loop.run_until_complete(txn.abort_transaction())
        loop.run_until_complete(txn.stop())
        loop.close()
    assert code == 0, worker.log()[-3000:]
