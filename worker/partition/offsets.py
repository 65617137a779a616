"""The checkpoint of one partition: the end of the longest finished prefix of its batches.

Batches are opened in position order and may finish in any order (retries,
per-key lanes). The committable position is the last position of the longest
run of finished batches from the start; it never passes an unfinished one.
Work is per batch: open and finish are O(1) amortised.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    def __init__(self) -> None:
        self._open: deque[int] = deque()  # last positions of opened, unfinished-prefix batches
        self._finished: set[int] = set()
        self._committable: int | None = None

    def open(self, last_position: int) -> None:
        """Register a batch ending at `last_position`; batches open in position order."""
        if self._open and last_position <= self._open[-1]:
            raise ValueError(f"batch ending at {last_position} opened out of order")
        self._open.append(last_position)

    def finish(self, last_position: int) -> None:
        """Mark the batch ending at `last_position` handled (or dead-lettered)."""
        self._finished.add(last_position)
        while self._open and self._open[0] in self._finished:
            self._committable = self._open.popleft()
            self._finished.discard(self._committable)

    @property
    def committable(self) -> int | None:
        """Last position of the finished prefix, or None if nothing finished yet."""
        return self._committable

    @property
    def pending(self) -> int:
        return len(self._open)
