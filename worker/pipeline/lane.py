"""One owned partition: its buffer, its key lanes, and its offset tracker.

The poll loop feeds fetched chunks in. With `parallelization_factor` 1 the
partition has one key lane: batches run one at a time in position order, and
each batch is a unit of the offset tracker. With N > 1, records are routed to
N key lanes by a stable hash of the key (records without a key by their
position, round-robin), so records of one key stay in order; the lanes batch
and invoke concurrently. Each run of `batch_size` fetched records is then a
unit of the tracker (a segment), finished once every lane has resolved its
slice of it, so the committed
position is the low watermark across lanes and never passes an unfinished
record, whatever order the lanes finish in. Routing is the only per-record
step, and only when N > 1.

A full buffer asks the poll loop to pause the partition; draining below half
resumes it, so memory is bounded by the buffer limits whatever the lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any
from zlib import crc32

from worker.metrics import PartitionMetrics
from worker.pipeline.batcher import Batcher
from worker.pipeline.dlq_guard import DeadLetterGuard, PartitionHalted
from worker.pipeline.failure_policy import Abandoned, FailurePolicy
from worker.pipeline.filtering import RecordFilter
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.windows import TumblingWindows
from worker.records import Batch

log = logging.getLogger("worker.lane")

#: Memory a buffered record costs beyond its value bytes: aiokafka's record object (measured
#: with tracemalloc: 244 B) plus the key and value bytes objects' headers. Counted against
#: the buffer limits, so that they bound what RSS sees.
RECORD_OVERHEAD_BYTES = 320


def route(records: Sequence[Any], lanes: int) -> list[list[Any]]:
    """Split records into `lanes` ordered lists by crc32 of the key (keyless: by position)."""
    buckets: list[list[Any]] = [[] for _ in range(lanes)]
    add = [b.append for b in buckets]
    for r in records:
        key = r.key
        add[(crc32(key) if key is not None else r.position) % lanes](r)
    return buckets


class _KeyLane:
    """One ordered run of a partition's records: its batcher and its task."""

    __slots__ = ("batcher", "slices", "task", "wake")

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: (last position of this lane's slice of a segment, the segment's end), in order.
        self.slices: deque[tuple[int, int]] = deque()


