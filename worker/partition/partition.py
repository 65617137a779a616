"""One owned partition, and the only writer of its state.

The poll loop feeds fetched chunks in. With `parallelization_factor` 1 the partition
has one key lane: batches run one at a time in position order, and each batch is a
unit of the offset tracker. With N > 1 the records spread over N key lanes
(`key_lanes`), each run of `batch_size` fetched records being one tracker unit. Every
batch goes through the partition's step chain (`steps`); the ends the chain reports
resolved are finished in the tracker, whose finished prefix the committer checkpoints.

Everything about the partition (buffers, tracker, pause flag, checkpoint,
halt) is written here only. The committer, the backpressure controller and
the assignment registry call methods: `commit_point`/`mark_committed`,
`mark_paused`/`mark_resumed`, `start`/`stop`; observation reads `stats()`.

A full buffer asks the poll loop to pause the partition; draining below half
resumes it, so memory is bounded by the buffer limits whatever the lag. Every
change of the buffered bytes is told to `on_buffered(partition, delta)` (the
backpressure controller keeps the total and the age order from it, so nothing
sums over partitions per fetch); `hurry()` cuts the waiting partial batches
now, when their memory is wanted, instead of at the end of their window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from worker.observe.metrics import PartitionMetrics
from worker.observe.view import PartitionStats
from worker.outputs.ledger import OutputLedger
from worker.outputs.outbox import Output
from worker.partition.batcher import Batcher
from worker.partition.bounds import Bounds
from worker.partition.key_lanes import KeyLane, Segments
from worker.partition.offsets import OffsetTracker
from worker.partition.steps import Abandoned, PartitionContext, PartitionHalted, StepFactory
from worker.records import Batch, Record
from worker.sources.base import RecordTraits

log = logging.getLogger("worker.partition")


@dataclass(frozen=True, slots=True)
class PartitionSettings:
    batch_size: int
    max_batch_bytes: int
    batching_window_s: float
    key_lanes: int
    max_buffered_records: int
    max_buffered_bytes: int


class Partition:
    def __init__(
        self,
        key: Hashable,
        label: str,
        source: str,
        settings: PartitionSettings,
        traits: RecordTraits,
        steps: StepFactory,
        metrics: PartitionMetrics,
        on_progress: Callable[[Partition], None],
        on_drained: Callable[[Partition], None],
        clock: Callable[[], float] = time.monotonic,
        on_buffered: Callable[[Partition, int], None] | None = None,
    ) -> None:
        self.key = key
        self.label = label
        self._source = source
        self._traits = traits
        self._settings = settings
        self._bounds = Bounds(settings.max_buffered_records, settings.max_buffered_bytes)
        self._lanes = [
            KeyLane(Batcher(settings.batch_size, settings.max_batch_bytes,
                            settings.batching_window_s, traits.size))
            for _ in range(settings.key_lanes)
        ]  # fmt: skip
        self._single = len(self._lanes) == 1
        self._segments = Segments(self._lanes)
        self._metrics = metrics
        self._on_progress = on_progress
        self._on_drained = on_drained
        self._on_buffered = on_buffered or (lambda partition, delta: None)
        self._overhead = traits.overhead_bytes
        #: Estimated memory of the buffered records, kept as they come and go.
        self._buffered_bytes = 0
        self._clock = clock
        self._stop = asyncio.Event()
        # Read when scraped: a gauge's set per batch takes a lock.
        metrics.buffered.set_function(lambda: self.buffered_records)
        #: Outputs of resolved batches, until the checkpoint that covers them.
        self._outputs = OutputLedger()
        ctx = PartitionContext(key, label, source, metrics, self._stop, self._outputs.add)
        self._steps = steps(ctx)
        self.assigned_at = clock()
        self._tracker = OffsetTracker()
        self._sizes: dict[int, int] = {}  # tracker unit end -> records, until finished
        self._finished: dict[int, int] = {}  # then until committed
        self._fed_position: int | None = None
        self._paused = False
        self._releasing = False
        #: Why the dead-letter guard stopped this partition, if it did.
        self._halted: str | None = None
        #: Position last checkpointed by this owner, and records finished since then.
        self._committed: int | None = None
        self._uncommitted_records = 0
        #: Records fed and not yet finished: buffered, in flight, or handled by a lane that
        #: ran ahead of the low watermark. Backpressure bounds these, and apart the finished
        #: ones not yet committed, each by max_buffered_records: so what a crash can make
        #: the next owner redo stays within twice that (plus one fetch) even while commits
        #: fail, and normal commits never throttle a partition (`commit_due` hurries them).
        self._unfinished_records = 0

    # -- fed by the poll loop -------------------------------------------------------
    def feed(self, records: Sequence[Record]) -> bool:
        """Buffer a fetched chunk; True when the buffer is full and the partition should pause."""
        self._metrics.polled.inc(len(records))
        if self._fed_position is not None and records[0].position <= self._fed_position:
            # A re-delivery of what is already buffered (a fetch raced a seek): keep order.
            records = [r for r in records if r.position > self._fed_position]
            if not records:
                return self.full
        now = self._clock()
        if self._single:
            lane = self._lanes[0]
            nbytes = lane.batcher.add(records, now)
            lane.wake.set()
        else:
            before = sum(lane.batcher.bytes for lane in self._lanes)
            step = self._settings.batch_size
            for start in range(0, len(records), step):
                segment = records[start : start + step]
                end = self._segments.add(segment, now)
                self._tracker.open(end)
                self._sizes[end] = len(segment)
            nbytes = sum(lane.batcher.bytes for lane in self._lanes) - before
        self._fed_position = records[-1].position
        self._unfinished_records += len(records)
        self._buffered(nbytes + len(records) * self._overhead)
        return self.full

    def _buffered(self, delta: int) -> None:
        self._buffered_bytes += delta
        self._on_buffered(self, delta)

    def hurry(self) -> int:
        """Buffer pressure: cut the partial batches waiting for their window now. Returns
        the bytes this frees now: a lane running a batch cuts only once its call returns,
        and a stopped (halted) partition never."""
        if self._stop.is_set():
            return 0
        freed = 0
        for lane in self._lanes:
            batcher = lane.batcher
            if batcher.records:
                if not batcher.hurried:
                    batcher.hurry()
                    lane.wake.set()
                if not lane.busy:
                    freed += batcher.bytes + batcher.records * self._overhead
        return freed

    @property
    def buffered_records(self) -> int:
        return sum(lane.batcher.records for lane in self._lanes)

    @property
    def buffered_bytes(self) -> int:
        """Estimated memory of the buffered records: value bytes plus per-record overhead."""
        return self._buffered_bytes

    @property
    def unfinished_records(self) -> int:
        return self._unfinished_records

    @property
    def outstanding_records(self) -> int:
        """Fed and not yet committed: what the next owner would redo after a crash."""
        return self._unfinished_records + self._uncommitted_records

    @property
    def full(self) -> bool:  # outputs too: they wait in memory for their checkpoint
        held = max(self.buffered_bytes, self._outputs.bytes)
        return self._bounds.full(self._unfinished_records, self._uncommitted_records, held)

    @property
    def commit_due(self) -> bool:
        """A commit would take half an uncommitted bound off (`Bounds.commit_due`)."""
        return self._bounds.commit_due(self._uncommitted_records, self._outputs, self.commit_point)

    def below_low_water(self) -> bool:
        held = max(self.buffered_bytes, self._outputs.bytes)
        return self._bounds.below_low_water(
            self._unfinished_records, self._uncommitted_records, held
        )

    # -- told by others ---------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    def mark_paused(self) -> None:
        self._paused = True
        self._metrics.paused.set(1)

    def mark_resumed(self) -> None:
        self._paused = False
        self._metrics.paused.set(0)

    @property
    def releasing(self) -> bool:
        """Being drained for a revoke or shutdown: only its release commits it now."""
        return self._releasing

    @property
    def halted(self) -> str | None:
        return self._halted

    @property
    def committed(self) -> int | None:
        return self._committed

    def commit_point(self) -> tuple[int, int] | None:
        """(position, records) to checkpoint, if the finished prefix moved past the last one."""
        position = self._tracker.committable
        if position is not None and self._outputs.count:
            position = self._outputs.held_back(position)  # never inside a batch with outputs
        if position is None or position == self._committed:
            return None
        # With several lanes, units past a gap finished too: they are not covered yet.
        return position, sum(n for end, n in self._finished.items() if end <= position)

    def outputs_upto(self, position: int) -> list[Output]:
        """The outputs a checkpoint at `position` (a `commit_point`) must carry first."""
        return self._outputs.upto(position) if self._outputs.count else []

    def mark_outputs_sent(self, position: int) -> None:
        """Outputs up to `position` acknowledged: a retried commit skips them."""
        if self._outputs.count:
            self._outputs.drop_upto(position)

    def mark_committed(self, position: int, records: int) -> None:
        """The source checkpointed `position`, covering `records` finished records."""
        self.mark_outputs_sent(position)
        self._committed = position
        for end in [end for end in self._finished if end <= position]:
            del self._finished[end]
        self._uncommitted_records -= records
        self._metrics.records_committed(records, self._traits.shown_checkpoint(position))
        if self._paused and self.below_low_water():
            self._on_drained(self)

    @property
    def settled(self) -> bool:
        """Nothing buffered or in flight (a single lane opens a batch's unit only when it
        runs: a buffered record is in no unit yet), everything finished is committed."""
        return not (self._unfinished_records or self._stop.is_set() or self.commit_point())

    def pass_to(self, position: int) -> None:
        """The source moved past `position` with nothing left to deliver below it (Kafka's
        transaction markers): if settled, an empty unit ends there, so it is committed."""
        if self.settled and position > max(self._fed_position or -1, self._committed or -1):
            self._tracker.open(position)
            self._sizes[position] = 0
            self._fed_position = position
            self._finish([position])

    def report_lag(self, lag: int | None) -> None:
        """The source's record lag, when it counts one (read after fetches and commits)."""
        if lag is not None:
            self._metrics.lag.set(lag)

    def stats(self) -> PartitionStats:
        m = self._metrics
        committed = self._committed
        shown = None if committed is None else self._traits.shown_checkpoint(committed)
        return PartitionStats(
            key=self.key, label=self.label, assigned_at=self.assigned_at, committed=committed,
            shown_committed=shown, unfinished=self._unfinished_records,
            buffered=self.buffered_records, paused=self._paused, releasing=self._releasing,
            halted=self._halted, committed_records=m.committed_records,
            dead_lettered=m.dead_lettered_records, iterator_age_s=m.iterator_age_s,
            inflight=m.inflight, retrying=tuple(m.retrying.values()),
        )  # fmt: skip

    # -- the key lanes' tasks ----------------------------------------------------------
    def start(self) -> list[asyncio.Task[None]]:
        return [lane.start(self._run(lane), f"lane-{self.label}-{i}")
                for i, lane in enumerate(self._lanes)]  # fmt: skip

    async def _run(self, lane: KeyLane) -> None:
        batcher, cuts = lane.batcher, self._metrics.cuts
        while not self._stop.is_set():
            held = batcher.bytes
            records = batcher.take(self._clock())
            try:
                if records is None:
                    await self._wait_for_work(lane)
                    self._finish(await self._steps.poll())
                    continue
                self._buffered(batcher.bytes - held - len(records) * self._overhead)
                cuts[batcher.reason].inc()
                await lane.running(self._process(lane, Batch(records, self._source, self.label)))
                if self._paused and self.below_low_water():
                    self._on_drained(self)
            except Abandoned:
                return
            except PartitionHalted as exc:
                self._halt(str(exc))
                return

    async def _wait_for_work(self, lane: KeyLane) -> None:
        lane.wake.clear()
        deadline = lane.batcher.deadline()
        if (due := self._steps.deadline()) is not None:
            at = self._clock() + max(due - time.time(), 0.0)  # wall clock to our clock
            deadline = at if deadline is None else min(deadline, at)
        if deadline is None:
            await lane.wake.wait()
            return
        # `timeout`, not `wait_for`: no task per wait, so a wake-up runs the lane next turn
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - self._clock(), 0.0)):
                await lane.wake.wait()

    async def _process(self, lane: KeyLane, batch: Batch) -> None:
        end = batch.last_position
        if self._single:
            self._tracker.open(end)
            self._sizes[end] = len(batch)  # filtered records are committed too
        resolved = await self._steps.submit(batch, end)
        self._finish(resolved if self._single else self._segments.done(lane, end))

    def _finish(self, unit_ends: Sequence[int]) -> None:
        """Mark tracker units resolved; the committer then checkpoints the finished prefix."""
        if not unit_ends:
            return
        for end in unit_ends:
            self._tracker.finish(end)
            size = self._sizes.pop(end)
            self._finished[end] = size
            self._uncommitted_records += size
            self._unfinished_records -= size
        self._on_progress(self)

    def _halt(self, why: str) -> None:
        """Stop the whole partition: nothing more is invoked or committed until a restart."""
        self._halted = why
        self._stop.set()
        for lane in self._lanes:
            lane.wake.set()
        self._metrics.halted.set(1)
        self._on_progress(self)  # the guard's note is checkpointed even if nothing moved
        committed = self._committed
        log.error("event=partition_halted partition=%s committed=%s reason=%r note='nothing "
                  "past the committed position is handled or committed; fix the handler and "
                  "restart'", self.label,
                  None if committed is None else self._traits.shown_checkpoint(committed),
                  why)  # fmt: skip

    # -- stopping -----------------------------------------------------------------------
    async def stop(self, timeout_s: float, reason: str = "revoke") -> None:
        """Take no new batch; let those in flight finish within `timeout_s`, else abandon them.

        The partial batches still waiting are dropped uninvoked (the next owner reads them
        again), counted as cut for `reason` (revoke or shutdown). After this returns,
        `commit_point` covers exactly the work that finished.
        """
        self._releasing = True
        self._stop.set()
        for lane in self._lanes:
            lane.wake.set()
            if lane.batcher.clear():
                self._metrics.cuts[reason].inc()
        if self._buffered_bytes:
            self._buffered(-self._buffered_bytes)
        tasks = {
            lane.task for lane in self._lanes if lane.task is not None and not lane.task.done()
        }
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            log.warning("event=batch_abandoned partition=%s batches=%d reason=deadline "
                        "timeout_s=%s note='left uncommitted; it will be handled again'",
                        self.label, len(pending), timeout_s)  # fmt: skip
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def forget(self) -> None:
        """The partition left this worker: remove its gauges."""
        self._metrics.forget()
