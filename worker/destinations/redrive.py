"""`worker redrive`: replay dead-lettered records from a DLQ topic back to a topic.

Reads the DLQ partitions from the start (or from `--since`) up to the end
offsets taken when it starts, so records dead-lettered meanwhile wait for the
next run. Each record keeps its key, value and original headers; the
`worker.*` error headers are stripped. It joins no consumer group and
commits nothing: running it twice sends twice, so use `--since` to pick up
where an earlier run stopped: it prints the `--since` that moves only what
was dead-lettered after the last record it moved. An envelope written for a
record too large for the DLQ (`worker.truncated`) is not moved, but counted
and named: it holds our JSON and the record's first bytes, not the record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.destinations.dlq_read import records_to_end
from worker.destinations.kafka import HEADER_PREFIX
from worker.destinations.topics import (
    SINCE_PREFIX,
    connection_of,
    kafka_topic,
    parse_since,
    topic_partitions,
)
from worker.sources.kafka.preflight import described, topics_problem

__all__ = ["RedriveReport", "kafka_topic", "parse_since", "redrive", "topic_partitions"]

#: A command run by hand: a broker that does not answer soon is reported, not waited for.
REDRIVE_CONNECT_TIMEOUT_S = 5.0


#: How many skipped envelopes' DLQ positions a report names.
SKIPPED_SHOWN = 5


@dataclass
class RedriveReport:
    moved: int = 0
    last_timestamp_ms: int | None = None
    #: Envelopes (`worker.truncated`) not moved: their value is not the record's.
    skipped: int = 0
    skipped_at: list[str] = field(default_factory=list)

    def skipped_one(self, dlq_position: str) -> None:
        self.skipped += 1
        if len(self.skipped_at) < SKIPPED_SHOWN:
            self.skipped_at.append(dlq_position)

    def moved_one(self, timestamp_ms: int) -> None:
        self.moved += 1
        self.last_timestamp_ms = max(self.last_timestamp_ms or 0, timestamp_ms)

    def next_since(self) -> str | None:
        """The `--since` of a next run that moves only records after the last one moved."""
        if self.last_timestamp_ms is None:
            return None
        return f"{SINCE_PREFIX}{self.last_timestamp_ms + 1}"


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
    problem = await topics_problem(
        connection, [from_topic, to_topic], timeout_s, "redrive", "kafka://", None
    )
    if problem is not None:
        raise ValueError(problem)


async def _move(
    connection: dict[str, Any],
    from_topic: str,
    to_topic: str,
    since_ms: int | None,
    limit: int | None,
) -> RedriveReport:
    producer = AIOKafkaProducer(**connection, acks="all")
    await producer.start()
    report = RedriveReport()
    try:
        acks = []
        records = records_to_end(connection, from_topic, since_ms)
        async with contextlib.aclosing(records):
            async for r in records:
                if limit is not None and report.moved >= limit:
                    break
                if (HEADER_PREFIX + "truncated", b"true") in r.headers:
                    # An envelope stands in for a record too large for the DLQ: its value
                    # is our JSON, and sent back it would reach the handler as a reading.
                    report.skipped_one(f"{r.topic}-{r.partition}@{r.offset}")
                    continue
                headers = [(k, v) for k, v in r.headers if not k.startswith(HEADER_PREFIX)]
                acks.append(await producer.send(to_topic, r.value, key=r.key, headers=headers))
                report.moved_one(r.timestamp)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return report
