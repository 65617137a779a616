"""Attacks on reading past a deleted checkpoint with the broker's own deletion and
cleaning, not `DeleteRecords`: time retention on tiny segments while the group is down,
a compacted topic whose holes must not be counted lost, and a transactional topic
(aborted transactions, markers, read_committed) cut inside an aborted transaction. On a
Kafka 4 broker of the module's own with a fast log cleaner and retention check, on both
clients and librdkafka's KIP-848 protocol (`group_protocol = "consumer"`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from scripts import kafka_broker
from tests.integration import kafka_helpers
from tests.integration.expiry_helpers import (
    commit_at,
    delete_to,
    expired_lines,
    expired_metric,
    log_starts,
    uncovered,
)
from tests.integration.kafka_helpers import (
    LONG,
    WorkerProcess,
    committed,
    end_offsets,
    eventually,
    long_run,
    read_handled,
    unique,
    wait_for_group_coordinator,
    write_config,
)

pytestmark = pytest.mark.kafka
#: (client, group protocol): aiokafka, librdkafka eager, librdkafka KIP-848.
#: CI runs librdkafka on the KIP-848 protocol: its gap rule (`expiry.Continuity`) is what a
#: compacted or transactional topic could fool (aiokafka counts only offsets out of
#: range); the other two with STREAMWORKER_LONG=1.
MODES = [
    pytest.param(("aiokafka", "classic"), id="aiokafka", marks=LONG),
    pytest.param(("librdkafka", "classic"), id="librdkafka", marks=LONG),
    pytest.param(("librdkafka", "consumer"), id="librdkafka-kip848"),
]


@pytest.fixture(scope="module")
def kafka4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    extra = {
        "log.cleaner.backoff.ms": "200",
        "log.retention.check.interval.ms": "300",
        "log.segment.delete.delay.ms": "0",
        "log.cleaner.min.compaction.lag.ms": "0",
    }
    broker = kafka_broker.start(tmp_path_factory.mktemp("kafka4-expiry"), extra=extra,
                                version=kafka_broker.KAFKA4_VERSION)  # fmt: skip
    try:
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    client, protocol = request.param
    kafka_helpers.client["name"] = client
    try:
        yield protocol
    finally:
        kafka_helpers.client["name"] = "aiokafka"


def source(protocol: str, **more: object) -> dict[str, object]:
    out: dict[str, object] = {"starting_position": "trim_horizon", **more}
    if protocol == "consumer":
        out.update(group_protocol="consumer", session_timeout_ms=None,
                   heartbeat_interval_ms=None)  # fmt: skip
    return out


async def topic_with(bootstrap: str, name: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs)])
    finally:
        await admin.close()
    for _ in range(100):
        try:
            await end_offsets(bootstrap, name, 1)
            return
        except Exception:  # no leader yet
            await asyncio.sleep(0.1)


async def send(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    try:
        for key, value in values:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


def run_to_the_end(config: Path, tmp_path: Path, bootstrap: str, group: str, topic: str,
                   ) -> tuple[WorkerProcess, dict[int, int]]:  # fmt: skip
    ends = asyncio.run(end_offsets(bootstrap, topic, 1))
    worker = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: committed(bootstrap, group, topic) == ends, timeout_s=40,
                   what=f"committed to {ends}")  # fmt: skip
    except BaseException:
        worker.stop()
        raise
    return worker, ends


@long_run
def test_time_retention_past_a_stopped_groups_checkpoint(kafka4: str, mode: str, tmp_path: Path):
    """The group was down while retention (1 s, 100 ms segments) deleted past its
    checkpoint; records written since are still in the log. Every offset is handled or
    counted, counted once, exactly what the log start moved past the checkpoint."""
    topic, group = unique("ret"), unique("g")
    asyncio.run(topic_with(kafka4, topic, {"retention.ms": "1000", "segment.ms": "100",
                                            "file.delete.delay.ms": "0"}))  # fmt: skip
    asyncio.run(send(kafka4, topic, [(None, b"old")] * 30))
    asyncio.run(commit_at(kafka4, topic, group, {0: 10}))
    eventually(lambda: asyncio.run(log_starts(kafka4, topic, 1))[0] > 10, timeout_s=30,
               what="retention past the checkpoint")  # fmt: skip
    retention = {"retention.ms": "3600000"}  # what is left stays for the worker's run
    asyncio.run(alter(kafka4, topic, retention))
    asyncio.run(send(kafka4, topic, [(None, b"new")] * 20))
    start = asyncio.run(log_starts(kafka4, topic, 1))[0]
    config = write_config(tmp_path / "w.toml", kafka4, topic, group, source=source(mode))
    worker, ends = run_to_the_end(config, tmp_path, kafka4, group, topic)
    try:
        lines = expired_lines(worker.log(), topic)
        assert lines == [(0, 10, start, start - 10)], lines
        assert uncovered(read_handled(tmp_path), lines, {0: 10}, ends) == {}
        assert expired_metric(worker.metrics_port, topic) == {0: start - 10}
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


async def alter(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def present(bootstrap: str, topic: str) -> list[int]:
    """The offsets of the records the log still holds (read_uncommitted, from its start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[int] = []
        while (await consumer.position(tp)) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(r.offset for r in records)
        return out
    finally:
        await consumer.stop()


def test_a_compacted_topics_holes_are_not_counted_lost(kafka4: str, mode: str, tmp_path: Path):
    """cleanup.policy=compact with 100 ms segments: the cleaner removes superseded
    records behind the group's checkpoint and past it. The holes are not deletions (the
    log start stays 0): nothing is counted, every record left past the checkpoint is
    handled, the end is committed."""
    topic, group = unique("compact"), unique("g")
    configs = {"cleanup.policy": "compact", "segment.ms": "100",
               "min.cleanable.dirty.ratio": "0.001", "delete.retention.ms": "0"}  # fmt: skip
    asyncio.run(topic_with(kafka4, topic, configs))
    asyncio.run(send(kafka4, topic, [(b"k%d" % (i % 3), b"%d" % i) for i in range(60)]))
    asyncio.run(commit_at(kafka4, topic, group, {0: 5}))
    deadline = time.monotonic() + 30
    left = asyncio.run(present(kafka4, topic))
    while len(left) > 40 and time.monotonic() < deadline:
        asyncio.run(send(kafka4, topic, [(b"roll", b"x")]))  # rolls the active segment
        time.sleep(0.3)
        left = asyncio.run(present(kafka4, topic))
    assert len(left) < 40, "the cleaner did not run"
    assert asyncio.run(log_starts(kafka4, topic, 1))[0] == 0
    config = write_config(tmp_path / "w.toml", kafka4, topic, group, source=source(mode))
    worker, _ = run_to_the_end(config, tmp_path, kafka4, group, topic)
    try:
        left = [o for o in asyncio.run(present(kafka4, topic)) if o >= 5]
        assert set(read_handled(tmp_path)[0]) >= set(left)
        assert expired_lines(worker.log(), topic) == []
        assert expired_metric(worker.metrics_port, topic) == {}
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


async def transactions(bootstrap: str, topic: str) -> None:
    """commit 0-19, marker 20; abort 21-40, marker 41; commit 42-61, marker 62."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        for commit in (True, False, True):
            await producer.begin_transaction()
            for i in range(20):
                await producer.send_and_wait(topic, b"%d" % i, partition=0)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()


@pytest.mark.parametrize("cut", [30, pytest.param(45, marks=LONG)])
def test_a_transactional_topic_cut_inside_or_after_an_aborted_transaction(
    kafka4: str, mode: str, tmp_path: Path, cut: int
):
    """read_committed, checkpoint 10 (inside a committed transaction), the log cut inside
    the aborted one (30) or inside the last committed one (45): the offsets counted are
    the offsets deleted (markers and aborted records among them), once; every committed
    record left past the checkpoint is handled; the end (past the last marker) is
    committed."""
    topic, group = unique("txn"), unique("g")
    asyncio.run(topic_with(kafka4, topic, {}))
    asyncio.run(transactions(kafka4, topic))
    asyncio.run(commit_at(kafka4, topic, group, {0: 10}))
    asyncio.run(delete_to(kafka4, topic, {0: cut}))
    config = write_config(tmp_path / "w.toml", kafka4, topic, group,
                          source=source(mode, isolation_level="read_committed"))  # fmt: skip
    worker, ends = run_to_the_end(config, tmp_path, kafka4, group, topic)
    try:
        assert ends == {0: 63}
        lines = expired_lines(worker.log(), topic)
        assert lines == [(0, 10, cut, cut - 10)], lines
        assert sorted(read_handled(tmp_path)[0]) == list(range(max(cut, 42), 62))
        assert expired_metric(worker.metrics_port, topic) == {0: cut - 10}
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
