"""The partitions this worker owns: opened on assignment, drained and committed on release.

The source awaits `on_assigned` / `on_revoked` (the `AssignmentListener`
contract), so a revoked partition is drained within `rebalance_timeout_s`
and its finished work committed before the source gives it away. A release
takes its partitions out of the registry first, so a revoke that arrives
during shutdown (or twice) finds nothing left to release again.

A revoked partition is released only when nothing of it runs any more. Past the
deadline its batches are abandoned: a coroutine is cancelled, a handler process
is killed (the release waits until it has exited), but a thread cannot be
stopped. While one still runs, `on_revoked` does not return, so the source keeps
the partition from its next owner (`revoke_blocked`, logged and counted), up to
the source's hold limit (`hold_s`, from the revoke's start: what the source can
keep a partition for, e.g. Kafka's rebalance timeout less a margin). Past that the
worker fails stop: it asks to exit 3 and never returns from the revoke, so it ends
without rejoining, without committing more of the partition than was handled, and
without a zombie beside the next owner (the daemon's backstop bounds the exit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, NoReturn, Protocol

from worker.observe.metrics import Metrics
from worker.observe.view import PartitionStats
from worker.partition.partition import Partition
from worker.runtime.backpressure import Backpressure
from worker.runtime.committer import Committer
from worker.runtime.deadline import Deadline, bounded
from worker.runtime.settle import Settler
from worker.runtime.tasks import TaskSupervisor
from worker.sources.base import Source

log = logging.getLogger("worker")

#: The exit status of a worker whose revoked partition's handler call outlived the hold
#: limit (the same as a stalled worker's: restart it).
EXIT_REVOKE_STUCK = 3
#: How long past the deadline a cancelled lane may take to end before it counts as
#: still running (a coroutine handler cleaning up after its cancellation).
CANCEL_GRACE_S = 0.5


class RunningCalls(Protocol):
    """Handler calls given up on that may still run (the invoker's pool calls)."""

    def running_s(self, partition: str, threads_only: bool = False) -> float | None: ...

    async def returned(self, partition: str) -> None: ...


#: Builds a partition for a key, given its progress, drained and buffered callbacks.
PartitionFactory = Callable[
    [
        Hashable,
        Callable[[Partition], None],
        Callable[[Partition], None],
        Callable[[Partition, int], None],
    ],
    Partition,
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
        calls: RunningCalls | None = None,
        hold_s: float | None = None,
        fail_stop: Callable[[int], None] | None = None,
    ) -> None:
        """`hold_s`: how long from a revoke's start the source keeps a partition from its
        next owner (None: no longer than `rebalance_timeout_s`); `fail_stop(code)` asks
        the worker to exit when a revoked partition's call outlives it."""
        self._source = source
        self._new_partition = new_partition
        self._committer = committer
        self._backpressure = backpressure
        self._tasks = tasks
        self._rebalance_timeout_s = rebalance_timeout_s
        self._calls = calls
        self._hold_s = max(rebalance_timeout_s, hold_s or 0.0)
        self._fail_stop = fail_stop
        self._m_blocked = metrics.revoke_blocked
        self._partitions: dict[Hashable, Partition] = {}
        #: Partitions being drained by a release, until it is over (a loss cuts it short).
        self._draining: dict[Hashable, Partition] = {}
        self._m_assigned = metrics.assigned_partitions.labels(source.name)
        self._m_rebalances = metrics.rebalances.labels(source.name)
        #: Commits settled partitions past what the source skipped (the main loop runs it).
        self.settler = Settler(source, self.partitions)
        #: Whether the source has told us our share at least once (readiness waits for it).
        self.assigned_once = False
        #: A revoked partition's call outlived the hold: the worker must end without
        #: giving anything away (its source is not stopped; leases expire, the group
        #: drops the member), so the call never runs beside the next owner.
        self.stuck = False

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
        await self._committer.taking(keys)  # exactly once: earlier owners are fenced first
        for key in keys:
            if key not in self._partitions:
                p = self._partitions[key] = self._new_partition(
                    key, self._committer.notify, self._drained, self._backpressure.held
                )
                for task in p.start():
                    self._tasks.watch(task, f"lane {p.label}")
        self._m_assigned.set(len(self._partitions))
        self._backpressure.owned_changed(len(self._partitions))
        log.info("event=assigned partitions=%s", ",".join(map(self._source.label, keys)))

    async def on_revoked(self, keys: Sequence[Hashable]) -> None:
        self._m_rebalances.inc()
        hold = Deadline(self._hold_s)
        await self.release(keys, Deadline(self._rebalance_timeout_s), reason="revoked", hold=hold)
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

    async def release(
        self,
        keys: Sequence[Hashable],
        deadline: Deadline,
        reason: str,
        hold: Deadline | None = None,
    ) -> None:
        """Drain the partitions of `keys` and commit their finished work, both before the
        deadline; with `hold`, wait until nothing of them runs (within `hold`, else fail
        stop); drop them."""
        leaving = [p for k in keys if (p := self._partitions.pop(k, None)) is not None]
        if not leaving:
            return
        self._m_assigned.set(len(self._partitions))
        self._draining.update((p.key, p) for p in leaving)
        try:
            why = "shutdown" if reason == "shutdown" else "revoke"
            stops = {asyncio.ensure_future(p.stop(deadline.left(), why)): p for p in leaving}
            if hold is None:
                await asyncio.gather(*stops)
            else:
                await asyncio.wait(stops, timeout=deadline.left() + CANCEL_GRACE_S)
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
        if hold is not None:
            lanes = {p: stop for stop, p in stops.items() if not stop.done()}
            await self._hold(leaving, lanes, hold)
        self._committer.forget(leaving)
        await self._committer.released([p.key for p in leaving])
        for p in leaving:
            p.forget()
        self._backpressure.forget(leaving)
        # Last: a source failing to fit its prefetch must not cut the release short (the
        # partitions are no longer owned: undrained, they would run beside the next owner).
        self._backpressure.owned_changed(len(self._partitions))

    async def _hold(
        self, leaving: list[Partition], lanes: dict[Partition, asyncio.Future[None]],
        hold: Deadline,
    ) -> None:  # fmt: skip
        """Return once nothing of `leaving` runs: neither a lane still ending (`lanes`:
        its stop) nor a handler call given up on. Past `hold`, fail stop."""
        calls, waits = self._calls, {}
        for p in leaving:
            stop = lanes.get(p)
            if stop is None and (calls is None or calls.running_s(p.label) is None):
                continue
            waits[asyncio.ensure_future(self._ended(p, stop))] = p
            thread_s = calls.running_s(p.label, threads_only=True) if calls else None
            if stop is None and thread_s is None:
                continue  # only a handler process being killed: gone in a moment
            self._m_blocked.labels(self._source.name, p.label).inc()
            log.warning(
                "event=revoke_blocked partition=%s running_s=%.1f hold_left_s=%.1f "
                "note='a handler call of the revoked partition still runs and cannot be "
                "stopped: the partition is not released until it returns'", p.label,
                thread_s if thread_s is not None else self._hold_s - hold.left(), hold.left(),
            )  # fmt: skip
        if not waits:
            return
        started = time.monotonic()
        _, pending = await asyncio.wait(waits, timeout=hold.left())
        if pending:
            await self._stop_worker(sorted(waits[w].label for w in pending))
        log.info("event=revoke_unblocked partitions=%s waited_s=%.1f",
                 ",".join(p.label for p in waits.values()), time.monotonic() - started)  # fmt: skip

    async def _ended(self, partition: Partition, stop: asyncio.Future[None] | None) -> None:
        if stop is not None:
            await asyncio.shield(stop)
        if self._calls is not None:
            await self._calls.returned(partition.label)

    async def _stop_worker(self, labels: list[str]) -> NoReturn:
        """A revoked partition's call outlived the hold: end the worker, never return.

        Returning would let the source give the partition away (Kafka: rejoin the group)
        while the call runs on. Not returning keeps it held until the process is gone:
        the worker's shutdown cannot leave the group while this revoke is pending (the
        client waits for its callback), and the daemon's backstop ends the process within
        its short budget, and the call with it."""
        log.error(
            "event=revoke_hold_exceeded partitions=%s hold_s=%.1f exit_code=%d note='a "
            "handler call of a revoked partition still runs; ending the worker so that it "
            "never runs beside the next owner, which redoes it from the last commit'",
            ",".join(labels), self._hold_s, EXIT_REVOKE_STUCK,
        )  # fmt: skip
        self.stuck = True
        if self._fail_stop is not None:
            self._fail_stop(EXIT_REVOKE_STUCK)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _commit(self, partitions: list[Partition]) -> None:
        if not await self._committer.commit_now(partitions):
            raise ConnectionError("the source refused the commit")

    def _drained(self, partition: Partition) -> None:
        if self._partitions.get(partition.key) is partition:  # not released meanwhile
            self._backpressure.drained(partition)
