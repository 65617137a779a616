"""Records of transactions a producer aborted never reach a handler (`source.isolation_level`,
default read_committed), on both Kafka clients, on the real broker.

aiokafka's own default is read_uncommitted: before the worker set the level, a topic
written by a transactional producer (another stream worker's exactly-once outputs, a
Kafka Streams app) handed the handler every record of every aborted transaction.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    eventually,
    read_handled,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka


async def write_with_an_aborted_transaction(bootstrap: str, topic: str) -> tuple[set[int], int]:
    """Committed, aborted, plain and committed again, five records each: the offsets of
    the records a read_committed reader gets, and of the aborted ones (how many)."""
    await create_topic(bootstrap, topic, 1)
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await txn.start()
    await plain.start()
    readable: set[int] = set()
    aborted = 0
    try:
        for kind in ("commit", "abort", "plain", "commit"):
            producer = plain if kind == "plain" else txn
            if kind != "plain":
                await txn.begin_transaction()
            sent = [await producer.send(topic, f"{kind}-{i}".encode()) for i in range(5)]
            offsets = {meta.offset for meta in await asyncio.gather(*sent)}
            if kind == "abort":
                await txn.abort_transaction()
                aborted += len(offsets)
                continue
            if kind == "commit":
                await txn.commit_transaction()
            readable |= offsets
    finally:
        await txn.stop()
        await plain.stop()
    return readable, aborted


def test_records_of_an_aborted_transaction_are_never_handled(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, group = unique("txn-in"), unique("g")
    readable, aborted = asyncio.run(write_with_an_aborted_transaction(kafka, topic))
    assert len(readable) == 15 and aborted == 5
    worker = WorkerProcess(write_config(tmp_path / "w.toml", kafka, topic, group), tmp_path)
    try:
        # In order per partition: once the last readable record is handled, every
        # record before it was handled or skipped.
        eventually(lambda: readable <= set(read_handled(tmp_path)[0]), what="all handled")
        assert set(read_handled(tmp_path)[0]) == readable, "aborted records were handled"
        # Committed through the last record and past the commit marker after it (never
        # delivered: passed once the partition settled, see `runtime.settle`).
        end = max(readable) + 2
        eventually(lambda: committed(kafka, group, topic).get(0, 0) == end, what="committed")
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
