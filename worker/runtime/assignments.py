"""The partitions this worker owns: opened on assignment, drained and committed on release.

The source awaits `on_assigned` / `on_revoked` (the `AssignmentListener`
contract), so a revoked partition is drained within `rebalance_timeout_s`
and its finished work committed before the source gives it away. A release
takes its partitions out of the registry first, so a revoke that arrives
during shutdown (or twice) finds nothing left to release again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any

from worker.observe.metrics import Metrics
from worker.observe.view import PartitionStats
from worker.partition.partition import Partition
from worker.runtime.backpressure import Backpressure
from worker.runtime.committer import Committer
from worker.runtime.deadline import Deadline, bounded
from worker.runtime.tasks import TaskSupervisor
from worker.sources.base import Source

log = logging.getLogger("worker")

#: Builds a partition for a key, given its progress and drained callbacks.
PartitionFactory = Callable[
    [Hashable, Callable[[Partition], None], Callable[[Partition], None]], Partition
]


class Assignments:
    def __init__(
        self,
        source: Source,
        new_partition: PartitionFactory,
        committer: Committer,
        backpressure: Backpressure,
        tasks: TaskSupervisor,
        metrics: Metrics,
        rebalance_timeout_s: float,
    ) -> None:
        self._source = source
        self._new_partition = new_partition
        self._committer = committer
        self._backpressure = backpressure
        self._tasks = tasks
        self._rebalance_timeout_s = rebalance_timeout_s
        self._partitions: dict[Hashable, Partition] = {}
        #: Partitions being drained by a release, until it is over (a loss cuts it short).
        self._draining: dict[Hashable, Partition] = {}
        self._m_assigned = metrics.assigned_partitions.labels(source.name)
        self._m_rebalances = metrics.rebalances.labels(source.name)
        #: Whether the source has told us our share at least once (readiness waits for it).
        self.assigned_once = False

    def get(self, key: Hashable) -> Partition | None:
        return self._partitions.get(key)

    def partitions(self) -> list[Partition]:
        return list(self._partitions.values())

    def stats(self) -> list[PartitionStats]:
        return [p.stats() for p in self._partitions.values()]

    # -- the AssignmentListener contract -------------------------------------------------
    async def on_assigned(self, keys: Sequence[Hashable]) -> None:
        self.assigned_once = True
        self._m_rebalances.inc()
        for key in keys:
            if key not in self._partitions:
                p = self._partitions[key] = self._new_partition(
                    key, self._committer.notify, self._drained
                )
                for task in p.start():
                    self._tasks.watch(task, f"lane {p.label}")
        self._m_assigned.set(len(self._partitions))
        log.info("event=assigned partitions=%s", ",".join(map(self._source.label, keys)))

    async def on_revoked(self, keys: Sequence[Hashable]) -> None:
        self._m_rebalances.inc()
        await self.release(keys, Deadline(self._rebalance_timeout_s), reason="revoked")
        log.info("event=revoked partitions=%s", ",".join(map(self._source.label, keys)))

    async def on_lost(self, keys: Sequence[Hashable]) -> None:
        """Taken away without a hand-over (a fenced lease): start no new batch, abandon
        those in flight at once (a drain under way too), commit nothing more of them."""
        self._m_rebalances.inc()
        draining = [p for k in keys if (p := self._draining.get(k)) is not None]
        await asyncio.gather(*(p.stop(0) for p in draining))
        await self.release(keys, Deadline(0), reason="lost")
        log.info("event=lost partitions=%s", ",".join(map(self._source.label, keys)))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A long-lived task of the source's, supervised like the lanes."""
        return self._tasks.spawn(coro, name)

    # -- releasing ---------------------------------------------------------------------------
    async def release_all(self, deadline: Deadline) -> None:
        await self.release(list(self._partitions), deadline, reason="shutdown")

    async def release(self, keys: Sequence[Hashable], deadline: Deadline, reason: str) -> None:
        """Drain the partitions of `keys` and commit their finished work, both before the
        deadline; drop them."""
        leaving = [p for k in keys if (p := self._partitions.pop(k, None)) is not None]
        if not leaving:
            return
        self._m_assigned.set(len(self._partitions))
        self._draining.update((p.key, p) for p in leaving)
        try:
            await asyncio.gather(*(p.stop(deadline.left()) for p in leaving))
        finally:
            for p in leaving:
                self._draining.pop(p.key, None)
        committed = await bounded(self._commit(leaving), deadline.left(), "final_commit")
        if not committed:
            log.warning(
                "event=final_commit_failed reason=%s partitions=%s note='work past these "
                "committed positions will be redone'", reason,
                ",".join(f"{p.label}@{p.stats().shown_committed}" for p in leaving),
            )  # fmt: skip
        self._committer.forget(leaving)
        for p in leaving:
            p.forget()

    async def _commit(self, partitions: list[Partition]) -> None:
        if not await self._committer.commit_now(partitions):
            raise ConnectionError("the source refused the commit")

    def _drained(self, partition: Partition) -> None:
        if self._partitions.get(partition.key) is partition:  # not released meanwhile
            self._backpressure.drained(partition, list(self._partitions.values()))
