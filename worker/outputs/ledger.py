"""A partition's outputs between their invoke and their checkpoint.

Kept by the partition (their only owner), keyed by the last input position of the
batch that sent them: an output may leave only with a checkpoint at or past that
position, so it never goes out before the offsets that cover its input would, and
never past the low watermark of a partition with several key lanes (a lane ahead of it
keeps its outputs here until the watermark reaches them). Work is per batch.
"""

from __future__ import annotations

from worker.outputs.outbox import Output


class OutputLedger:
    __slots__ = ("_by_end", "count")

    def __init__(self) -> None:
        self._by_end: dict[int, list[Output]] = {}
        self.count = 0

    def add(self, end: int, outputs: list[Output]) -> None:
        if outputs:
            self._by_end.setdefault(end, []).extend(outputs)
            self.count += len(outputs)

    def upto(self, position: int) -> list[Output]:
        """The outputs a checkpoint at `position` covers, in the order their batches ended."""
        return [o for end in sorted(self._by_end) if end <= position for o in self._by_end[end]]

    def drop_upto(self, position: int) -> None:
        """They were acknowledged (or committed in a transaction): never send them again."""
        for end in [end for end in self._by_end if end <= position]:
            self.count -= len(self._by_end.pop(end))
