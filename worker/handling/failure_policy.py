"""The step that decides what happens to a batch until every record in it is resolved.

A record is resolved when the handler succeeded for it, when the on-failure
destination acknowledged it, or when it was dropped by an explicit, counted
rule (retries or age exhausted with no destination). `submit()` returns only
then; the partition commits nothing of a batch before. The rules follow
Lambda's stream event source mappings (the README's failure section):

- Error or timeout, bisect on: a piece of more than one record is split into
  halves, left half first; splitting consumes no retry. A single record is
  retried with backoff up to `maximum_retry_attempts`, then given up.
- Bisect off: the whole piece is retried, then the whole piece is given up.
- Partial batch response: `from_first_failure` (Lambda's rule) retries from
  the first failed record on; `failed_only` retries only the failed records.
  When retries run out: with `failed_only`, the records the last invocation
  reported failed are given up (the others had succeeded); with
  `from_first_failure`, only the first failed record is, and what followed it
  (never a success under that rule) is tried again as a batch of its own.
- `maximum_record_age_s`: before every invocation, records older than the
  limit are given up without being invoked.

`resolve()` is the one retry engine: tumbling windows call it too, with their
own `Mode` (their own judge of the result, no bisect, and for a window's final
invoke no giving up at all), so retry, backoff and giving up exist once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.backoff import Backoff
from worker.config import ErrorsConfig
from worker.destinations.base import RECORD_AGE_EXCEEDED, RETRY_ATTEMPTS_EXHAUSTED
from worker.handling.dead_letter import DeadLetter, Failure
from worker.handling.failure_log import FailureLog
from worker.handling.invoker import Invoker, Outcome
from worker.handling.partial import InvalidResponse, failed_indexes
from worker.handling.raised_at import raised_at
from worker.observe.errors import RecentErrors, shown_error
from worker.observe.metrics import Metrics, PartitionMetrics
from worker.observe.tracing import Tracing
from worker.observe.view import RetryingBatch
from worker.partition.steps import Abandoned, PartitionContext, stopped_within
from worker.records import Batch, Record

log = logging.getLogger("worker.failures")

ResultParser = Callable[[Any, Sequence[Any]], "list[int] | None"]
#: (None, None) when all succeeded; else the failure and the failed indexes (None = all).
Judge = Callable[[Outcome, Sequence[Record]], "tuple[Failure | None, list[int] | None]"]
#: An outcome and what its judge said of it.
_Judged = tuple[Outcome, "Failure | None", "list[int] | None"]


@dataclass(frozen=True, slots=True)
class Mode:
    """How `resolve` treats one kind of invocation."""

    judge: Judge
    bisect: bool
    check_age: bool = True
    #: False: retry until it succeeds or the partition stops (a window's final invoke,
    #: whose state exists nowhere else).
    may_give_up: bool = True


@dataclass(slots=True)
class _Piece:
    """A run of a batch's records still to resolve, and how many times it has failed."""

    records: Sequence[Record]
    attempts: int = 0


class _ShownRetry:
    """What one `resolve` call is retrying now, published to its partition's metrics.

    Shown once per failure and taken back when the records succeed, are given up or
    abandoned; on a batch that succeeds first time it costs one check.
    """

    __slots__ = ("_metrics", "shown")

    def __init__(self, metrics: PartitionMetrics) -> None:
        self._metrics = metrics
        self.shown: RetryingBatch | None = None

    def show(self, batch: RetryingBatch) -> None:
        self.shown = batch
        self._metrics.retrying_now(id(self), batch)

    def over(self) -> None:
        if self.shown is not None:
            self.shown = None
            self._metrics.retry_over(id(self))


def _wall_clock() -> float:
    """Record ages are judged against the wall clock, looked up at each call."""
    return time.time()


def outcome_failure(outcome: Outcome) -> Failure:
    """The failure of an invocation that raised or timed out."""
    return Failure(
        "Timeout" if outcome.timed_out else type(outcome.error).__name__,
        outcome.describe() if outcome.timed_out else outcome.message(),
        outcome.traceback_text(),
        "" if outcome.timed_out else raised_at(outcome.error),
    )


