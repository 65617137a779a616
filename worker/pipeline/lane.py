"""One owned partition: its buffer, its batcher, and one batch in flight at a time.

The poll loop feeds fetched chunks in; the lane's task cuts batches and hands
each to the failure policy, which returns only once the batch is resolved.
Then the offset tracker advances and the committer is told. A full buffer
asks the poll loop to pause the partition; draining below half resumes it,
so memory is bounded by the buffer limits whatever the lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from worker.metrics import PartitionMetrics
from worker.pipeline.batcher import Batcher
from worker.pipeline.failure_policy import Abandoned, FailurePolicy
from worker.pipeline.filtering import RecordFilter
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.windows import TumblingWindows
from worker.records import Batch

log = logging.getLogger("worker.lane")


class PartitionLane:
    def __init__(
        self,
        key: Hashable,
        label: str,
        source_name: str,
        batcher: Batcher,
        policy: FailurePolicy,
        metrics: PartitionMetrics,
        max_records: int,
        max_bytes: int,
        on_progress: Callable[[], None],
        on_drained: Callable[[PartitionLane], None],
        record_filter: RecordFilter | None = None,
        windows: TumblingWindows | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.label = label
        self._source_name = source_name
        self._batcher = batcher
        self._policy = policy
        self.metrics = metrics
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._on_progress = on_progress
        self._on_drained = on_drained
        self._filter = record_filter
        self._windows = windows
        self._clock = clock
        self.tracker = OffsetTracker()
        self.paused = False
        #: Position last checkpointed by this owner, and records done since then.
        self.committed: int | None = None
        self.uncommitted_records = 0
        self._sizes: dict[int, int] = {}  # batch end -> records, until finished
        self._fed_position: int | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- fed by the poll loop -------------------------------------------------
    def feed(self, records: Sequence[Any]) -> bool:
        """Buffer a fetched chunk; True when the buffer is full and the partition should pause."""
        if self._fed_position is not None and records[0].position <= self._fed_position:
            # A re-delivery of what is already buffered (a fetch raced a seek): keep order.
            records = [r for r in records if r.position > self._fed_position]
            if not records:
                return self.full
        self._batcher.add(records, self._clock())
        self._fed_position = records[-1].position
        self.metrics.buffered.set(self._batcher.records)
        self._wake.set()
        return self.full

    @property
    def full(self) -> bool:
        return self._batcher.records >= self._max_records or self._batcher.bytes >= self._max_bytes

    @property
    def committable(self) -> int | None:
        return self.tracker.committable

    # -- the lane's own task ----------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"lane-{self.label}")
        return self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            records = self._batcher.take(self._clock())
            if records is None:
                await self._wait_for_work()
                if self._windows is not None:
                    try:
                        self._finish(
                            await self._windows.close_if_idle(self.label, self.metrics, self._stop)
                        )
                    except Abandoned:
                        return
                continue
            self.metrics.buffered.set(self._batcher.records)
            if self.paused and self._below_low_water():
                self._on_drained(self)
            try:
                await self._process(Batch(records, self._source_name, self.label))
            except Abandoned:
                return

    def _below_low_water(self) -> bool:
        return (
            self._batcher.records <= self._max_records // 2
            and self._batcher.bytes <= self._max_bytes // 2
        )

    async def _wait_for_work(self) -> None:
        self._wake.clear()
        deadline = self._batcher.deadline()
        if self._windows is not None and (closes := self._windows.idle_deadline()) is not None:
            at = self._clock() + max(closes - time.time(), 0.0)  # wall clock to our clock
            deadline = at if deadline is None else min(deadline, at)
        if deadline is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(deadline - self._clock(), 0.0))

    async def _process(self, batch: Batch) -> None:
        last = batch.last_position
        self.tracker.open(last)
        self._sizes[last] = len(batch)  # filtered records are committed too
        if self._filter is not None:
            kept = self._filter.keep(batch.records)
            if len(kept) < len(batch):
                self.metrics.filtered.inc(len(batch) - len(kept))
                batch = Batch(kept, batch.source, batch.partition)
        if self._windows is not None:
            self._finish(await self._windows.process(batch, last, self.metrics, self._stop))
            return
        if batch.records:
            await self._policy.resolve(batch, self.metrics, self._stop)
        self._finish([last])

    def _finish(self, batch_ends: list[int]) -> None:
        """Mark batches resolved; the committer then checkpoints the finished prefix."""
        if not batch_ends:
            return
        for last in batch_ends:
            self.tracker.finish(last)
            self.uncommitted_records += self._sizes.pop(last)
        self._on_progress()

    # -- stopping ---------------------------------------------------------------
    async def stop(self, timeout_s: float) -> None:
        """Take no new batch; let the one in flight finish within `timeout_s`, else abandon it.

        After this returns, `committable` covers exactly the batches that finished.
        """
        self._stop.set()
        self._wake.set()
        self._batcher.clear()
        task = self._task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            log.warning(
                "event=batch_abandoned partition=%s reason=deadline timeout_s=%s "
                "note='left uncommitted; it will be handled again'",
                self.label,
                timeout_s,
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
