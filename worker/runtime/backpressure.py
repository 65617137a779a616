"""Pauses partitions whose buffers are full and resumes them once drained: the only caller
of `source.pause` / `source.resume`.

Two limits: per partition, its unfinished records and buffered bytes
(`runtime.max_buffered_records`, `max_buffered_bytes`); globally, the
estimated memory of every buffer together (`runtime.memory_budget_bytes`).
Over the budget every partition pauses; a partition that drained below its
low water resumes once the total is back under half the budget.
"""

from __future__ import annotations

from collections.abc import Iterable

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

    def drained(self, partition: Partition, owned: Iterable[Partition]) -> None:
        """The partition drained below its low water: resume it if the budget allows."""
        if sum(p.buffered_bytes for p in owned) <= self._budget // 2:
            self._resume(partition)
        # else the budget check resumes it once the total is back under half

    def apply_budget(self, owned: Iterable[Partition]) -> None:
        """Pause every partition while all buffers together exceed the budget; resume the
        drained ones once they are back under half of it."""
        owned = list(owned)
        total = sum(p.buffered_bytes for p in owned)
        self._gauge.set(total)
        if total >= self._budget:
            for p in owned:
                self._pause(p)
        elif total <= self._budget // 2:
            for p in owned:
                if p.paused and p.below_low_water():
                    self._resume(p)

    def _pause(self, partition: Partition) -> None:
        if not partition.paused:
            self._source.pause(partition.key)
            partition.mark_paused()

    def _resume(self, partition: Partition) -> None:
        if partition.paused:
            self._source.resume(partition.key)
            partition.mark_resumed()
