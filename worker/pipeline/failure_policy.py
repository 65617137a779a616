"""Decides what happens to a batch until every record in it is resolved.

A record is resolved when the handler succeeded for it, when the on-failure
destination acknowledged it, or when it was dropped by an explicit, counted
rule (retries or age exhausted with no destination). `resolve()` returns only
then; the lane commits nothing of a batch before. The rules follow Lambda's
stream event source mappings (DESIGN.md §2):

- Error or timeout, bisect on: a piece of more than one record is split into
  halves, left half first; splitting consumes no retry. A single record is
  retried with backoff up to `maximum_retry_attempts`, then given up.
- Bisect off: the whole piece is retried, then the whole piece is given up.
- Partial batch response: `from_first_failure` (Lambda's rule) retries from
  the first failed record on; `failed_only` retries only the failed records.
  When retries run out, the records the last invocation reported failed are
  given up; the others had succeeded.
- `maximum_record_age_s`: before every invocation, records older than the
  limit are given up without being invoked.
- Giving up sends the records to the destination and waits for its
  acknowledgement, retrying with backoff while it is down; if the lane is
  stopped meanwhile the batch is abandoned uncommitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.config import ErrorsConfig
from worker.destinations.base import (
    RECORD_AGE_EXCEEDED,
    RETRY_ATTEMPTS_EXHAUSTED,
    Destination,
    DestinationError,
    FailureEvent,
)
from worker.metrics import Metrics, PartitionMetrics
from worker.pipeline.backoff import Backoff
from worker.pipeline.dlq_guard import DeadLetterGuard
from worker.pipeline.invoker import Invoker, Outcome
from worker.pipeline.partial import InvalidResponse, failed_indexes
from worker.records import Batch

log = logging.getLogger("worker.failures")

ResultParser = Callable[[Any, Sequence[Any]], "list[int] | None"]


class Abandoned(Exception):
    """The lane stopped while the batch was unresolved; it must not be committed."""


@dataclass(slots=True)
class _Piece:
    """A run of a batch's records still to resolve, and how many times it has failed."""

    records: Sequence[Any]
    attempts: int = 0


@dataclass(slots=True)
class Failure:
    """Why an invocation counts as failed, kept for the failure event."""

    error_type: str
    message: str
    traceback: str = ""