class FailurePolicy:
    """One partition's failure rules; the last step of its chain (or a window's engine)."""

    def __init__(
        self,
        invoker: Invoker,
        errors: ErrorsConfig,
        dead_letter: DeadLetter,
        ctx: PartitionContext,
        metrics: Metrics,
        recent_errors: RecentErrors,
        record_timestamp_ms: Callable[[Record], int],
        parse_result: ResultParser = failed_indexes,
        clock: Callable[[], float] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing
        self._invoker = invoker
        self._timestamp_ms = record_timestamp_ms
        self._max_retries = errors.maximum_retry_attempts
        self._max_age_ms = errors.maximum_record_age_s * 1000
        self._partial = errors.report_batch_item_failures
        self._failed_only = errors.partial_retry == "failed_only"
        self._backoff = Backoff(*errors.retry_backoff_ms)
        self._dead_letter = dead_letter
        self._ctx = ctx
        self._parse = parse_result
        self._clock = clock or _wall_clock
        self._duration = metrics.handler_duration.labels(ctx.source)
        self._batch_size = metrics.batch_size.labels(ctx.source)
        self._ignored_result_warned = False
        self._failures = FailureLog(recent_errors)
        self.mode = Mode(self._judge, bisect=errors.bisect_batch_on_function_error)

    # -- the step -----------------------------------------------------------------------
    async def submit(self, batch: Batch, end: int) -> Sequence[int]:
        if batch.records:
            await self.resolve(batch)
        return (end,)

    async def poll(self) -> Sequence[int]:
        return ()

    def deadline(self) -> float | None:
        return None

    # -- the engine ---------------------------------------------------------------------
    async def resolve(self, batch: Batch, mode: Mode | None = None) -> Any:
        """Return once every record of the batch is resolved: the last successful result
        (None if the records were given up).

        Raises Abandoned if the partition stops first, PartitionHalted if the dead-letter
        guard refuses to give up more records; either way the batch stays uncommitted.
        """
        mode = mode or self.mode
        first: _Judged | None = None
        if self._tracing is None and batch.records and not self._checks_age(mode):
            # The common case, one call that succeeds, without the retry loop's objects.
            # Judged once: a response may be readable only once (a one-shot iterable).
            outcome = await self.invoke_counted(batch)
            first = (outcome, *mode.judge(outcome, batch.records))
            if first[1] is None:
                self._ctx.metrics.success.inc()
                self._succeeded(len(batch.records))
                return outcome.result
        pending: deque[_Piece] = deque([_Piece(batch.records)])
        retry = _ShownRetry(self._ctx.metrics)
        try:
            if self._tracing is None or not batch.records:
                return await self._resolve(batch, mode, pending, retry, first)
            with self._tracing.process(batch):
                return await self._resolve(batch, mode, pending, retry)
        finally:
            retry.over()

    def _checks_age(self, mode: Mode) -> bool:
        return mode.check_age and self._max_age_ms >= 0

    async def _resolve(
        self,
        batch: Batch,
        mode: Mode,
        pending: deque[_Piece],
        retry: _ShownRetry,
        first: _Judged | None = None,
    ) -> Any:
        """The retry loop. `first`: the outcome of the whole batch's first call and its
        judgement, when `resolve` made it already (it failed)."""
        m, label = self._ctx.metrics, self._ctx.label
        result = None
        while pending:
            piece = pending.popleft()
            if self._checks_age(mode) and piece.records:
                piece = await self._give_up_expired(piece)
                if piece is None:
                    continue
            records = piece.records
            piece_batch = (
                batch
                if records is batch.records
                else Batch(records, batch.source, batch.partition, batch.window)
            )
            if first is not None:
                (outcome, failure, failed), first = first, None
            else:
                if self._tracing is None:
                    outcome = await self.invoke_counted(piece_batch)
                else:
                    with self._tracing.attempt(len(records), len(batch.records), piece.attempts):
                        outcome = await self.invoke_counted(piece_batch)
                failure, failed = mode.judge(outcome, records)
            if failure is None:
                retry.over()
                m.success.inc()
                self._succeeded(len(records))  # a window's final invoke: none
                result = outcome.result
                continue
            self._count_failure(outcome, records, failed, failure, piece.attempts)
            if failed is None:  # the whole invocation failed
                if mode.bisect and len(records) > 1:
                    m.bisections.inc()
                    mid = len(records) // 2
                    pending.appendleft(_Piece(records[mid:], piece.attempts))
                    pending.appendleft(_Piece(records[:mid], piece.attempts))
                    continue
                retry_records, give_up, rest = records, records, ()
            elif self._failed_only:
                retry_records = give_up = [records[i] for i in failed]
                rest = ()
                self._succeeded(len(records) - len(failed))  # those not reported failed
            else:
                # Lambda's rule: what follows the first failure is retried, so none of it
                # has succeeded yet (a handler written as AWS documents returns at the
                # first failure, never reaching the rest). Out of retries, only the first
                # failed record is given up; the rest is tried again as a batch of its own.
                retry_records, give_up = records[failed[0] :], [records[failed[0]]]
                rest = records[failed[0] + 1 :]
                self._succeeded(failed[0])  # those before the first failure
            attempts = piece.attempts + 1
            if mode.may_give_up and self.retries_exhausted(attempts):
                if give_up:
                    event = self._dead_letter.event(
                        RETRY_ATTEMPTS_EXHAUSTED, give_up, attempts, failure
                    )
                    await self._dead_letter.give_up(event, "retries_exhausted")
                retry.over()
                result = None
                if rest:  # a batch of its own: splitting consumes no retry
                    pending.appendleft(_Piece(rest, 0))
                continue
            retry.show(self._retrying(retry.shown, retry_records, attempts, failure))
            if await stopped_within(self._ctx.stopping, self._backoff.delay_s(attempts)):
                raise Abandoned(label)
            m.retries.inc()
            pending.appendleft(_Piece(retry_records, attempts))
        return result

    def _succeeded(self, records: int) -> None:
        """Tell the guard that `records` succeeded. A success of none (a partial response
        whose first record failed, a window's final invoke) proves nothing about records:
        it used to reset the guard's run of dead letters, so a handler reporting every
        record failed, or failing every record but not its windows' final invokes, never
        halted."""
        if records > 0:
            self._dead_letter.guard.handled(records)

    async def invoke_counted(self, batch: Batch) -> Outcome:
        """Invoke once, updating the per-batch metrics every invocation shares."""
        m = self._ctx.metrics
        n = len(batch.records)
        if n:  # a window's final invoke has no records
            m.invoked.inc(n)
            m.iterator_age(max(self._clock() - batch.records[-1].timestamp_ms / 1000.0, 0.0))
            self._batch_size.observe(n)
        m.batch_started()  # counted in worker_inflight_batches too
        try:
            outcome = await self._invoker.invoke(batch)
        finally:
            m.batch_ended()
        self._duration.observe(outcome.duration_s)
        return outcome

    def _retrying(
        self,
        before: RetryingBatch | None,
        records: Sequence[Record],
        attempts: int,
        failure: Failure,
    ) -> RetryingBatch:
        """The retry to publish; its `since` is kept while the same records are retried."""
        position = records[0].position if records else -1
        same = before is not None and before.position == position
        since = before.since if same and before is not None else self._clock()
        error = shown_error(failure.error_type, failure.message)
        return RetryingBatch(position, len(records), attempts, error, since, failure.where)

    def retries_exhausted(self, attempts: int) -> bool:
        return 0 <= self._max_retries < attempts

    def _judge(
        self, outcome: Outcome, records: Sequence[Record]
    ) -> tuple[Failure | None, list[int] | None]:
        if not outcome.ok:
            return outcome_failure(outcome), None
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

    def _count_failure(
        self,
        outcome: Outcome,
        records: Sequence[Record],
        failed: list[int] | None,
        failure: Failure,
        attempts: int,
    ) -> None:
        m = self._ctx.metrics
        if failed is None:
            m.failed.inc(len(records))
            (m.timeout if outcome.timed_out else m.error).inc()
        else:
            m.failed.inc(len(failed))
            m.partial.inc()
        self._failures.failed(self._ctx.label, records, failed, failure, attempts)

    async def _give_up_expired(self, piece: _Piece) -> _Piece | None:
        """Give up the piece's records older than the age limit; return what is left to invoke."""
        ts = self._timestamp_ms
        limit = self._clock() * 1000 - self._max_age_ms
        if min(map(ts, piece.records)) >= limit:
            return piece
        expired = [r for r in piece.records if ts(r) < limit]
        fresh = [r for r in piece.records if ts(r) >= limit]
        failure = Failure("RecordAgeExceeded", f"older than {self._max_age_ms // 1000}s")
        event = self._dead_letter.event(RECORD_AGE_EXCEEDED, expired, piece.attempts, failure)
        await self._dead_letter.give_up(event, "record_age_exceeded")
        return _Piece(fresh, piece.attempts) if fresh else None
