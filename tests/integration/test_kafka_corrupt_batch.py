"""A record batch that fails its CRC, on the real broker: nothing is skipped, nothing lost.

The fault is injected on disk: the broker is stopped cleanly (SIGTERM, so a restart runs
no log recovery and serves the bytes as they are), one byte inside a record of a batch
of the corrupt partition is flipped in its segment file, and the broker is started again.

The first version lost records of healthy partitions: aiokafka drains several partitions
in one `getmany`; the corrupt batch's `CorruptRecordException` was raised after another
partition's records had been drained and its position moved past them, and the worker
(a `poll_failed`, counted, then fetching on) never saw them and committed past them.
The good records before the corrupt batch were never delivered either (thrown away with
each raise, the partition stuck at its first offset). librdkafka skipped the batch and
what followed it (a reset to the end, from a garbage offset read past the batch).
Both fixed in the source's package: `refetch` (aiokafka), `librdkafka_corrupt`.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from scripts import kafka_broker
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    end_offsets,
    eventually,
    handled_by,
    unique,
    wait_for_group_coordinator,
    write_config,
)
from worker.sources.kafka.refetch import RETRY_S

pytestmark = pytest.mark.kafka

CORRUPT, HEALTHY = 1, 0  # partitions
BATCH = 3  # records per batch of the corrupt partition: good [0, 3), corrupt [3, 6), [6, 9)


async def produce_batches(bootstrap: str, topic: str) -> None:
    """Three batches to CORRUPT (one send and flush each: separate record batches), and
    records to HEALTHY."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for b in range(3):
            for i in range(BATCH):
                await producer.send(topic, f'{{"b":{b},"i":{i}}}'.encode(), partition=CORRUPT)
            await producer.flush()
        for i in range(20):
            await producer.send(topic, f'{{"h":{i}}}'.encode(), partition=HEALTHY)
        await producer.flush()
    finally:
        await producer.stop()


def batches(segment: bytes) -> list[tuple[int, int, int]]:
    """(base offset, start, end) of each record batch of a segment file."""
    out, at = [], 0
    while at + 12 <= len(segment):
        base, length = struct.unpack_from(">qi", segment, at)
        out.append((base, at, at + 12 + length))
        at += 12 + length
    return out


def corrupt_second_batch(broker: kafka_broker.Cluster, topic: str) -> int:
    """Flip a byte in the last record's value of the batch at offset BATCH; its offset."""
    (node,) = broker.nodes
    (log,) = (node.workdir / "data" / f"{topic}-{CORRUPT}").glob("*.log")
    data = bytearray(log.read_bytes())
    (base, _, end), *_ = [b for b in batches(bytes(data)) if b[0] == BATCH]
    data[end - 3] ^= 0x01  # inside the value (a record ends: value, headers count 0)
    log.write_bytes(bytes(data))
    return base


async def trickle(bootstrap: str, topic: str, count: int = 150) -> None:
    """Records to HEALTHY, one at a time, while the worker runs: its fetches keep draining
    HEALTHY in the same `getmany` as the corrupt partition (aiokafka shuffles the order of
    the partitions in each fetch request, so either comes first)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(count):
            await producer.send_and_wait(topic, b'{"t":%d}' % n, partition=HEALTHY)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()


async def send(bootstrap: str, topic: str, partition: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"late":1}', partition=partition)
    finally:
        await producer.stop()


async def commit_at_start(bootstrap: str, group: str, topic: str) -> None:
    """The group's checkpoint at 0 on both partitions (a group that ran before): reading
    starts there, and `starting_position = "latest"` is only what a reset goes to."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (HEALTHY, CORRUPT)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()


def test_a_corrupt_batch_loses_nothing_and_skips_nothing(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    """Failed before the fix on aiokafka: 126 of 195 records of the healthy partition were
    never handled and committed past; none of the corrupt partition's good records came.
    On librdkafka (5 runs of 6) the partition was reset past the batch to its end (by a
    garbage offset read after the batch: `librdkafka_corrupt`), and the record produced
    next was handled and committed past the 6 records never handled."""
    bootstrap, topic, group = broker.bootstrap, unique("crc"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, 2))
    asyncio.run(produce_batches(bootstrap, topic))
    (node,) = broker.nodes
    broker.stop_node(node.node_id, kafka_broker.signal.SIGTERM)  # clean: no log recovery
    bad = corrupt_second_batch(broker, topic)
    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(bootstrap))

    asyncio.run(commit_at_start(bootstrap, group, topic))
    config = write_config(tmp_path / "w.toml", bootstrap, topic, group,
                          source={"starting_position": "latest"})  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log("event=assigned", timeout_s=60)
        asyncio.run(trickle(bootstrap, topic))
        ends = asyncio.run(end_offsets(bootstrap, topic, 2))
        eventually(lambda: committed(bootstrap, group, topic).get(HEALTHY) == ends[HEALTHY],
                   timeout_s=20, what="the healthy partition committed to its end")  # fmt: skip
        handled = handled_by(tmp_path, worker)
        missing = set(range(ends[HEALTHY])) - handled.get(HEALTHY, set())
        assert not missing, f"healthy: {len(missing)} of {ends[HEALTHY]} lost: {sorted(missing)}"
        # The corrupt partition: its good batch handled and committed, then it stays at
        # the corrupt batch (nothing of it or after it handled), saying so.
        eventually(lambda: committed(bootstrap, group, topic).get(CORRUPT) == bad,
                   timeout_s=20, what="the good batch before the bad one committed")  # fmt: skip
        worker.wait_for_log(r"event=fetch_stuck|event=fetch_error", timeout_s=20)  # it tried
        # A record after the bad batch: never handled while the partition waits at it.
        asyncio.run(send(bootstrap, topic, CORRUPT))
        asyncio.run(send(bootstrap, topic, HEALTHY))
        eventually(lambda: committed(bootstrap, group, topic).get(HEALTHY) == ends[HEALTHY] + 1,
                   timeout_s=20, what="the healthy partition's next record committed")  # fmt: skip
        time.sleep(2 * RETRY_S)  # a window for the stuck partition's next tries (none hands out)
        assert handled_by(tmp_path, worker).get(CORRUPT) == set(range(bad))
        assert committed(bootstrap, group, topic).get(CORRUPT) == bad
        stuck = f"event=fetch_stuck partition={topic}-{CORRUPT} offset={bad} "
        assert worker.log().count(stuck) == 1  # warned once (then folded)
        if kafka_client == "aiokafka":  # counted
            polls = [line for line in worker.metrics_text().splitlines()
                     if line.startswith('worker_poll_errors_total{source="kafka"}')]  # fmt: skip
            assert polls and float(polls[0].split()[-1]) >= 2
        worker.terminate()
        assert worker.wait() == 0, worker.log()[-3000:]
    finally:
        worker.stop()
