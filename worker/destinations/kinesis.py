"""kinesis://STREAM: each failed record as a JSON envelope, with PutRecords.

Kinesis records have no headers, so each record goes as a JSON envelope: the
condition, source, partition, position, timestamp, attempts, error, and the
original key, data and headers (`[[name, value]]`, values base64, as `file://`
writes them), under the original partition key (so one
key's failures stay in order). PutRecords calls respect AWS's limits, which
emulators do not enforce: at most 500 entries and 5 MiB per call, 1 MiB per
entry. Entries the call reports failed (throttling) are retried with backoff
until `on_failure_timeout_s`; only then is the write a failure. Any botocore
error (an unreachable endpoint too) is a failed write, which the partition retries.

An envelope over 1 MiB could never be written and would hold its partition for
ever: it goes instead with `truncated: true`, `original_bytes` and the first
4 KiB of the data (`data_prefix`), counted in `worker_dead_letter_truncated_total`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter

from worker.backoff import Backoff
from worker.destinations.base import DestinationError, FailureEvent
from worker.encoding import b64
from worker.records import Record

log = logging.getLogger("worker.destinations.kinesis")

MAX_ENTRIES = 500
MAX_CALL_BYTES = 5 * 1024 * 1024
MAX_ENTRY_BYTES = 1024 * 1024
RETRY_BACKOFF = Backoff(100, 5000)
DATA_PREFIX_BYTES = 4096


def entries(
    event: FailureEvent, on_truncated: Callable[[Record], None] | None = None
) -> list[dict[str, Any]]:
    out = []
    for r in event.records:
        key = r.key.decode(errors="replace") if r.key else str(r.position)
        envelope = {
            "condition": event.condition,
            "source": event.source,
            "partition": event.partition,
            "position": str(r.position),
            "timestamp_ms": r.timestamp_ms,
            "attempts": event.attempts,
            "error": {"type": event.error_type, "message": event.error_message[:1000]},
            "key": b64(r.key),
            "data": b64(r.value),
            "headers": [[name, b64(value)] for name, value in r.headers],
        }
        data = orjson.dumps(envelope)
        if len(data) + len(key.encode()) > MAX_ENTRY_BYTES:
            value = r.value or b""
            envelope.update(data=None, truncated=True, original_bytes=len(value),
                            data_prefix=b64(value[:DATA_PREFIX_BYTES]))  # fmt: skip
            data = orjson.dumps(envelope)
            log.warning(
                "event=dead_letter_truncated partition=%s position=%s original_bytes=%d "
                "note='over Kinesis's 1 MiB per record: an envelope with its position, "
                "error and first bytes was written instead'",
                event.partition, r.position, len(value),
            )  # fmt: skip
            if on_truncated is not None:
                on_truncated(r)
        out.append({"Data": data, "PartitionKey": key[:256] or "-"})
    return out


def calls(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Split entries into PutRecords calls of at most 500 entries and 5 MiB."""
    call: list[dict[str, Any]] = []
    size = 0
    for item in items:
        n = len(item["Data"]) + len(item["PartitionKey"].encode())
        if call and (len(call) == MAX_ENTRIES or size + n > MAX_CALL_BYTES):
            yield call
            call, size = [], 0
        call.append(item)
        size += n
    if call:
        yield call


class KinesisDestination:
    def __init__(self, stream: str, region: str | None, endpoint_url: str | None,
                 timeout_s: float, session: Any = None,
                 truncated: Counter | None = None) -> None:  # fmt: skip
        self.stream = stream
        self._truncated = truncated.labels(f"kinesis://{stream}") if truncated else None
        self.name = f"kinesis://{stream}"
        self._region = region
        self._endpoint = endpoint_url
        self._timeout_s = timeout_s
        self._session = session or get_session()
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(
            self._session.create_client(
                "kinesis", region_name=self._region, endpoint_url=self._endpoint
            )
        )

    async def send(self, event: FailureEvent) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                truncated: list[Record] = []
                for call in calls(entries(event, truncated.append)):
                    await self._put(call)
            if truncated and self._truncated is not None:  # counted once written
                self._truncated.inc(len(truncated))
        except TimeoutError as exc:
            raise DestinationError(f"{self.name}: not acknowledged in time") from exc
        except (ClientError, BotoCoreError) as exc:
            # BotoCoreError: unreachable endpoint, connection reset, read timeout, missing
            # credentials: the partition waits and retries, as for any destination outage.
            raise DestinationError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def _put(self, call: list[dict[str, Any]]) -> None:
        attempt = 0
        while call:
            result = await self._client.put_records(StreamName=self.stream, Records=call)
            if not result.get("FailedRecordCount"):
                return
            call = [e for e, r in zip(call, result["Records"], strict=True) if r.get("ErrorCode")]
            attempt += 1
            await asyncio.sleep(RETRY_BACKOFF.delay_s(attempt))

    async def stop(self) -> None:
        await self._stack.aclose()
