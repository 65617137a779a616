"""Cuts a partition's record stream into batches: by count, by bytes, or by time.

A batch is due when it holds `batch_size` records, or `max_bytes` of payload,
or `window_s` after its first record arrived, whichever comes first; or at
once after `hurry()`, when the memory it holds is wanted (buffer pressure):
the window is an upper bound on waiting, never a promise to wait. Each cut
says why it was made (`reason`: size, bytes, window or pressure; the
`worker_batches_cut_total` reasons, `observe.metrics.CUT_REASONS`). The batcher is pure:
the caller passes `now`, so it is tested without a clock.

It keeps fetched chunks as they are and slices them; sizes are summed with
`sum(map(size, chunk))` (C-level), so cutting costs per chunk, not per record.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from itertools import accumulate, islice
from typing import Any


class Batcher:
    def __init__(
        self,
        batch_size: int,
        max_bytes: int,
        window_s: float,
        record_size: Callable[[Any], int],
    ) -> None:
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.window_s = window_s
        self._size = record_size
        self._chunks: deque[tuple[Sequence[Any], int]] = deque()  # (records, bytes)
        self._head = 0  # records of the first chunk already taken
        self._head_bytes = 0  # bytes of those records
        self.records = 0
        self.bytes = 0
        self._first_arrival: float | None = None
        self._hurried = False
        #: Why the last batch `take` returned was cut: size, bytes, window or pressure.
        self.reason = "size"

    def add(self, records: Sequence[Any], now: float) -> int:
        """Append a chunk in position order; returns its payload bytes."""
        if not records:
            return 0
        nbytes = sum(map(self._size, records))
        self._chunks.append((records, nbytes))
        self.records += len(records)
        self.bytes += nbytes
        if self._first_arrival is None:
            self._first_arrival = now
        return nbytes

    def deadline(self) -> float | None:
        """When the pending partial batch becomes due by time, or None if empty."""
        if self._first_arrival is None:
            return None
        return self._first_arrival + self.window_s

    @property
    def hurried(self) -> bool:
        return self._hurried

    def hurry(self) -> None:
        """Make what is pending due now, however partial (its memory is wanted)."""
        if self.records:
            self._hurried = True

    def take(self, now: float) -> list[Any] | None:
        """Cut the next batch if one is due; `reason` then says why."""
        records = self.records
        if not records:
            return None
        if records >= self.batch_size:
            self.reason = "size"
        elif self.bytes >= self.max_bytes:
            self.reason = "bytes"
        elif now >= self._first_arrival + self.window_s:  # type: ignore[operator]
            self.reason = "window"
        elif self._hurried:
            self.reason = "pressure"
        else:
            return None
        self._hurried = False
        count = min(self.records, self.batch_size)
        if self.bytes > self.max_bytes:
            count = min(count, self._count_within_bytes())
        batch, nbytes = self._pop(count)
        self.records -= len(batch)
        self.bytes -= nbytes
        # Records left over arrived before `now`: their window runs from now.
        self._first_arrival = now if self.records else None
        return batch

    def clear(self) -> list[Any]:
        """Drop and return everything pending (on revoke: it will be fetched again)."""
        rest, _ = self._pop(self.records)
        self.records = self.bytes = 0
        self._first_arrival = None
        self._hurried = False
        return rest

    def _count_within_bytes(self) -> int:
        """How many leading records fit in max_bytes (at least one, so nothing sticks)."""
        budget = self.max_bytes
        count = 0
        for i, (records, nbytes) in enumerate(self._chunks):
            start = self._head if i == 0 else 0
            left = nbytes - (self._head_bytes if i == 0 else 0)
            if left <= budget:
                budget -= left
                count += len(records) - start
                continue
            sizes = accumulate(map(self._size, islice(records, start, None)))
            count += bisect_right(list(sizes), budget)
            break
        return max(count, 1)

    def _pop(self, count: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        nbytes = 0
        while count > 0 and self._chunks:
            records, chunk_bytes = self._chunks[0]
            available = len(records) - self._head
            if count >= available:
                part = records[self._head :] if self._head else records
                nbytes += chunk_bytes - self._head_bytes
                self._chunks.popleft()
                self._head = self._head_bytes = 0
            else:
                part = records[self._head : self._head + count]
                part_bytes = sum(map(self._size, part))
                nbytes += part_bytes
                self._head += count
                self._head_bytes += part_bytes
            count -= len(part)
            if out:
                out.extend(part)
            else:  # the common case: the batch is one slice, used without a copy
                out = part if isinstance(part, list) else list(part)
        return out, nbytes
