"""kafka://TOPIC: each failed record produced with its original key and value plus error headers.

Original headers are kept; ours are prefixed `worker.` so `worker redrive`
can strip exactly them. They hold the source position, the condition, the
error (type, message, the `file:line` that raised, and the traceback's last
8000 characters, fewer if the topic's limit needs), the attempts and when it
failed; `worker dlq` lists them. Sends wait for acks from all in-sync replicas.

A record the topic cannot hold (larger than its `max.message.bytes`, read
from the broker) would be refused on every attempt and hold its partition
for ever. It goes instead as an envelope: the same key and headers, plus
`worker.truncated = true` and `worker.original_bytes`, and as value a JSON
document with the source position, the error and the first bytes of the
value (base64). That is an explicit, counted rule
(`worker_dead_letter_truncated_total`), logged once per record.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from prometheus_client import Counter

from worker.destinations.base import DestinationError, FailureEvent
from worker.encoding import b64, json_position
from worker.errors import StartError
from worker.records import Record
from worker.sources.kafka.preflight import described, servers_of, topics_problem

log = logging.getLogger("worker.destinations.kafka")

HEADER_PREFIX = "worker."
#: Kafka's default `message.max.bytes`, used until the topic's own limit is known.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: What a record costs on the wire beyond key, value and headers (batch and record framing).
RECORD_OVERHEAD_BYTES = 256
#: How much of an oversize value the envelope keeps.
ENVELOPE_VALUE_PREFIX_BYTES = 4096
#: How much of a traceback the headers keep: its end, where the raising frames are.
TRACEBACK_HEADER_CHARS = 8000
#: The producer itself never refuses by size: the topic's limit decides, checked here.
PRODUCER_MAX_REQUEST_BYTES = 256 * 1024 * 1024


def _text(value: str) -> bytes:
    """Header text as UTF-8; a lone surrogate (from a handler's message) becomes "?"."""
    return value.encode("utf-8", "replace")


def error_headers(event: FailureEvent, r: Record) -> list[tuple[str, bytes]]:
    fields = {
        "source.topic": r.topic,
        "source.partition": str(r.partition),
        "source.offset": str(r.position),
        "source.timestamp_ms": str(r.timestamp_ms),
        "condition": event.condition,
        "error.type": event.error_type,
        "error.message": event.error_message[:1000],
        "error.at": event.where,
        "error.traceback": event.traceback[-TRACEBACK_HEADER_CHARS:],
        "attempts": str(event.attempts),
        "failed_at_ms": str(event.failed_at_ms),
    }
    return [(HEADER_PREFIX + k, _text(v)) for k, v in fields.items()]


def wire_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    header_bytes = sum(len(k.encode()) + len(v or b"") for k, v in headers)
    return len(key or b"") + len(value or b"") + header_bytes + RECORD_OVERHEAD_BYTES


def fit_traceback(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> list[tuple[str, bytes]] | None:
    """`headers` with the traceback header cut (its end kept, whole characters) so that the
    record fits in `limit`; None if it does not fit even without it. The traceback is the
    one header of any size: kept whole, it made records (and their envelopes) the topic
    refused on every attempt."""
    over = wire_size(key, value, headers) - limit
    if over <= 0:
        return headers
    name = HEADER_PREFIX + "error.traceback"
    fitted = []
    for k, v in headers:
        if k == name and over > 0:
            keep = len(v) - over
            if keep < 0:
                return None
            v = v[len(v) - keep :].decode("utf-8", "ignore").encode()  # from a whole character
            over = 0
        fitted.append((k, v))
    return fitted if over <= 0 else None


def envelope(event: FailureEvent, r: Record, limit: int) -> bytes:
    """The value written in place of a record the topic cannot hold."""
    value = r.value or b""
    return orjson.dumps(
        {
            "truncated": True,
            "reason": f"record of {len(value)} bytes is over the topic's limit of {limit}",
            "source": event.source,
            "topic": r.topic,
            "partition": event.partition,
            "position": json_position(r.position),  # a sequence number past 64 bits: a string
            "condition": event.condition,
            "error": {"type": event.error_type, "message": event.error_message[:1000]},
            "original_bytes": len(value),
            "value_prefix": b64(value[:ENVELOPE_VALUE_PREFIX_BYTES]),
        }
    )


class KafkaDestination:
    def __init__(
        self,
        topic: str,
        connection: dict[str, Any],
        timeout_s: float,
        truncated: Counter,
        connect_timeout_s: float = 60,
    ) -> None:
        self.topic = topic
        self.name = f"kafka://{topic}"
        self._connection = connection
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._truncated = truncated.labels(self.name)
        self._producer: AIOKafkaProducer | None = None
        self._max_bytes: int | None = None

    async def check(self) -> None:
        """The broker answers (waited for) and has the topic: a dead-letter topic that does
        not exist would fail every send, each after a timeout, long after the start."""
        problem = await topics_problem(
            self._connection, [self.topic], self._connect_timeout_s,
            f"errors.on_failure {self.name}", "topic ",
        )  # fmt: skip
        if problem is not None:
            raise StartError(problem)

    async def start(self) -> None:
        await self.check()
        self._producer = AIOKafkaProducer(
            **self._connection,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self._timeout_s * 1000),
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        )
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            servers = ",".join(map(str, self._connection.get("bootstrap_servers", ())))
            raise StartError(
                f"errors.on_failure kafka://{self.topic}: cannot connect to {servers}: {exc}"
            ) from None

    async def send(self, event: FailureEvent) -> None:
        assert self._producer is not None, "start() first"
        try:
            async with asyncio.timeout(self._timeout_s):
                limit = await self._limit()
                acks = []
                for r in event.records:
                    key, value, headers = self._message(event, r, limit)
                    acks.append(await self._producer.send(self.topic, value, key=key,
                                                          headers=headers))  # fmt: skip
                results = await asyncio.gather(*acks, return_exceptions=True)
                refused = [
                    r for r, res in zip(event.records, results, strict=True) if _too_large(res)
                ]
                for res in results:
                    if isinstance(res, BaseException) and not _too_large(res):
                        raise res
                for r in refused:  # the estimate was short: the broker's word decides
                    _, value, headers = self._envelope(event, r, limit)
                    await (await self._producer.send(self.topic, value, key=r.key,
                                                     headers=headers))  # fmt: skip
        except (KafkaError, TimeoutError) as exc:
            reason = failure_reason(exc, servers_of(self._connection), self._timeout_s)
            raise DestinationError(f"{self.name}: {reason}") from exc

    def _message(
        self, event: FailureEvent, r: Record, limit: int
    ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        headers = fit_traceback(r.key, r.value, [*r.headers, *error_headers(event, r)], limit)
        if headers is not None:
            return r.key, r.value, headers
        return self._envelope(event, r, limit)

    def _envelope(
        self, event: FailureEvent, r: Record, limit: int
    ) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        self._truncated.inc()
        log.warning(
            "event=dead_letter_truncated partition=%s position=%s original_bytes=%d "
            "limit_bytes=%d destination=%s note='the record is over the topic limit: an "
            "envelope with its position and error was written instead'",
            event.partition, r.position, len(r.value or b""), limit, self.name,
        )  # fmt: skip
        headers = [
            *error_headers(event, r),
            (HEADER_PREFIX + "truncated", b"true"),
            (HEADER_PREFIX + "original_bytes", str(len(r.value or b"")).encode()),
        ]
        value = envelope(event, r, limit)
        return r.key, value, fit_traceback(r.key, value, headers, limit) or headers

    async def _limit(self) -> int:
        """The topic's `max.message.bytes`, read once it can be (the topic may appear later)."""
        if self._max_bytes is None:
            self._max_bytes = await self._read_limit()
        return self._max_bytes or DEFAULT_MAX_MESSAGE_BYTES

    async def _read_limit(self) -> int | None:
        admin = AIOKafkaAdminClient(**self._connection)
        try:
            await admin.start()
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic)]
            )
        except KafkaError:
            return None  # unknown for now: the default, and try again on the next send
        finally:
            await admin.close()
        for error_code, _, _, _, entries in response.resources:
            if error_code:
                return None
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1]:
                    return int(entry[1])
        return None

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


def failure_reason(exc: BaseException, servers: str, timeout_s: float) -> str:
    """The error as a line that says something even when its message is empty.

    `asyncio.timeout` raises a bare TimeoutError: `destination_failed` said only
    "TimeoutError: ", so what timed out, and where, is said here.
    """
    text = described(exc)
    if isinstance(exc, TimeoutError) and text == type(exc).__name__:
        return (
            f"TimeoutError: no acknowledgement from {servers} within "
            f"errors.on_failure_timeout_s = {timeout_s:g} s"
        )
    if text == type(exc).__name__:
        return f"{text}: no message (the client's log lines above say more)"
    return text


def _too_large(result: Any) -> bool:
    return isinstance(result, MessageSizeTooLargeError | RecordTooLargeError)
