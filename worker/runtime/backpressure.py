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

The budget is the process's, not only the pipeline's: the client's records
fetched ahead (aiokafka keeps up to a fetch size per assigned partition) are
part of it. On every assignment change the source is told its share,
`PREFETCH_SHARE` of the budget for the partitions owned, sets its client's
fetch limits from it and answers what it may hold at most; the pipeline's
buffers get the rest. So memory does not grow with the partition count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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

    @property
    def pipeline_budget_bytes(self) -> int:
        return self._budget

    def owned_changed(self, partitions: int) -> None:
        """The assignment changed: give the source its share of the budget for the
        partitions owned, and the pipeline what the source does not take. With none
        owned the limits stay (a revoke is followed by the next assignment), but the client
        holds nothing: it fetches only owned partitions."""
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

    def fed(self, partition: Partition, full: bool) -> None:
        """After a chunk went into the partition's buffer."""
        if full:
            self._pause(partition)

    def drained(self, partition: Partition, owned: Sequence[Partition]) -> None:
        """The partition drained below its low water: resume it if its share allows."""
        if partition.buffered_bytes <= self._half_share(len(owned)):
            self._resume(partition)
        # else it resumes from a later drained() or budget check, once it holds less

    def apply_budget(self, owned: Sequence[Partition]) -> None:
        """Pause every partition while all buffers together exceed the budget; else resume
        the paused ones that drained (their own low water, half their share)."""
        total = sum(p.buffered_bytes for p in owned)
        self._gauge.set(total)
        self._m_pipeline.set(total)
        if total >= self._budget:
            for p in owned:
                if p.paused and not p.buffered_bytes and p.below_low_water():
                    self._resume(p)  # drained: one fetch, then paused again
                else:
                    self._pause(p)
            return
        half_share = self._half_share(len(owned))
        for p in owned:
            if p.paused and p.below_low_water() and p.buffered_bytes <= half_share:
                self._resume(p)

    def _half_share(self, partitions: int) -> int:
        return self._budget // max(partitions, 1) // 2

    def _pause(self, partition: Partition) -> None:
        if not partition.paused:
            self._source.pause(partition.key)
            partition.mark_paused()

    def _resume(self, partition: Partition) -> None:
        if partition.paused:
            self._source.resume(partition.key)
            partition.mark_resumed()
