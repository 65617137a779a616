"""`worker redrive`: replay dead-lettered records from a DLQ topic back to a topic.

Reads the DLQ partitions from the start (or from `--since`) up to the end
offsets taken when it starts, so records dead-lettered meanwhile wait for the
next run. Each record keeps its key, value and original headers; the
`worker.*` error headers are stripped. It joins no consumer group and
commits nothing: running it twice sends twice, so use `--since` to pick up
where an earlier run stopped (it prints the last timestamp it moved).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.destinations.kafka import HEADER_PREFIX
from worker.sources.kafka.preflight import (
    AuthRefused,
    BrokerUnreachable,
    described,
    servers_of,
    topics_missing_at,
)

#: A command run by hand: a broker that does not answer soon is reported, not waited for.
REDRIVE_CONNECT_TIMEOUT_S = 5.0


@dataclass
class RedriveReport:
    moved: int = 0
    last_timestamp_ms: int | None = None

    def moved_one(self, timestamp_ms: int) -> None:
        self.moved += 1
        self.last_timestamp_ms = max(self.last_timestamp_ms or 0, timestamp_ms)


def parse_since(text: str) -> int:
    """Epoch seconds or an ISO 8601 time, as epoch milliseconds."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        return int(datetime.fromisoformat(text).timestamp() * 1000)


def connection_of(bootstrap: Sequence[str] | dict[str, Any]) -> dict[str, Any]:
    """Client settings: a bootstrap list, or the full settings (security included)."""
    if isinstance(bootstrap, dict):
        return bootstrap
    return {"bootstrap_servers": list(bootstrap)}


async def topic_partitions(
    bootstrap: Sequence[str] | dict[str, Any], topic: str
) -> list[TopicPartition]:
    """The topic's partitions from the broker; ValueError if there is no such topic."""
    admin = AIOKafkaAdminClient(**connection_of(bootstrap))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code") or not described.get("partitions"):
        raise ValueError(f"kafka://{topic}: no such topic")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


def kafka_topic(url: str) -> str:
    if not url.startswith("kafka://") or len(url) == len("kafka://"):
        raise ValueError(f"{url!r}: expected kafka://TOPIC")
    return url.removeprefix("kafka://")


async def redrive(
    bootstrap: Sequence[str] | dict[str, Any],
    from_topic: str,
    to_topic: str,
    since_ms: int | None = None,
    limit: int | None = None,
    connect_timeout_s: float = REDRIVE_CONNECT_TIMEOUT_S,
) -> RedriveReport:
    connection = connection_of(bootstrap)
    await _both_exist(connection, from_topic, to_topic, connect_timeout_s)
    try:
        return await _move(connection, from_topic, to_topic, since_ms, limit)
    except KafkaError as exc:  # one line for the operator, not the client's traceback
        raise ValueError(f"redrive kafka://{from_topic} -> kafka://{to_topic}: "
                         f"{described(exc)}") from None  # fmt: skip


async def _both_exist(
    connection: dict[str, Any], from_topic: str, to_topic: str, timeout_s: float
) -> None:
    """Before reading anything: a missing target would fail each send after a timeout."""
    try:
        missing = await topics_missing_at(connection, [from_topic, to_topic], timeout_s, "redrive")
    except BrokerUnreachable as exc:
        raise ValueError(f"redrive: {exc}") from None
    except AuthRefused as exc:
        raise ValueError(f"redrive: {exc} refused the credentials") from None
    if missing:
        raise ValueError(
            f"redrive: {', '.join('kafka://' + m for m in missing)} at "
            f"{servers_of(connection)}: create it first, or correct the name"
        )


async def _move(
    connection: dict[str, Any],
    from_topic: str,
    to_topic: str,
    since_ms: int | None,
    limit: int | None,
) -> RedriveReport:
    tps = await topic_partitions(connection, from_topic)
    consumer = AIOKafkaConsumer(**connection, enable_auto_commit=False)
    producer = AIOKafkaProducer(**connection, acks="all")
    await consumer.start()
    await producer.start()
    report = RedriveReport()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if since_ms is None:
            # An explicit seek: seek_to_beginning() right after assign() can lose to the
            # consumer's own initial offset reset.
            for tp, offset in (await consumer.beginning_offsets(tps)).items():
                consumer.seek(tp, offset)
        else:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        acks = []
        while remaining and (limit is None or report.moved < limit):
            chunks = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in chunks.items():
                for r in records:
                    if r.offset >= ends[tp] or (limit is not None and report.moved >= limit):
                        break
                    headers = [(k, v) for k, v in r.headers if not k.startswith(HEADER_PREFIX)]
                    acks.append(await producer.send(to_topic, r.value, key=r.key, headers=headers))
                    report.moved_one(r.timestamp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
        await consumer.stop()
    return report
