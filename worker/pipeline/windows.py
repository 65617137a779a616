"""Tumbling windows (Lambda's TumblingWindowInSeconds) for one partition.

Records fall into windows of `width_s` by their timestamp. Each invocation
gets the window's records of the batch plus `window {start, end}`, the
`state` the previous invocation of the window returned, `shardId`,
`isFinalInvokeForWindow` and `isWindowTerminatedEarly`, and must return
`{"state": {...}}`. When a record of a later window arrives, or the window
has been idle past its end plus a grace, a final invoke (no records) closes
it. A state over 1 MB ends the window early: a final invoke with
`isWindowTerminatedEarly`, then a fresh state for the rest of the window.

The state lives in memory only, so a window's batches are committed only
after its final invoke succeeded: a crash replays the whole window. Records
older than the open window (late data) are counted in the open window.
A failed invocation is retried with backoff up to `maximum_retry_attempts`,
then its records go to the on-failure destination and the state is kept;
bisect and batch item failures do not apply inside windows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.destinations.base import RETRY_ATTEMPTS_EXHAUSTED
from worker.metrics import PartitionMetrics
from worker.pipeline.dlq_guard import DeadLetterGuard
from worker.pipeline.failure_policy import Abandoned, Failure, FailurePolicy, stopped_within
from worker.records import Batch

log = logging.getLogger("worker.windows")

MAX_STATE_BYTES = 1024 * 1024


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TumblingWindows:
    def __init__(
        self,
        policy: FailurePolicy,
        width_s: int,
        grace_s: float,
        record_timestamp_ms: Callable[[Any], int],
        source: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._source = source
        self._width_ms = width_s * 1000
        self._grace_ms = int(grace_s * 1000)
        self._ts = record_timestamp_ms
        self._clock = clock
        self.start_ms: int | None = None
        self.state: dict[str, Any] = {}
        self._pending: list[int] = []  # batch ends waiting for the window's final invoke
        self._ready: list[int] = []  # batch ends whose window closed: committable
        self.guard = DeadLetterGuard(1.0, 0)  # the lane hands over its own

    @property
    def end_ms(self) -> int:
        assert self.start_ms is not None
        return self.start_ms + self._width_ms

    def idle_deadline(self) -> float | None:
        """Wall-clock time (epoch s) after which an idle open window is closed."""
        if self.start_ms is None:
            return None
        return (self.end_ms + self._grace_ms) / 1000.0

    async def process(
        self,
        batch: Batch,
        last_position: int,
        m: PartitionMetrics,
        stop: asyncio.Event,
    ) -> list[int]:
        """Run the batch through its windows; return the batch ends that may now be committed."""
        records, ts, i = batch.records, self._ts, 0
        while i < len(records):
            first_ts = ts(records[i])
            if self.start_ms is None:
                self.start_ms = first_ts - first_ts % self._width_ms
            elif first_ts >= self.end_ms:
                await self._final(batch.partition, m, stop, early=False)
                self.start_ms = first_ts - first_ts % self._width_ms
                continue
            end, j = self.end_ms, i
            while j < len(records) and ts(records[j]) < end:
                j += 1
            await self._invoke(batch.partition, records[i:j], m, stop)
            i = j
        self._pending.append(last_position)
        return self._take_ready()

    async def close_if_idle(
        self, partition: str, m: PartitionMetrics, stop: asyncio.Event
    ) -> list[int]:
        deadline = self.idle_deadline()
        if deadline is not None and self._clock() >= deadline:
            await self._final(partition, m, stop, early=False)
        return self._take_ready()

    def _take_ready(self) -> list[int]:
        ready, self._ready = self._ready, []
        return ready

    async def _final(
        self, partition: str, m: PartitionMetrics, stop: asyncio.Event, early: bool
    ) -> None:
        await self._invoke(partition, [], m, stop, final=True, early=early)
        self._ready += self._pending
        self._pending = []
        self.state = {}
        if not early:
            self.start_ms = None

    async def _invoke(
        self,
        partition: str,
        records: Sequence[Any],
        m: PartitionMetrics,
        stop: asyncio.Event,
        final: bool = False,
        early: bool = False,
    ) -> None:
        window = {
            "window": {"start": _iso(self.start_ms or 0), "end": _iso(self.end_ms)},
            "state": self.state,
            "shardId": partition,
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": early,
        }
        batch = Batch(records, self._source, partition, window)
        attempts = 0
        while True:
            outcome = await self._policy.invoke_counted(batch, m)
            result = outcome.result if outcome.ok else None
            if isinstance(result, dict) and isinstance(result.get("state"), dict):
                m.success.inc()
                break
            if outcome.ok:
                failure = Failure("InvalidResponse", f"must return {{'state': ...}}: {result!r}")
            else:
                e = outcome.error
                failure = Failure(type(e).__name__, outcome.describe(), outcome.traceback_text())
            m.failed.inc(len(records))
            (m.timeout if outcome.timed_out else m.error).inc()
            attempts += 1
            log.warning(
                "event=window_invocation_failed partition=%s final=%s attempt=%d error=%r",
                partition, final, attempts, f"{failure.error_type}: {failure.message}",
            )  # fmt: skip
            if self._policy.retries_exhausted(attempts):
                if records:
                    event = self._policy.failure_event(
                        RETRY_ATTEMPTS_EXHAUSTED, batch, records, attempts, failure
                    )
                    await self._policy.give_up(event, m, stop, "retries_exhausted", self.guard)
                return  # the state stays as it was
            if await stopped_within(stop, self._policy.retry_delay_s(attempts)):
                raise Abandoned(partition)
        if final:
            return
        self.state = result["state"]
        if len(orjson.dumps(self.state)) > MAX_STATE_BYTES:
            log.warning(
                "event=window_terminated_early partition=%s reason=state_over_1MB", partition
            )
            await self._final(partition, m, stop, early=True)