class FailurePolicy:
    def __init__(
        self,
        invoker: Invoker,
        errors: ErrorsConfig,
        destination: Destination | None,
        metrics: Metrics,
        source: str,
        record_timestamp_ms: Callable[[Any], int],
        parse_result: ResultParser = failed_indexes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._invoker = invoker
        self._bisect = errors.bisect_batch_on_function_error
        self._max_retries = errors.maximum_retry_attempts
        self._max_age_ms = errors.maximum_record_age_s * 1000
        self._partial = errors.report_batch_item_failures
        self._failed_only = errors.partial_retry == "failed_only"
        self._backoff = Backoff(*errors.retry_backoff_ms)
        self._destination = destination
        self._timestamp = record_timestamp_ms
        self._parse = parse_result
        self._clock = clock
        self._source = source
        self._metrics = metrics
        self._duration = metrics.handler_duration.labels(source)
        self._batch_size = metrics.batch_size.labels(source)
        self._inflight = metrics.inflight_batches.labels(source)
        self._ignored_result_warned = False
        #: The last failures, for the status page: when, which partition, what.
        self.recent_errors: deque[dict[str, str]] = deque(maxlen=10)

    async def resolve(
        self, batch: Batch, m: PartitionMetrics, stop: asyncio.Event, guard: DeadLetterGuard
    ) -> None:
        """Return once every record of the batch is resolved.

        Raises Abandoned if the lane is stopped first, PartitionHalted if the dead-letter
        guard refuses to give up more records; either way the batch stays uncommitted.
        """
        pending: deque[_Piece] = deque([_Piece(batch.records)])
        while pending:
            piece = pending.popleft()
            if self._max_age_ms >= 0:
                piece = await self._give_up_expired(piece, batch, m, stop, guard)
                if piece is None:
                    continue
            records = piece.records
            outcome = await self.invoke_counted(Batch(records, batch.source, batch.partition), m)
            failure, failed = self._judge(outcome, records)
            if failure is None:
                m.success.inc()
                guard.handled(len(records))
                continue
            if failed is None:
                m.failed.inc(len(records))
                (m.timeout if outcome.timed_out else m.error).inc()
            else:
                m.failed.inc(len(failed))
                m.partial.inc()
            self.recent_errors.append(
                {
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "partition": batch.partition,
                    "error": f"{failure.error_type}: {failure.message}"[:300],
                }
            )
            log.warning(
                "event=invocation_failed partition=%s first=%s last=%s records=%d attempt=%d "
                "failed_records=%d error=%r",
                batch.partition,
                records[0].position,
                records[-1].position,
                len(records),
                piece.attempts + 1,
                len(failed) if failed is not None else len(records),
                f"{failure.error_type}: {failure.message}",
            )
            if failed is None:  # the whole invocation failed
                if self._bisect and len(records) > 1:
                    m.bisections.inc()
                    mid = len(records) // 2
                    pending.appendleft(_Piece(records[mid:], piece.attempts))
                    pending.appendleft(_Piece(records[:mid], piece.attempts))
                    continue
                retry, give_up = records, records
            else:
                give_up = [records[i] for i in failed]
                retry = give_up if self._failed_only else records[failed[0] :]
                guard.handled(failed[0])  # the records before the first failure succeeded
            attempts = piece.attempts + 1
            if self.retries_exhausted(attempts):
                event = self.failure_event(
                    RETRY_ATTEMPTS_EXHAUSTED, batch, give_up, attempts, failure
                )
                await self.give_up(event, m, stop, "retries_exhausted", guard)
                continue
            if await stopped_within(stop, self.retry_delay_s(attempts)):
                raise Abandoned(batch.partition)
            m.retries.inc()
            pending.appendleft(_Piece(retry, attempts))

    # -- one invocation (also used by tumbling windows) --------------------------------------
    async def invoke_counted(self, batch: Batch, m: PartitionMetrics) -> Outcome:
        """Invoke once, updating the per-batch metrics every invocation shares."""
        n = len(batch.records)
        if n:  # a window's final invoke has no records
            m.invoked.inc(n)
            m.iterator_age.set(max(self._clock() - batch.records[-1].timestamp_ms / 1000.0, 0.0))
            self._batch_size.observe(n)
        self._inflight.inc()
        try:
            outcome = await self._invoker.invoke(batch)
        finally:
            self._inflight.dec()
        self._duration.observe(outcome.duration_s)
        return outcome

    def _judge(
        self, outcome: Outcome, records: Sequence[Any]
    ) -> tuple[Failure | None, list[int] | None]:
        """(None, None) when all succeeded; else the failure and the failed indexes (None = all)."""
        if not outcome.ok:
            return Failure(
                "Timeout" if outcome.timed_out else type(outcome.error).__name__,
                outcome.describe() if outcome.timed_out else str(outcome.error),
                outcome.traceback_text(),
            ), None
        if outcome.result is None:
            return None, None
        if not self._partial:
            if not self._ignored_result_warned:
                self._ignored_result_warned = True
                log.warning(
                    "event=handler_result_ignored reason='errors.report_batch_item_failures is off'"
                )
            return None, None
        try:
            failed = self._parse(outcome.result, records)
        except InvalidResponse as exc:
            return Failure("InvalidResponse", str(exc)), None
        if not failed:
            return None, None
        return Failure("BatchItemFailure", f"the handler reported {len(failed)} failed"), failed

    # -- giving up --------------------------------------------------------------------------
    async def _give_up_expired(
        self,
        piece: _Piece,
        batch: Batch,
        m: PartitionMetrics,
        stop: asyncio.Event,
        guard: DeadLetterGuard,
    ) -> _Piece | None:
        """Give up the piece's records older than the age limit; return what is left to invoke."""
        ts = self._timestamp
        limit = self._clock() * 1000 - self._max_age_ms
        if min(map(ts, piece.records)) >= limit:
            return piece
        expired = [r for r in piece.records if ts(r) < limit]
        fresh = [r for r in piece.records if ts(r) >= limit]
        failure = Failure("RecordAgeExceeded", f"older than {self._max_age_ms // 1000}s")
        event = self.failure_event(RECORD_AGE_EXCEEDED, batch, expired, piece.attempts, failure)
        await self.give_up(event, m, stop, "record_age_exceeded", guard)
        return _Piece(fresh, piece.attempts) if fresh else None

    def failure_event(
        self,
        condition: str,
        batch: Batch,
        records: Sequence[Any],
        attempts: int,
        failure: Failure,
    ) -> FailureEvent:
        return FailureEvent(
            condition=condition,
            source=batch.source,
            partition=batch.partition,
            records=records,
            attempts=attempts,
            error_type=failure.error_type,
            error_message=failure.message,
            traceback=failure.traceback,
        )

    def retry_delay_s(self, attempts: int) -> float:
        return self._backoff.delay_s(attempts)

    def retries_exhausted(self, attempts: int) -> bool:
        return 0 <= self._max_retries < attempts

    async def give_up(
        self,
        event: FailureEvent,
        m: PartitionMetrics,
        stop: asyncio.Event,
        reason: str,
        guard: DeadLetterGuard,
    ) -> None:
        """Hand the records to the destination (waiting for it), or drop them, counted."""
        first, last, n = event.records[0].position, event.records[-1].position, len(event.records)
        guard.check(n)  # raises PartitionHalted: a bad deploy must not empty the stream
        guard.dead_lettered(n)
        if self._destination is None:
            self._metrics.records_dropped.labels(self._source, event.partition, reason).inc(n)
            log.warning(
                "event=records_dropped partition=%s condition=%s first=%s last=%s records=%d "
                "note='errors.on_failure is none'",
                event.partition, event.condition, first, last, n,
            )  # fmt: skip
            return
        failures = self._metrics.destination_failures.labels(self._source, self._destination.name)
        attempt = 0
        while True:
            try:
                await self._destination.send(event)
                break
            except DestinationError as exc:
                attempt += 1
                failures.inc()
                delay = self._backoff.delay_s(attempt)
                log.warning(
                    "event=destination_failed partition=%s first=%s last=%s records=%d "
                    "attempt=%d retry_in_s=%.2f error=%r note='the partition waits; nothing "
                    "past these records is committed'",
                    event.partition, first, last, n, attempt, delay, str(exc),
                )  # fmt: skip
                if await stopped_within(stop, delay):
                    raise Abandoned(event.partition) from exc
        m.dead_lettered.inc(n)
        log.warning(
            "event=dead_lettered partition=%s condition=%s first=%s last=%s records=%d "
            "attempts=%d destination=%s error=%r",
            event.partition, event.condition, first, last, n, event.attempts,
            self._destination.name, f"{event.error_type}: {event.error_message}",
        )  # fmt: skip


async def stopped_within(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s`, returning True early if `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        return False
    return True
