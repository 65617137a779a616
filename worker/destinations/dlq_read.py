"""Reading back what was dead-lettered: a DLQ topic up to its end, or a file destination.

Both `worker dlq` (listing) and `worker redrive` (replaying) read a DLQ topic
the same way: every partition from its start, or from the first record at
or after `--since`, up to the end offsets taken when the read starts, so a
run ends even while records keep arriving. No consumer group is joined and
nothing is committed.

A listed entry is one dead-lettered record with what its `worker.*` headers
(Kafka) or its event line (file) say about it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from worker.destinations.kafka import HEADER_PREFIX
from worker.destinations.topics import connection_of, topic_partitions
from worker.encoding import unb64


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead-lettered record, as `worker dlq` shows it."""

    failed_at_ms: int | None
    source_position: str
    key: str | None
    condition: str
    attempts: int | None
    error_type: str
    error_message: str
    at: str
    #: Where the entry itself is: `topic-partition@offset` of the DLQ, or `path:line`.
    dlq_position: str
    truncated: bool = False
    traceback: str = ""

    def document(self) -> dict[str, Any]:
        return asdict(self)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


async def records_to_end(
    bootstrap: Sequence[str] | dict[str, Any], topic: str, since_ms: int | None = None
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The topic's records from the start (or `since_ms`) to its end as the read starts."""
    tps = await topic_partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(**connection_of(bootstrap), enable_auto_commit=False)
    await consumer.start()
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
        while remaining:
            chunks = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in chunks.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        break
                    yield r
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


def kafka_entry(r: ConsumerRecord[bytes, bytes]) -> DeadLetterEntry:
    """What the `worker.*` headers of a DLQ record say (absent ones are empty)."""
    h = {k.removeprefix(HEADER_PREFIX): _text(v) or "" for k, v in r.headers
         if k.startswith(HEADER_PREFIX)}  # fmt: skip
    failed_at, attempts = h.get("failed_at_ms", ""), h.get("attempts", "")
    source = f"{h.get('source.topic', '?')}-{h.get('source.partition', '?')}"
    return DeadLetterEntry(
        failed_at_ms=int(failed_at) if failed_at.isdecimal() else None,
        source_position=f"{source}@{h.get('source.offset', '?')}",
        key=_text(r.key),
        condition=h.get("condition", ""),
        attempts=int(attempts) if attempts.isdecimal() else None,
        error_type=h.get("error.type", ""),
        error_message=h.get("error.message", ""),
        at=h.get("error.at", ""),
        dlq_position=f"{r.topic}-{r.partition}@{r.offset}",
        truncated=h.get("truncated") == "true",
        traceback=h.get("error.traceback", ""),
    )


def _event(path: Path, number: int, line: bytes) -> dict[str, Any]:
    """One event line, checked for the shape `file_entries` reads: a file named on the
    command line may hold anything, and a wrong line is one error line, not a traceback."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not a dead-letter event line ({exc})") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("error"), dict)
        and isinstance(event.get("records"), list)
        and all(isinstance(r, dict) for r in event["records"])
    ):
        raise ValueError(
            f"{path}:{number}: not a dead-letter event line (an object with an 'error' "
            "object and a 'records' list of objects)"
        )
    return event


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def file_entries(path: Path, since_ms: int | None = None) -> Iterator[DeadLetterEntry]:
    """Each record of each event line of a `file://` destination, failed at or after
    `since_ms`. ValueError names a line that is not an event."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            event = _event(path, number, line)
            error, failed_at = event["error"], _int(event.get("failed_at_ms"))
            if since_ms is not None and (failed_at or 0) < since_ms:
                continue
            for r in event["records"]:
                try:
                    key = _text(unb64(r.get("key")))  # base64, or None
                except (ValueError, TypeError):
                    raise ValueError(f"{path}:{number}: a record's key is not base64") from None
                yield DeadLetterEntry(
                    failed_at_ms=failed_at,
                    source_position=f"{event.get('partition', '?')}@{r.get('offset', '?')}",
                    key=key,
                    condition=_str(event.get("condition")),
                    attempts=_int(event.get("attempts")),
                    error_type=_str(error.get("type")),
                    error_message=_str(error.get("message")),
                    at=_str(error.get("at")),
                    dlq_position=f"{path}:{number}",
                    traceback=_str(error.get("traceback")),
                )
