"""Decides what happens to a batch until every record in it is resolved.

A batch is resolved when the handler succeeded for it. A failed invocation is
retried with exponential backoff and jitter; retries stop only when the lane
is asked to stop, and then the batch is abandoned uncommitted (the next owner
of the partition reads it again). Nothing is marked done that was not handled.
"""

from __future__ import annotations

import asyncio
import logging
import time

from worker.metrics import Metrics, PartitionMetrics
from worker.pipeline.backoff import Backoff
from worker.pipeline.invoker import Invoker, Outcome
from worker.records import Batch

log = logging.getLogger("worker.failures")


class Abandoned(Exception):
    """The lane stopped while the batch was unresolved; it must not be committed."""


class FailurePolicy:
    def __init__(self, invoker: Invoker, backoff: Backoff, metrics: Metrics, source: str) -> None:
        self._invoker = invoker
        self._backoff = backoff
        self._duration = metrics.handler_duration.labels(source)
        self._batch_size = metrics.batch_size.labels(source)
        self._inflight = metrics.inflight_batches.labels(source)

    async def resolve(self, batch: Batch, m: PartitionMetrics, stop: asyncio.Event) -> None:
        """Return once the batch is handled; raise Abandoned if `stop` is set first."""
        attempt = 0
        while True:
            outcome = await self._invoke(batch, m)
            if outcome.ok:
                return
            attempt += 1
            delay = self._backoff.delay_s(attempt)
            log.warning(
                "event=batch_failed partition=%s first=%s last=%s records=%d attempt=%d "
                "retry_in_s=%.3f error=%r",
                batch.partition,
                batch.first_position,
                batch.last_position,
                len(batch),
                attempt,
                delay,
                outcome.describe(),
            )
            if await _stopped_within(stop, delay):
                raise Abandoned(batch.partition)
            m.retries.inc()

    async def _invoke(self, batch: Batch, m: PartitionMetrics) -> Outcome:
        n = len(batch.records)
        m.invoked.inc(n)
        m.iterator_age.set(max(time.time() - batch.records[-1].timestamp_ms / 1000.0, 0.0))
        self._batch_size.observe(n)
        self._inflight.inc()
        try:
            outcome = await self._invoker.invoke(batch)
        finally:
            self._inflight.dec()
        self._duration.observe(outcome.duration_s)
        if outcome.ok:
            m.success.inc()
        else:
            m.failed.inc(n)
            (m.timeout if outcome.timed_out else m.error).inc()
        return outcome


async def _stopped_within(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s`, returning True early if `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        return False
    return True