class PartitionLane:
    def __init__(
        self,
        key: Hashable,
        label: str,
        source_name: str,
        batchers: Sequence[Batcher],
        policy: FailurePolicy,
        metrics: PartitionMetrics,
        max_records: int,
        max_bytes: int,
        on_progress: Callable[[], None],
        on_drained: Callable[[PartitionLane], None],
        record_filter: RecordFilter | None = None,
        windows: TumblingWindows | None = None,
        guard: DeadLetterGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if windows is not None and len(batchers) > 1:
            raise ValueError("tumbling windows need one key lane per partition")
        self.key = key
        self.label = label
        self._source_name = source_name
        self._lanes = [_KeyLane(b) for b in batchers]
        self._single = len(self._lanes) == 1
        #: With several lanes, runs of this many fetched records are one tracker unit: small
        #: enough that a crash redoes little, large enough that tracking stays per batch.
        self._segment_records = batchers[0].batch_size
        self._policy = policy
        self.metrics = metrics
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._on_progress = on_progress
        self._on_drained = on_drained
        self._filter = record_filter
        self._windows = windows
        self.guard = guard or DeadLetterGuard(1.0, 0)
        if windows is not None:
            windows.guard = self.guard
        #: Why the dead-letter guard stopped this partition, if it did.
        self.halted: str | None = None
        self._clock = clock
        self.tracker = OffsetTracker()
        self.paused = False
        #: Position last checkpointed by this owner, and records done since then.
        self.committed: int | None = None
        self.uncommitted_records = 0
        self._sizes: dict[int, int] = {}  # tracker unit end -> records, until finished
        self._segment_pending: dict[int, int] = {}  # segment end -> lanes holding a slice
        self._fed_position: int | None = None
        #: Records fed and not yet finished: buffered, in flight, or handled by a lane that
        #: ran ahead of the low watermark. Backpressure counts these, so what a crash can
        #: make the next owner redo is bounded by max_buffered_records (plus one fetch).
        self.unfinished_records = 0
        self._stop = asyncio.Event()

    # -- fed by the poll loop -------------------------------------------------------
    def feed(self, records: Sequence[Any]) -> bool:
        """Buffer a fetched chunk; True when the buffer is full and the partition should pause."""
        if self._fed_position is not None and records[0].position <= self._fed_position:
            # A re-delivery of what is already buffered (a fetch raced a seek): keep order.
            records = [r for r in records if r.position > self._fed_position]
            if not records:
                return self.full
        now = self._clock()
        if self._single:
            lane = self._lanes[0]
            lane.batcher.add(records, now)
            lane.wake.set()
        else:
            step = self._segment_records
            for start in range(0, len(records), step):
                self._add_segment(records[start : start + step], now)
        self._fed_position = records[-1].position
        self.unfinished_records += len(records)
        self.metrics.buffered.set(self.buffered_records)
        return self.full

    def _add_segment(self, records: Sequence[Any], now: float) -> None:
        """Route a run of records to the key lanes; it is one tracker unit until all are done."""
        end = records[-1].position
        self.tracker.open(end)
        self._sizes[end] = len(records)
        holders = 0
        for lane, part in zip(self._lanes, route(records, len(self._lanes)), strict=True):
            if part:
                lane.batcher.add(part, now)
                lane.slices.append((part[-1].position, end))
                lane.wake.set()
                holders += 1
        self._segment_pending[end] = holders

    @property
    def buffered_records(self) -> int:
        return sum(lane.batcher.records for lane in self._lanes)

    @property
    def buffered_bytes(self) -> int:
        """Estimated memory of the buffered records: value bytes plus per-record overhead."""
        return sum(
            lane.batcher.bytes + lane.batcher.records * RECORD_OVERHEAD_BYTES
            for lane in self._lanes
        )

    @property
    def full(self) -> bool:
        return (
            self.unfinished_records >= self._max_records or self.buffered_bytes >= self._max_bytes
        )

    @property
    def committable(self) -> int | None:
        return self.tracker.committable

    # -- the key lanes' tasks ----------------------------------------------------------
    def start(self) -> list[asyncio.Task[None]]:
        for i, lane in enumerate(self._lanes):
            lane.task = asyncio.create_task(self._run(lane), name=f"lane-{self.label}-{i}")
        return [lane.task for lane in self._lanes if lane.task is not None]

    async def _run(self, lane: _KeyLane) -> None:
        while not self._stop.is_set():
            records = lane.batcher.take(self._clock())
            try:
                if records is None:
                    await self._wait_for_work(lane)
                    if self._windows is not None:
                        closed = await self._windows.close_if_idle(
                            self.label, self.metrics, self._stop
                        )
                        self._finish(closed)
                    continue
                self.metrics.buffered.set(self.buffered_records)
                await self._process(lane, Batch(records, self._source_name, self.label))
                if self.paused and self.below_low_water():
                    self._on_drained(self)
            except Abandoned:
                return
            except PartitionHalted as exc:
                self._halt(str(exc))
                return

    def below_low_water(self) -> bool:
        return (
            self.unfinished_records <= self._max_records // 2
            and self.buffered_bytes <= self._max_bytes // 2
        )

    async def _wait_for_work(self, lane: _KeyLane) -> None:
        lane.wake.clear()
        deadline = lane.batcher.deadline()
        if self._windows is not None and (closes := self._windows.idle_deadline()) is not None:
            at = self._clock() + max(closes - time.time(), 0.0)  # wall clock to our clock
            deadline = at if deadline is None else min(deadline, at)
        if deadline is None:
            await lane.wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lane.wake.wait(), max(deadline - self._clock(), 0.0))

    async def _process(self, lane: _KeyLane, batch: Batch) -> None:
        last = batch.last_position
        if self._single:
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
            await self._policy.resolve(batch, self.metrics, self._stop, self.guard)
        self._finish([last] if self._single else self._slices_done(lane, last))

    def _slices_done(self, lane: _KeyLane, last: int) -> list[int]:
        """The segments whose last open slice was this lane's, up to position `last`."""
        done = []
        while lane.slices and lane.slices[0][0] <= last:
            _, end = lane.slices.popleft()
            self._segment_pending[end] -= 1
            if not self._segment_pending[end]:
                del self._segment_pending[end]
                done.append(end)
        return done

    def _finish(self, unit_ends: list[int]) -> None:
        """Mark tracker units resolved; the committer then checkpoints the finished prefix."""
        if not unit_ends:
            return
        for end in unit_ends:
            self.tracker.finish(end)
            size = self._sizes.pop(end)
            self.uncommitted_records += size
            self.unfinished_records -= size
        self._on_progress()

    def _halt(self, why: str) -> None:
        """Stop the whole partition: nothing more is invoked or committed until a restart."""
        self.halted = why
        self._stop.set()
        for lane in self._lanes:
            lane.wake.set()
        self.metrics.halted.set(1)
        log.error(
            "event=partition_halted partition=%s committed=%s reason=%r note='nothing past "
            "the committed offset is handled or committed; fix the handler and restart'",
            self.label,
            None if self.committed is None else self.committed + 1,
            why,
        )

    # -- stopping -----------------------------------------------------------------------
    async def stop(self, timeout_s: float) -> None:
        """Take no new batch; let those in flight finish within `timeout_s`, else abandon them.

        After this returns, `committable` covers exactly the work that finished.
        """
        self._stop.set()
        for lane in self._lanes:
            lane.wake.set()
            lane.batcher.clear()
        tasks = {
            lane.task for lane in self._lanes if lane.task is not None and not lane.task.done()
        }
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            log.warning(
                "event=batch_abandoned partition=%s batches=%d reason=deadline timeout_s=%s "
                "note='left uncommitted; it will be handled again'",
                self.label,
                len(pending),
                timeout_s,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
