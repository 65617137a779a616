"""A checkpoint the log deleted past: the worker reads on from the oldest record left,
says what was lost and counts it, on both Kafka clients, on the real broker.

The fault is the broker's own: `DeleteRecords` moves a partition's log start past the
group's committed offset, as retention does to a group whose workers were down. Before
the change, with `starting_position = "latest"` both clients reset such a partition to
its end: every record still in the log was skipped, committed past, and nothing said so
(aiokafka logged it at INFO, below the worker's level). With any starting position the
offsets the log deleted were never counted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.integration.expiry_helpers import behind, expired_lines, expired_metric, produce
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    eventually,
    read_handled,
    scrape,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka

RECORDS = 100  # per partition
CHECKPOINT = 10  # the group's committed offset on both partitions
DELETED_TO = 40  # partition 0's log start after DeleteRecords


async def behind_a_deleted_checkpoint(bootstrap: str, topic: str, group: str) -> None:
    """Two partitions of `RECORDS` each, `group` committed at `CHECKPOINT` on both, and
    partition 0's records below `DELETED_TO` deleted."""
    await create_topic(bootstrap, topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, b"r%d" % i, partition=p)
                for i in range(RECORDS) for p in (0, 1)]  # fmt: skip
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.commit({tp: CHECKPOINT for tp in tps})
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(DELETED_TO)})
    finally:
        await admin.close()


@pytest.mark.parametrize("start", ["latest", "trim_horizon"])
def test_a_deleted_checkpoint_reads_on_from_the_oldest_record_counting_the_loss(
    kafka: str, kafka_client: str, tmp_path: Path, start: str
):
    topic, group = unique("expired"), unique("g")
    asyncio.run(behind_a_deleted_checkpoint(kafka, topic, group))
    config = write_config(tmp_path / "w.toml", kafka, topic, group,
                          source={"starting_position": start})  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        done = {0: RECORDS, 1: RECORDS}
        eventually(lambda: committed(kafka, group, topic) == done, timeout_s=40,
                   what="committed to the end")  # fmt: skip
        handled = read_handled(tmp_path)
        assert sorted(handled[0]) == list(range(DELETED_TO, RECORDS)), "a record left was skipped"
        assert sorted(handled[1]) == list(range(CHECKPOINT, RECORDS))
        worker.wait_for_log(
            rf"event=offsets_expired partition={topic}-0 position={CHECKPOINT} "
            rf"oldest={DELETED_TO} offsets={DELETED_TO - CHECKPOINT}"
        )
        assert f"partition={topic}-1 position" not in worker.log()
        metrics = scrape(worker.metrics_port)
        series = {dict(labels)["partition"]: value for (name, labels), value in metrics.items()
                  if name == "worker_offsets_expired_total"}  # fmt: skip
        assert series == {f"{topic}-0": DELETED_TO - CHECKPOINT}
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


def test_a_log_deleted_to_its_end_is_counted_once_and_committed_past(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Every record gone (DeleteRecords to the high watermark) on both partitions, none
    written after: the loss is said and counted now, and the group's offset moves to the
    end, so a second run neither counts it again nor shows a lag that never ends. Two
    partitions: aiokafka distrusted every position at each reset, so only the partition
    reset last was committed (seen with four partitions and a rebalance)."""
    topic, group = unique("gone"), unique("g")
    asyncio.run(behind(kafka, topic, group, 100, 2, 10, {0: 100, 1: 100}))
    config = write_config(tmp_path / "w.toml", kafka, topic, group,
                          source={"starting_position": "trim_horizon"})  # fmt: skip
    first = WorkerProcess(config, tmp_path)
    try:
        first.wait_for_log("event=assigned")
        # Said within a few fetches (librdkafka said it only once records came)
        first.wait_for_log(r"event=offsets_expired partition=\S+ position=10 oldest=100",
                           timeout_s=20, count=2)  # fmt: skip
        eventually(lambda: committed(kafka, group, topic) == {0: 100, 1: 100}, timeout_s=20,
                   what="the end committed")  # fmt: skip
        assert expired_metric(first.metrics_port, topic) == {0: 90, 1: 90}
        first.terminate()
        assert first.wait() == 0
    finally:
        first.stop()
    second = WorkerProcess(config, tmp_path)
    try:
        second.wait_for_log("event=assigned")
        asyncio.run(produce(kafka, topic, 5, 2))
        eventually(lambda: committed(kafka, group, topic) == {0: 105, 1: 105}, timeout_s=20,
                   what="the new records committed")  # fmt: skip
        handled = read_handled(tmp_path, second.pid)
        new = list(range(100, 105))
        assert {p: sorted(o) for p, o in handled.items()} == {0: new, 1: new}
        assert expired_lines(second.log(), topic) == [], "counted again"
        second.terminate()
        assert second.wait() == 0
    finally:
        second.stop()
