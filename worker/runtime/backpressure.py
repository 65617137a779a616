"""Pauses partitions whose buffers are full and resumes them once drained: the only caller
of `source.pause` / `source.resume`.

Two limits: per partition, its unfinished records and buffered bytes
(`runtime.max_buffered_records`, `max_buffered_bytes`); globally, the
estimated memory of every buffer together (`runtime.memory_budget_bytes`).
Over the budget every partition pauses, so all buffers together stay within
the budget plus one fetch. A paused partition resumes once it is below its
own low water and holds less than half of its fair share of the budget
(budget / partitions owned): whatever the others hold. Resuming on the
total instead would let partitions stuck on a poison record, which keep
their buffers, starve every healthy one for as long as they hold half the
budget. A paused partition that holds nothing at all may take one more
fetch even over the budget (the next check pauses it again): it runs no
batch, so nothing else would ever wake it.

Buffer pressure cuts batches: partial batches waiting for their window hold
memory, so while the budget (or a partition's own limit) is what holds
partitions back, the oldest waiting ones are cut now (`Partition.hurry`)
until what is left is half the budget. Waiting batches then never starve
the rest, and the window stays an upper bound on waiting, as in Lambda.
The cuts begin at three quarters of the budget, before anything must pause:
a paused partition's prefetched data is dropped by the client and fetched
again on resume, which at 256 partitions, batch 500 and a 500 ms window (more
partial batches than the default budget holds) cost a third of the rate.

Per fetch the work is per partition the fetch touched, never per partition
owned: the partitions report every change of their buffered bytes
(`held`), which keeps the total and the order in which they began waiting;
only the crossing of the budget pauses every partition, and the checks
after it look at the partitions held back (paused, drained, waiting for
their share) rather than at all of them.

The budget is the process's, not only the pipeline's: the client's records
fetched ahead (aiokafka keeps up to a fetch size per assigned partition) are
part of it. On every assignment change the source is told its share,
`PREFETCH_SHARE` of the budget for the partitions owned, sets its client's
fetch limits from it and answers what it may hold at most; the pipeline's
buffers get the rest. So memory does not grow with the partition count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from worker.observe.metrics import Metrics
from worker.partition.partition import Partition
from worker.sources.base import Source

#: The part of the memory budget offered to the client's prefetch. A third: at the
#: default 48 MiB that is 16 MiB, the client's default fetch size (2 MiB a partition)
#: for 8 partitions, so up to 8 fetch as before; past that each partition's fetch
#: shrinks, and the pipeline keeps its 32 MiB at any partition count. Measured: a byte
#: the client prefetches costs more RSS than a buffered one (the raw response stays
#: alive beside the records decoded from it), so the client's part is the smaller one.
PREFETCH_SHARE = 1 / 3

log = logging.getLogger("worker")


class Backpressure:
    def __init__(self, source: Source, budget_bytes: int, metrics: Metrics) -> None:
        self._source = source
        self._total = budget_bytes
        #: What the pipeline's buffers may hold: the budget less the client's prefetch.
        self._budget = budget_bytes
        self._gauge = metrics.buffered_bytes.labels(source.name)
        self._m_pipeline = metrics.memory_bytes.labels(source.name, "pipeline_buffers")
        self._m_prefetch = metrics.memory_bytes.labels(source.name, "client_prefetch")
        self._owned = 0
        #: Estimated memory of every partition's buffer together.
        self._held = 0
        #: Partitions holding records, oldest waiting first (a dict as an ordered set).
        self._waiting: dict[Partition, None] = {}
        #: Paused partitions that drained (or held nothing when paused): waiting for their
        #: share of the budget.
        self._held_back: set[Partition] = set()
        self._over = False

    @property
    def pipeline_budget_bytes(self) -> int:
        return self._budget

    def owned_changed(self, partitions: int) -> None:
        """The assignment changed: give the source its share of the budget for the
        partitions owned, and the pipeline what the source does not take. With none
        owned the limits stay (a revoke is followed by the next assignment), but the client
        holds nothing: it fetches only owned partitions."""
        self._owned = partitions
        if partitions <= 0:
            self._m_prefetch.set(0)
            return
        share = int(self._total * PREFETCH_SHARE)
        # Over the share when the client's smallest fetch times the partitions is: counted
        # as it is, or the process outgrows its budget with the partition count. The
        # pipeline may be left nothing: a paused partition holding nothing still fetches.
        prefetch = min(max(self._source.fit_prefetch(share, partitions), 0), self._total)
        if prefetch > share:
            log.warning(
                "event=prefetch_over_share partitions=%d prefetch_bytes=%d share_bytes=%d "
                "note='raise runtime.memory_budget_bytes'", partitions, prefetch, share,
            )  # fmt: skip
        self._budget = self._total - prefetch
        self._m_prefetch.set(prefetch)

    def held(self, partition: Partition, delta: int) -> None:
        """The partition's buffered bytes changed by `delta` (fed, cut or dropped)."""
        self._held += delta
        waiting = self._waiting
        if delta > 0:
            if partition not in waiting:
                waiting[partition] = None
        else:
            waiting.pop(partition, None)
            if partition.buffered_bytes:  # left over: waits afresh from now
                waiting[partition] = None

    def fed(self, partition: Partition, full: bool) -> None:
        """After a chunk went into the partition's buffer: a full one pauses, and what it
        holds is cut now rather than at the end of its window."""
        if full:
            self._pause(partition)
            partition.hurry()

    def drained(self, partition: Partition) -> None:
        """The partition drained below its low water: resume it if its share allows."""
        if partition.buffered_bytes <= self._half_share():
            self._resume(partition)
            self._held_back.discard(partition)
        elif partition.paused:
            self._held_back.add(partition)  # resumed by a budget check once it holds less

    def apply_budget(
        self, touched: Iterable[Partition], owned: Callable[[], Iterable[Partition]]
    ) -> None:
        """After a fetch that fed `touched`. Over the budget: pause (on the crossing, every
        partition holding records; then those the fetch fed) and cut the oldest waiting
        batches. Under it: resume the held-back partitions that drained (their own low
        water, half their share)."""
        total = self._held
        self._gauge.set(total)
        self._m_pipeline.set(total)
        if total >= self._budget:
            if self._over:
                for p in touched:
                    self._pause(p)
                    self._held_back.add(p)  # its waiting batch may never report drained
                self._resume_held_back(0)  # drained to nothing: one fetch, then paused again
            else:
                self._over = True
                for p in owned():
                    self._pause(p)
                    # Every one: a partition paused holding a partial batch that is not cut
                    # runs no batch (so reports no drain) until its window ends.
                    self._held_back.add(p)
            self._cut_oldest(total - self._budget // 2)
            return
        self._over = False
        if total >= self._budget - self._budget // 4:
            # Nearing it: cut before anything must pause (a pause drops the client's
            # prefetched data for the partition, fetched again on resume).
            self._cut_oldest(total - self._budget // 2)
        if self._held_back:
            self._resume_held_back(self._half_share())

    def _resume_held_back(self, most_bytes: int) -> None:
        """Resume the held-back partitions below their low water holding `most_bytes` or
        less."""
        for p in list(self._held_back):
            if not p.paused:
                self._held_back.discard(p)
            elif p.buffered_bytes <= most_bytes and p.below_low_water():
                self._resume(p)
                self._held_back.discard(p)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Released partitions (their buffers were emptied as they stopped)."""
        for p in partitions:
            self._waiting.pop(p, None)
            self._held_back.discard(p)

    def _cut_oldest(self, excess: int) -> None:
        """Cut the partial batches that have waited longest until `excess` bytes are freed."""
        freed = 0
        for p in self._waiting:
            if freed >= excess:
                break
            freed += p.hurry()  # a busy lane's bytes are not freed until its call returns

    def _half_share(self) -> int:
        return self._budget // max(self._owned, 1) // 2

    def _pause(self, partition: Partition) -> None:
        if not partition.paused:
            self._source.pause(partition.key)
            partition.mark_paused()

    def _resume(self, partition: Partition) -> None:
        if partition.paused:
            self._source.resume(partition.key)
            partition.mark_resumed()
