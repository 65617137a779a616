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
older than the open window (late data) are counted in the open window. A record
stamped more than one window width ahead of the wall clock (early data: a bad
clock) is windowed as if it arrived now, and counted
(`worker_window_early_records_total`), so a window opens at most one width ahead
and the partition never waits for a far-future window to close.
Invocations go through the failure policy's one retry engine: a failed one
is retried with backoff up to `maximum_retry_attempts`, then its records go
to the on-failure destination and the state is kept; bisect and batch item
failures do not apply inside windows. A final invoke is never given up: as
Lambda stops the shard until it succeeds, the partition retries it (and the
commit watchdog reports the stall) rather than commit a window whose result
was never delivered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.handling.dead_letter import Failure
from worker.handling.failure_policy import FailurePolicy, Mode, outcome_failure
from worker.handling.invoker import Outcome
from worker.partition.steps import PartitionContext
from worker.records import Batch, Record

log = logging.getLogger("worker.windows")

MAX_STATE_BYTES = 1024 * 1024


def _iso(ms: int) -> str:
    """ISO 8601 UTC; a time `datetime` cannot show (a producer may stamp anything) as the
    epoch milliseconds themselves, rather than a crash of the partition."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return str(ms)


class TumblingWindows:
    """The window step of one partition (the last of its chain, in place of the policy)."""

    def __init__(
        self,
        policy: FailurePolicy,
        ctx: PartitionContext,
        width_s: int,
        grace_s: float,
        record_timestamp_ms: Callable[[Record], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._ctx = ctx
        self._width_ms = width_s * 1000
        self._grace_ms = int(grace_s * 1000)
        self._ts = record_timestamp_ms
        self._clock = clock
        self._invoke_mode = Mode(self._judge_state, bisect=False, check_age=False)
        self._final_mode = replace(self._invoke_mode, may_give_up=False)
        self.start_ms: int | None = None
        self.state: dict[str, Any] = {}
        self._pending: list[int] = []  # batch ends waiting for the window's final invoke
        self._ready: list[int] = []  # batch ends whose window closed: committable
        self._state_json = b"{}"  # the last accepted state, as JSON

    def _judge_state(
        self, outcome: Outcome, records: Sequence[Record]
    ) -> tuple[Failure | None, None]:
        """A window invocation succeeds only by returning `{"state": {...}}` that is JSON.

        The state is kept as Lambda keeps it, as JSON: a set, bytes or another object
        JSON cannot hold fails the invocation (the failure path, never the lane), and the
        next invocation gets the state decoded again (keys JSON writes as strings, as
        strings).
        """
        if not outcome.ok:
            return outcome_failure(outcome), None
        result = outcome.result
        if not (isinstance(result, dict) and isinstance(result.get("state"), dict)):
            return Failure("InvalidResponse", f"must return {{'state': ...}}: {result!r}"), None
        try:
            self._state_json = orjson.dumps(result["state"], option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            return Failure("InvalidResponse", f"the state is not JSON: {exc}"), None
        return None, None

    @property
    def end_ms(self) -> int:
        assert self.start_ms is not None
        return self.start_ms + self._width_ms

    def deadline(self) -> float | None:
        """Wall-clock time (epoch s) after which an idle open window is closed."""
        if self.start_ms is None:
            return None
        return (self.end_ms + self._grace_ms) / 1000.0

    def _window_times(self, records: Sequence[Record]) -> list[int]:
        """Each record's time for windowing: its timestamp, unless that is more than a
        window width ahead of the wall clock; such a record is windowed as arriving now
        (counted), so one bad clock cannot open a window the partition waits days for."""
        now_ms = int(self._clock() * 1000)
        limit = now_ms + self._width_ms
        times = [self._ts(r) for r in records]
        early = [t for t in times if t > limit]
        if not early:
            return times
        self._ctx.metrics.window_early.inc(len(early))
        log.warning(
            "event=window_early_records partition=%s records=%d max_ahead_s=%.0f "
            "note='stamped over a window width ahead of the wall clock: windowed as now'",
            self._ctx.label, len(early), (max(early) - now_ms) / 1000,
        )  # fmt: skip
        return [now_ms if t > limit else t for t in times]

    async def submit(self, batch: Batch, end: int) -> Sequence[int]:
        """Run the batch through its windows; return the batch ends that may now be committed."""
        records, i = batch.records, 0
        times = self._window_times(records)
        while i < len(records):
            first_ts = times[i]
            if self.start_ms is None:
                self.start_ms = first_ts - first_ts % self._width_ms
            elif first_ts >= self.end_ms:
                await self._final(early=False)
                self.start_ms = first_ts - first_ts % self._width_ms
                continue
            window_end, j = self.end_ms, i
            while j < len(records) and times[j] < window_end:
                j += 1
            await self._invoke(records[i:j])
            i = j
        if self.start_ms is None:  # nothing of it is in a window (all filtered out)
            return [*self._take_ready(), end]
        self._pending.append(end)
        return self._take_ready()

    async def poll(self) -> Sequence[int]:
        deadline = self.deadline()
        if deadline is not None and self._clock() >= deadline:
            await self._final(early=False)
        return self._take_ready()

    def _take_ready(self) -> list[int]:
        ready, self._ready = self._ready, []
        return ready

    async def _final(self, early: bool) -> None:
        await self._invoke([], final=True, early=early)
        self._ready += self._pending
        self._pending = []
        self.state = {}
        if not early:
            self.start_ms = None

    async def _invoke(self, records: Sequence[Record], final: bool = False,
                      early: bool = False) -> None:  # fmt: skip
        window = {
            "window": {"start": _iso(self.start_ms or 0), "end": _iso(self.end_ms)},
            "state": self.state,
            "shardId": self._ctx.label,
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": early,
        }
        batch = Batch(records, self._ctx.source, self._ctx.label, window)
        mode = self._final_mode if final else self._invoke_mode
        result = await self._policy.resolve(batch, mode)
        if final or result is None:  # a final invoke's state is dropped; given up: kept
            return
        self.state = orjson.loads(self._state_json)
        if len(self._state_json) > MAX_STATE_BYTES:
            log.warning(
                "event=window_terminated_early partition=%s reason=state_over_1MB",
                self._ctx.label,
            )
            await self._final(early=True)
