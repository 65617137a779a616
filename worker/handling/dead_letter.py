"""Giving records up: the dead-letter guard, then the destination or a counted drop.

Giving up sends the records to the on-failure destination and waits for its
acknowledgement, retrying with backoff while it is down; if the partition
stops meanwhile the batch is abandoned uncommitted. With no destination the
records are dropped and counted (`worker_records_dropped_total{reason}`).

The guard stops a partition that dead-letters too much, instead of
dead-lettering everything.

After a bad deploy every record fails; without a guard the worker would
faithfully move the whole stream to the DLQ. Per partition, the guard counts
records resolved (handled or dead-lettered) and dead-lettered, and refuses
the next dead-letter when the ratio of dead-lettered records would pass
`max_dead_letter_ratio` (once at least `MIN_RECORDS` were resolved), or when
`max_consecutive_dead_letters` records in a row would be dead-lettered with
no success between them. The partition then halts: nothing more is invoked
or committed, and the worker reports unhealthy.

The guard's counts are written with the partition's checkpoints (a source's
commit note) and read back by its next owner, so a halt outlives a restart:
the same bad deploy, restarted by its orchestrator, halts again before it
dead-letters one more record, while a fixed one resets the run of failures
with its first success.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from worker.backoff import Backoff
from worker.destinations.base import Destination, DestinationError, FailureEvent
from worker.observe.metrics import Metrics
from worker.observe.tracing import Tracing
from worker.partition.steps import Abandoned, PartitionContext, PartitionHalted, stopped_within
from worker.records import Record

log = logging.getLogger("worker.failures")

MIN_RECORDS = 100


@dataclass(slots=True)
class Failure:
    """Why an invocation counts as failed, kept for the failure event."""

    error_type: str
    message: str
    traceback: str = ""
    #: `file:line` that raised, in the handler's code where it can be told.
    where: str = ""


#: The guard's note: a version tag, then resolved, dead-lettered, in a row.
_NOTE_TAG = "dlg1"


@dataclass
class DeadLetterGuard:
    max_ratio: float  # 1.0 = off
    max_consecutive: int  # 0 = off
    resolved: int = 0
    dead: int = 0
    consecutive: int = 0
    #: Told the guard's note after each change, to be checkpointed with the partition.
    on_change: Callable[[str], None] | None = None

    @classmethod
    def resumed(
        cls, note: str, max_ratio: float, max_consecutive: int, on_change: Callable[[str], None]
    ) -> DeadLetterGuard:
        """The guard of a partition whose last checkpoint carried `note` (or none)."""
        guard = cls(max_ratio, max_consecutive, on_change=on_change)
        tag, _, counts = note.partition(":")
        if tag == _NOTE_TAG:
            try:
                resolved, dead, consecutive = (max(int(n), 0) for n in counts.split(","))
            except ValueError:
                log.warning("event=guard_note_unreadable note=%r", note[:100])
            else:
                guard.resolved, guard.dead, guard.consecutive = resolved, dead, consecutive
        return guard

    def note(self) -> str:
        return f"{_NOTE_TAG}:{self.resolved},{self.dead},{self.consecutive}"

    def handled(self, records: int) -> None:
        self.resolved += records
        self.consecutive = 0
        if self.on_change is not None:
            self.on_change(self.note())

    def check(self, records: int) -> None:
        """Raise PartitionHalted if dead-lettering `records` more would pass a limit."""
        consecutive = self.consecutive + records
        if self.max_consecutive and consecutive > self.max_consecutive:
            raise PartitionHalted(
                f"{consecutive} records in a row would be dead-lettered "
                f"(errors.max_consecutive_dead_letters = {self.max_consecutive})"
            )
        resolved, dead = self.resolved + records, self.dead + records
        if self.max_ratio < 1.0 and resolved >= MIN_RECORDS and dead / resolved > self.max_ratio:
            raise PartitionHalted(
                f"{dead} of {resolved} records would be dead-lettered "
                f"(errors.max_dead_letter_ratio = {self.max_ratio})"
            )

    def dead_lettered(self, records: int) -> None:
        self.resolved += records
        self.dead += records
        self.consecutive += records
        if self.on_change is not None:
            self.on_change(self.note())


class DeadLetter:
    """Gives up records of one partition: the guard first, then the destination or a drop."""

    def __init__(
        self,
        destination: Destination | None,
        backoff: Backoff,
        metrics: Metrics,
        ctx: PartitionContext,
        guard: DeadLetterGuard,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing
        self._destination = destination
        self._backoff = backoff
        self._metrics = metrics
        self._ctx = ctx
        self.guard = guard
        # Every series an alert reads, at 0 from the start: increase() misses a counter
        # whose first sample is already 1.
        for reason in ("retries_exhausted", "record_age_exceeded"):
            metrics.records_dropped.labels(ctx.source, ctx.label, reason)
        if destination is not None:
            metrics.destination_failures.labels(ctx.source, destination.name)

    def event(
        self, condition: str, records: Sequence[Record], attempts: int, failure: Failure
    ) -> FailureEvent:
        return FailureEvent(
            condition=condition,
            source=self._ctx.source,
            partition=self._ctx.label,
            records=records,
            attempts=attempts,
            error_type=failure.error_type,
            error_message=failure.message,
            traceback=failure.traceback,
            where=failure.where,
        )

    async def give_up(self, event: FailureEvent, reason: str) -> None:
        """Hand the records to the destination (waiting for it), or drop them, counted."""
        first, last, n = event.records[0].position, event.records[-1].position, len(event.records)
        self.guard.check(n)  # raises PartitionHalted: a bad deploy must not empty the stream
        self.guard.dead_lettered(n)
        ctx = self._ctx
        if self._destination is None:
            self._metrics.records_dropped.labels(ctx.source, ctx.label, reason).inc(n)
            log.warning(
                "event=records_dropped partition=%s condition=%s first=%s last=%s records=%d "
                "note='errors.on_failure is none'",
                ctx.label, event.condition, first, last, n,
            )  # fmt: skip
            return
        name = self._destination.name
        failures = self._metrics.destination_failures.labels(ctx.source, name)
        attempt = 0
        while True:
            try:
                with self._tracing.destination_write(name, n) if self._tracing else nullcontext():
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
                    ctx.label, first, last, n, attempt, delay, str(exc),
                )  # fmt: skip
                if await stopped_within(ctx.stopping, delay):
                    raise Abandoned(ctx.label) from exc
        ctx.metrics.records_dead_lettered(n)
        log.warning(
            "event=dead_lettered partition=%s condition=%s first=%s last=%s records=%d "
            "attempts=%d destination=%s error=%r",
            ctx.label, event.condition, first, last, n, event.attempts, name,
            f"{event.error_type}: {event.error_message}",
        )  # fmt: skip
