"""Shared by the expired-offsets adversary tests: building a group behind a deleted log
start on the real broker, and checking that every offset was handled or counted lost."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.integration.kafka_helpers import create_topic, scrape

LINE = re.compile(
    r"event=offsets_expired partition=(?P<topic>\S+)-(?P<p>\d+) position=(?P<pos>\d+) "
    r"oldest=(?P<old>\d+) offsets=(?P<n>\d+)"
)


async def produce(bootstrap: str, topic: str, per_partition: int, partitions: int,
                  size: int = 10) -> None:  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        pad = b"x" * size
        sent = [await producer.send(topic, pad, partition=p)
                for _ in range(per_partition) for p in range(partitions)]  # fmt: skip
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def commit_at(bootstrap: str, topic: str, group: str, offsets: dict[int, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def delete_to(bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, p): RecordsToDelete(o) for p, o in offsets.items()}
        )
    finally:
        await admin.close()


async def log_starts(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def behind(bootstrap: str, topic: str, group: str, per_partition: int, partitions: int,
                 checkpoint: int, deleted_to: dict[int, int]) -> None:  # fmt: skip
    """`per_partition` records in each partition, the group committed at `checkpoint` on
    every partition, and the log deleted up to `deleted_to` (partition -> offset)."""
    await create_topic(bootstrap, topic, partitions)
    await produce(bootstrap, topic, per_partition, partitions)
    await commit_at(bootstrap, topic, group, dict.fromkeys(range(partitions), checkpoint))
    if deleted_to:
        await delete_to(bootstrap, topic, deleted_to)


def expired_lines(log: str, topic: str) -> list[tuple[int, int, int, int]]:
    """(partition, position, oldest, offsets) of each offsets_expired line of `topic`."""
    return [(int(m["p"]), int(m["pos"]), int(m["old"]), int(m["n"]))
            for m in LINE.finditer(log) if m["topic"] == topic]  # fmt: skip


def expired_metric(port: int, topic: str) -> dict[int, float]:
    out = {}
    for (name, labels), value in scrape(port).items():
        if name == "worker_offsets_expired_total":
            label = dict(labels)["partition"]
            if label.startswith(topic + "-"):
                out[int(label.rsplit("-", 1)[1])] = value
    return out


def uncovered(handled: dict[int, list[int]] | dict[int, set[int]], lines: list[tuple],
              start: dict[int, int], end: dict[int, int]) -> dict[int, list[int]]:  # fmt: skip
    """Offsets in [start, end) of each partition neither handled nor inside a range a
    line said was lost: records lost silently."""
    out = {}
    for p in end:
        seen = set(handled.get(p, ()))
        for lp, pos, old, _ in lines:
            if lp == p:
                seen.update(range(pos, old))
        gap = [o for o in range(start.get(p, 0), end[p]) if o not in seen]
        if gap:
            out[p] = gap[:5] + ([len(gap)] if len(gap) > 5 else [])
    return out


def path_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
