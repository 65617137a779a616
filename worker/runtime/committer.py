"""Checkpoints the partitions' finished positions at the source, coalescing commits.

One commit is in flight at a time. A partition that finished work calls
`notify(partition)`; the committer then commits every partition that told it
so, waits at least `interval_s`, and goes again if more finished meanwhile.
Under load that coalesces many batches per commit; when idle, a finished
batch is committed at once. Revoke and shutdown call `commit_now()` directly.
The committer reads each partition's `commit_point()` and reports back with
`mark_committed()`; it writes no partition's state itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from contextlib import nullcontext

from worker.observe.metrics import Metrics
from worker.observe.tracing import Tracing
from worker.partition.partition import Partition
from worker.sources.base import OwnershipLost, Source

log = logging.getLogger("worker.committer")

#: A commit not acknowledged in this long counts as failed and is tried again (the
#: Kafka client retries internally for as long as the coordinator is unreachable).
COMMIT_TIMEOUT_S = 10.0


class Committer:
    def __init__(
        self, source: Source, interval_s: float, metrics: Metrics, tracing: Tracing | None = None
    ) -> None:
        self._source = source
        self._tracing = tracing
        self._interval_s = interval_s
        self._failures = metrics.commit_failures.labels(source.name)
        self._refused = metrics.commits_refused.labels(source.name)
        self._dirty: set[Partition] = set()
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None

    def notify(self, partition: Partition) -> None:
        self._dirty.add(partition)
        self._wanted.set()

    def forget(self, partitions: Iterable[Partition]) -> None:
        self._dirty.difference_update(partitions)

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            dirty, self._dirty = self._dirty, set()
            # A partition being released is committed by its release, and only there: a
            # stale offer of it would make Kafka refuse the whole call.
            dirty = {p for p in dirty if not p.releasing}
            if not await self.commit_now(dirty):
                self._dirty |= {p for p in dirty if not p.releasing}
                self._wanted.set()  # retry after the interval
            await asyncio.sleep(self._interval_s)

    async def commit_now(self, partitions: Iterable[Partition]) -> bool:
        """Commit what the given partitions finished; False if the source refused for now."""
        async with self._lock:
            moved = [(p, point) for p in partitions if (point := p.commit_point()) is not None]
            if not moved:
                return await self._flush_notes()
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT_S):
                    span = self._tracing.commit(len(moved)) if self._tracing else nullcontext()
                    with span:
                        await self._source.commit({p.key: pos for p, (pos, _) in moved})
            except OwnershipLost as exc:
                # Those partitions were taken away (a rebalance, a lost lease): their work
                # past the last commit will be redone by the new owner. The others of the
                # same call were checkpointed.
                refused = [m for m in moved if m[0].key in exc.lost]
                self._refused.inc(len(refused))
                log.warning(
                    "event=commit_refused reason=ownership_lost partitions=%s detail=%r "
                    "note='the new owner redoes what was handled past the last commit'",
                    ",".join(f"{p.label}@{pos}" for p, (pos, _) in refused), str(exc),
                )  # fmt: skip
                moved = [m for m in moved if m[0].key not in exc.lost]
            except (ConnectionError, TimeoutError) as exc:
                self._failed(exc, [p for p, _ in moved])
                return False
            if self._failing_since is not None and moved:  # a refusal of all is no recovery
                log.info("event=commits_recovered after_s=%.1f",
                         time.monotonic() - self._failing_since)  # fmt: skip
                self._failing_since = None
            for p, (position, records) in moved:
                p.mark_committed(position, records)
                p.report_lag(self._source.lag(p.key))
            return await self._flush_notes()

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
        error = str(exc) or f"not acknowledged within {COMMIT_TIMEOUT_S:g}s"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("event=commit_failed error=%r partitions=%s note='retrying; logged "
                        "once until commits recover'", error,
                        ",".join(p.label for p in partitions))  # fmt: skip
        else:
            log.debug("event=commit_failed error=%r", error)
