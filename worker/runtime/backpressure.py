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
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Gauge

from worker.partition.partition import Partition
from worker.sources.base import Source


class Backpressure:
    def __init__(self, source: Source, budget_bytes: int, buffered_bytes: Gauge) -> None:
        self._source = source
        self._budget = budget_bytes
        self._gauge = buffered_bytes

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
