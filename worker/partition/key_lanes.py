"""Key lanes: how one partition runs N batches at once and still keeps each key's order.

With `parallelization_factor` N > 1, records are routed to N lanes by a
stable hash of the key (records without a key by their position, so they
spread round-robin); each lane batches and invokes on its own. Each run of
`batch_size` fetched records is one unit of the offset tracker (a segment),
finished once every lane has resolved its slice of it, so the committed
position is the low watermark across lanes and never passes an unfinished
record, whatever order the lanes finish in. Routing is the only per-record
step, and only when N > 1.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any
from zlib import crc32

from worker.partition.batcher import Batcher
from worker.records import Record


def route(records: Sequence[Record], lanes: int) -> list[list[Record]]:
    """Split records into `lanes` ordered lists by crc32 of the key (keyless: by position)."""
    buckets: list[list[Record]] = [[] for _ in range(lanes)]
    add = [b.append for b in buckets]
    for r in records:
        key = r.key
        add[(crc32(key) if key is not None else r.position) % lanes](r)
    return buckets


class KeyLane:
    """One ordered run of a partition's records: its batcher, its task, its open slices."""

    __slots__ = ("batcher", "busy", "slices", "task", "wake")

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: Running a batch: what it holds is cut only once the call returns.
        self.busy = False
        #: (last position of this lane's slice of a segment, the segment's end), in order.
        self.slices: deque[tuple[int, int]] = deque()

    async def running(self, call: Coroutine[Any, Any, None]) -> None:
        """Run one batch's call, `busy` meanwhile (buffer pressure counts what it can free)."""
        self.busy = True
        try:
            await call
        finally:
            self.busy = False

    def start(self, run: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        self.task = asyncio.create_task(run, name=name)
        return self.task


class Segments:
    """The segments of a partition with several lanes, and which lanes still hold a slice."""

    def __init__(self, lanes: Sequence[KeyLane]) -> None:
        self._lanes = lanes
        self._holders: dict[int, int] = {}  # segment end -> lanes holding a slice

    def add(self, records: Sequence[Record], now: float) -> int:
        """Route one segment's records to the lanes; returns the segment's end."""
        end = records[-1].position
        holders = 0
        for lane, part in zip(self._lanes, route(records, len(self._lanes)), strict=True):
            if part:
                lane.batcher.add(part, now)
                lane.slices.append((part[-1].position, end))
                lane.wake.set()
                holders += 1
        self._holders[end] = holders
        return end

    def done(self, lane: KeyLane, last: int) -> list[int]:
        """The segments whose last open slice was this lane's, up to position `last`."""
        finished = []
        while lane.slices and lane.slices[0][0] <= last:
            _, end = lane.slices.popleft()
            self._holders[end] -= 1
            if not self._holders[end]:
                del self._holders[end]
                finished.append(end)
        return finished
