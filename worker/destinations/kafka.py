"""kafka://TOPIC: each failed record produced with its original key and value plus error headers.

Original headers are kept; ours are prefixed `worker.` so `worker redrive`
can strip exactly them. Sends wait for acks from all in-sync replicas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.destinations.base import DestinationError, FailureEvent

HEADER_PREFIX = "worker."


def error_headers(event: FailureEvent, r: Any) -> list[tuple[str, bytes]]:
    fields = {
        "source.topic": r.topic,
        "source.partition": str(r.partition),
        "source.offset": str(r.position),
        "source.timestamp_ms": str(r.timestamp_ms),
        "condition": event.condition,
        "error.type": event.error_type,
        "error.message": event.error_message[:1000],
        "attempts": str(event.attempts),
        "failed_at_ms": str(event.failed_at_ms),
    }
    return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]


class KafkaDestination:
    def __init__(self, topic: str, connection: dict[str, Any], timeout_s: float) -> None:
        self.topic = topic
        self.name = f"kafka://{topic}"
        self._connection = connection
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **self._connection,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self._timeout_s * 1000),
        )
        await self._producer.start()

    async def send(self, event: FailureEvent) -> None:
        assert self._producer is not None, "start() first"
        try:
            async with asyncio.timeout(self._timeout_s):
                acks = [
                    await self._producer.send(
                        self.topic,
                        r.value,
                        key=r.key,
                        headers=[*r.headers, *error_headers(event, r)],
                    )
                    for r in event.records
                ]
                await asyncio.gather(*acks)
        except (KafkaError, TimeoutError) as exc:
            raise DestinationError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
