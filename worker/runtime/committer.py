"""Checkpoints the partitions' finished positions at the source, coalescing commits.

One commit is in flight at a time. A partition that finished work calls
`notify(partition)`; the committer then commits every partition that told it
so, waits `interval_s`, and goes again if more finished meanwhile. Under load
that coalesces many batches per commit; when idle, a finished batch is committed
at once. Revoke and shutdown call `commit_now()` directly.

A partition whose handled, uncommitted work nears the bound that pauses it
(`Partition.commit_due`) cuts the wait short after a round that succeeded: at a
high rate the interval alone let every partition reach its bound and pause
between rounds, so the bound, meant for a crash's redo, throttled a healthy
worker. After a failed round, or one refused for a partition (a rebalance), the
whole interval is kept (no retry storm in an outage).

The committer reads each partition's `commit_point()` and reports back with
`mark_committed()`; it writes no partition's state itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from contextlib import nullcontext, suppress

from worker.observe.metrics import Metrics
from worker.observe.tracing import Tracing
from worker.outputs.sink import OutputSink
from worker.partition.partition import Partition
from worker.sources.base import OwnershipLost, Source

log = logging.getLogger("worker.committer")

#: A commit not acknowledged in this long counts as failed and is tried again (the
#: Kafka client retries internally for as long as the coordinator is unreachable).
COMMIT_TIMEOUT_S = 10.0


class Committer:
    def __init__(
        self,
        source: Source,
        interval_s: float,
        metrics: Metrics,
        tracing: Tracing | None = None,
        outputs: OutputSink | None = None,
    ) -> None:
        self._source = source
        #: Where the outputs the positions cover go first (None: outputs are off).
        self._outputs = outputs
        #: A round that carries outputs may take the sink's longer bound.
        self._timeout_s = max(COMMIT_TIMEOUT_S, outputs.round_timeout_s if outputs else 0.0)
        self._tracing = tracing
        self._interval_s = interval_s
        self._failures = metrics.commit_failures.labels(source.name)
        self._refused = metrics.commits_refused.labels(source.name)
        self._dirty: set[Partition] = set()
        self._wanted = asyncio.Event()
        #: A notifying partition is near its uncommitted bound: end the wait early.
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None

    def notify(self, partition: Partition) -> None:
        self._dirty.add(partition)
        self._wanted.set()
        # Judged once a round: `commit_due` may sum the partition's finished units, and a
        # lane that runs a fetch's batches without yielding notifies once a batch.
        if not self._due.is_set() and partition.commit_due:
            self._due.set()

    def forget(self, partitions: Iterable[Partition]) -> None:
        self._dirty.difference_update(partitions)

    async def taking(self, keys: Sequence[Hashable]) -> None:
        """Partitions are being assigned: the output sink readies (and fences) them."""
        if self._outputs is not None:
            await self._outputs.assigned(self._source, keys)

    async def released(self, keys: Sequence[Hashable]) -> None:
        """Partitions left after their last commit here."""
        if self._outputs is not None:
            await self._outputs.revoked(keys)

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            self._due.clear()  # a partition still due after this round says so again
            dirty, self._dirty = self._dirty, set()
            # A partition being released is committed by its release, and only there: a
            # stale offer of it would make Kafka refuse the whole call.
            dirty = {p for p in dirty if not p.releasing}
            committed, refused = await self._round(dirty)
            if committed and not refused:
                await self._interval_or_due()
                continue
            if not committed:
                self._dirty |= {p for p in dirty if not p.releasing}
                self._wanted.set()  # retry after the interval
            # A refused partition stays due (nothing of it was taken): hurried by it, every
            # batch it finishes in a rebalance would be a commit the broker refuses again.
            await asyncio.sleep(self._interval_s)

    async def _interval_or_due(self) -> None:
        """The interval, or less once a partition is due (`notify`)."""
        with suppress(TimeoutError):
            async with asyncio.timeout(self._interval_s):
                await self._due.wait()

    async def commit_now(self, partitions: Iterable[Partition]) -> bool:
        """Commit what the given partitions finished; False if the source refused for now."""
        committed, _ = await self._round(partitions)
        return committed

    async def _round(self, partitions: Iterable[Partition]) -> tuple[bool, bool]:
        """`commit_now`'s answer, and whether ownership was refused for any partition."""
        async with self._lock:
            moved = [(p, point) for p in partitions if (point := p.commit_point()) is not None]
            if not moved:
                return await self._flush_notes(), False
            try:
                async with asyncio.timeout(self._timeout_s):
                    span = self._tracing.commit(len(moved)) if self._tracing else nullcontext()
                    with span:
                        failures = await self._checkpoint(moved)
            except OwnershipLost as exc:
                failures = dict.fromkeys(exc.lost, exc)
            except (ConnectionError, TimeoutError) as exc:
                self._failed(exc, [p for p, _ in moved])
                return False, False
            lost = {k: e for k, e in failures.items() if isinstance(e, OwnershipLost)}
            broken = {k: e for k, e in failures.items() if k not in lost}
            if lost:
                # Those partitions were taken away (a rebalance, a lost lease): their work
                # past the last commit will be redone by the new owner. The others of the
                # same call were checkpointed.
                refused = [m for m in moved if m[0].key in lost]
                self._refused.inc(len(refused))
                log.warning(
                    "event=commit_refused reason=ownership_lost partitions=%s detail=%r "
                    "note='the new owner redoes what was handled past the last commit'",
                    ",".join(f"{p.label}@{pos}" for p, (pos, _) in refused),
                    str(next(iter(lost.values()))),
                )  # fmt: skip
            if broken:  # some partitions' checkpoints failed (a transaction): tried again
                self._failed(next(iter(broken.values())), [p for p, _ in moved if p.key in broken])
            elif self._failing_since is not None and len(failures) < len(moved):
                # (a refusal of every partition is no recovery: nothing was committed)
                log.info("event=commits_recovered after_s=%.1f",
                         time.monotonic() - self._failing_since)  # fmt: skip
                self._failing_since = None
            for p, (position, records) in moved:
                if p.key not in failures:
                    p.mark_committed(position, records)
                    p.report_lag(self._source.lag(p.key))
            return await self._flush_notes() and not broken, bool(lost)

    async def _checkpoint(
        self, moved: list[tuple[Partition, tuple[int, int]]]
    ) -> Mapping[Hashable, Exception]:
        """Commit `moved`; the partitions whose checkpoint failed, with why (none: {})."""
        if self._outputs is None:
            await self._source.commit({p.key: pos for p, (pos, _) in moved})
            return {}
        return await self._outputs.checkpoint(self._source, [(p, pos) for p, (pos, _) in moved])

    async def _flush_notes(self) -> bool:
        """Notes that changed with no position moved (a partition halted inside a batch)
        are written at the positions already checkpointed, so the halt outlives us."""
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await self._source.flush_notes()
        except OwnershipLost:
            pass  # the new owner's guard counts afresh from the last checkpoint's note
        except (ConnectionError, TimeoutError) as exc:
            self._failed(exc, [])
            return False
        return True

    def _failed(self, exc: Exception, partitions: list[Partition]) -> None:
        """Count every failed commit; log the first of an outage, not every retry."""
        self._failures.inc()
        error = str(exc) or f"not acknowledged within {self._timeout_s:g}s"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("event=commit_failed error=%r partitions=%s note='retrying; logged "
                        "once until commits recover'", error,
                        ",".join(p.label for p in partitions))  # fmt: skip
        else:
            log.debug("event=commit_failed error=%r", error)
