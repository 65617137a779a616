"""One shard read in order: GetShardIterator, then GetRecords within AWS's per-shard limits.

The calls go through the stream's `ShardApi` (Kinesis or DynamoDB Streams). The
reader stays within the API's calls per second and 2 MB per second per shard and
hands what it read to the source in chunks through a queue of two, so a
paused or slow partition stops its reader instead of growing a buffer. A
failure that may pass (a throttle, a 500, a dropped connection: see
`transient`) is retried with the shared backoff and counted; an expired
iterator is re-created after the last record read, so nothing is read twice.
Any other failure ends the reader with an error: it runs under the worker's
task supervisor, which then turns the worker not ready and ends it, since a
shard that is no longer read must not sit behind a lease that is still renewed.
The reader ends normally when the shard ends (no NextShardIterator).

A shard with no checkpoint read from `latest` starts at an iterator only this
reader holds: killed (or its lease lost) before its first checkpoint, it would
leave the next owner no checkpoint, and that one would start at the tip again,
past every record written since. So the first page that carries records is not
handed out until the lease names its first record as the start (`pin`:
`start_at` in the lease table, written under the current lease, so a fenced
worker cannot write it); a reader of a lease with a pinned start and no
checkpoint reads AT it (`at`). What was read before the pin was never handed
out: it is before the start, as with Kafka (the start is its first durable
checkpoint). A pin that may pass on retry is retried; a lost lease stops the
reader with the page undelivered (the keeper stops the shard).

How many records each GetRecords asks for is fitted to the reader's part of the memory
budget (`page_fit`): the pages it holds count against the budget as a Kafka client's
prefetch does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from operator import attrgetter
from typing import Any

from worker.backoff import Backoff
from worker.sources.kinesis.api import Page, ShardApi
from worker.sources.kinesis.leases import LeaseLost
from worker.sources.kinesis.metrics import KinesisMetrics
from worker.sources.kinesis.page_fit import PageFit
from worker.sources.kinesis.transient import THROTTLE_CODES, error_code, retryable

log = logging.getLogger("worker.source.kinesis")

MAX_READ_BYTES_PER_S = 2_000_000  # and 2 MB per second per shard
IDLE_POLL_S = 0.5
READ_BACKOFF = Backoff(250, 10_000)
_SIZE = attrgetter("size")
#: The error of a read past the oldest record the stream keeps (DynamoDB Streams).
TRIMMED = "TrimmedDataAccessException"

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
Pin = Callable[[str], Awaitable[None]]


class _Fenced(Exception):
    """The lease went before the start could be pinned: nothing more is delivered."""


class ShardReader:
    def __init__(
        self, api: ShardApi, shard_id: str, after: str | None,
        on_arrival: Callable[[], None], metrics: KinesisMetrics | None,
        at: str | None = None, pin: Pin | None = None, oldest: bool = False,
        overhead_bytes: int = 0,
    ) -> None:  # fmt: skip
        """`after`: the sequence number to read after (the checkpoint), None for the
        configured starting position; `on_arrival` is called when a chunk is queued;
        `at`: a pinned start, read AT while nothing is read after; `pin(sequence)`: make
        the start durable before the first page with records is queued (a `latest` start
        with neither checkpoint nor pin yet); `oldest`: start at the oldest record the
        stream holds, while nothing is read after (a shard made after the mapping started:
        `start`); `overhead_bytes`: the pipeline's memory per record beyond its payload
        (what a page of them weighs, `page_fit`)."""
        self.shard_id = shard_id
        self._api = api
        self._at = at
        self._oldest = oldest
        self._pin = pin
        self._on_arrival = on_arrival
        self._m = metrics
        self._chunks: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=2)
        #: The records each GetRecords asks for, fitted to the budget by the source.
        self.page_fit = PageFit(api.max_page_records, overhead_bytes)
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._task: asyncio.Task[None] | None = None
        #: The sequence number of the last record queued (what a new iterator starts after).
        self.last_read = after
        #: The shard ended (no NextShardIterator) and its last records are queued.
        self.ended = False
        #: How far behind the stream's tip the last GetRecords left the reader.
        self.behind_ms = 0.0

    # -- control (by the source) ----------------------------------------------------------
    def start(self, spawn: Spawn) -> None:
        self._task = spawn(self._run(), f"{self._api.name} reader {self.shard_id}")

    async def stop(self) -> None:
        """Stop reading and drop what is queued: nothing more of the shard is delivered."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._chunks.empty():
            self._chunks.get_nowait()

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def take(self) -> list[Any]:
        """Everything queued, in order (possibly nothing)."""
        out: list[Any] = []
        while not self._chunks.empty():
            out.extend(self._chunks.get_nowait())
        return out

    @property
    def waiting(self) -> bool:
        """Records are queued here, or the stream's tip is ahead of what was read."""
        return self.behind_ms > 0 or not self._chunks.empty()

    @property
    def drained(self) -> bool:
        """The shard ended and everything read from it was handed over."""
        return self.ended and self._chunks.empty()

    # -- reading ------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._read()
        except _Fenced:
            log.warning("event=start_not_pinned shard=%s note='the lease went first: "
                        "nothing of the shard was handed out'", self.shard_id)  # fmt: skip

    async def _read(self) -> None:
        iterator: str | None = await self._iterator()
        failures = 0
        while iterator:
            await self._resumed.wait()
            started = time.monotonic()
            try:
                page = await self._api.page(self.shard_id, iterator, self.page_fit.limit)
            except Exception as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    self._count("expired_iterator")
                    iterator = await self._iterator()
                    continue
                if code == TRIMMED:
                    iterator = await self._iterator()
                    continue
                if not retryable(exc):
                    self._count("failed")
                    log.error("event=read_failed shard=%s call=GetRecords error=%r note='not "
                              "retryable: the worker stops'", self.shard_id, str(exc))  # fmt: skip
                    raise
                failures += 1
                await self._back_off("GetRecords", exc, failures)
                continue
            failures = 0
            self._count("ok")
            records = await self._deliver(page)
            iterator = page.next_iterator
            pause = self._api.min_call_interval_s if records else IDLE_POLL_S
            nbytes = sum(map(_SIZE, records))
            self.page_fit.read(len(records), nbytes)
            # What this call read counts against the shard's 2 MB/s before the next one.
            pause = max(pause, nbytes / MAX_READ_BYTES_PER_S)
            await asyncio.sleep(max(pause - (time.monotonic() - started), 0.0))
        self.ended = True

    async def _deliver(self, page: Page) -> list[Any]:
        """Queue a page's records (waiting while the queue is full)."""
        if page.behind_ms is not None:
            self.behind_ms = page.behind_ms
            if self._m is not None:
                self._m.behind_latest.labels(self._api.name, self.shard_id).set(
                    self.behind_ms / 1000
                )
        records = page.records
        if records:
            if self._pin is not None:
                await self._pin_start(self._pin, records[0].sequence_number)
            self.last_read = records[-1].sequence_number
            await self._chunks.put(records)
            self._on_arrival()
        return records

    async def _pin_start(self, pin: Pin, sequence: str) -> None:
        """Write the start AT `sequence` (the first record to hand out) to the lease, retrying
        what may pass; _Fenced if the lease is no longer ours."""
        failures = 0
        while True:
            try:
                await pin(sequence)
            except LeaseLost as exc:
                raise _Fenced from exc
            except Exception as exc:
                if not retryable(exc):
                    log.error("event=read_failed shard=%s call=UpdateItem error=%r note='not "
                              "retryable: the worker stops'", self.shard_id, str(exc))  # fmt: skip
                    raise
                failures += 1
                await self._back_off("UpdateItem", exc, failures)
                continue
            self._pin, self._at = None, sequence
            log.info("event=start_pinned shard=%s at=%s", self.shard_id, sequence)
            return

    async def _iterator(self) -> str:
        """A shard iterator after the last record read (or at the oldest record, or at the
        pinned start, or at the starting position)."""
        failures, oldest = 0, self._oldest and self.last_read is None
        while True:
            try:
                return await self._api.iterator(self.shard_id, self.last_read, oldest,
                                                self._at)  # fmt: skip
            except Exception as exc:
                if error_code(exc) == TRIMMED and not oldest:
                    self._trimmed()
                    oldest = True
                    continue
                if not retryable(exc):
                    log.error("event=read_failed shard=%s call=GetShardIterator error=%r "
                              "note='not retryable: the worker stops'", self.shard_id,
                              str(exc))  # fmt: skip
                    raise
                failures += 1
                await self._back_off("GetShardIterator", exc, failures)

    def _trimmed(self) -> None:
        """The stream's retention removed records past the last one read before they were
        read (a DynamoDB stream keeps 24 hours). They exist nowhere any more: stopping would
        only let the rest expire too, so reading goes on from the oldest record left, with
        a line and a count (`worker_get_records_calls_total{result="trimmed"}`)."""
        self._count("trimmed")
        log.error("event=records_trimmed shard=%s after=%s note='the stream dropped records "
                  "past the checkpoint before they were read (retention): they are lost; "
                  "reading on from the oldest record left'", self.shard_id,
                  self.last_read)  # fmt: skip

    async def _back_off(self, call: str, exc: Exception, failures: int) -> None:
        code = error_code(exc)
        throttled = code in THROTTLE_CODES
        if call == "GetRecords":
            self._count("throttled" if throttled else "error")
        delay = READ_BACKOFF.delay_s(failures)
        log.warning("event=%s shard=%s call=%s error=%r attempt=%d retry_in_s=%.2f",
                    "throttled" if throttled else "read_retried", self.shard_id, call,
                    code or f"{type(exc).__name__}: {exc}", failures, delay)  # fmt: skip
        await asyncio.sleep(delay)

    def _count(self, result: str) -> None:
        if self._m is not None:
            self._m.get_records.labels(self._api.name, self.shard_id, result).inc()
