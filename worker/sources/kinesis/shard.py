"""An owned shard: the holder of its lease, its reader, the task that keeps the lease, and
the task that hands it over when another worker asked for it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from worker.sources.kinesis.holder import LeaseHolder
from worker.sources.kinesis.reader import ShardReader, Spawn


class Shard:
    def __init__(self, holder: LeaseHolder, reader: ShardReader) -> None:
        self.holder = holder
        self.reader = reader
        self._keeper: asyncio.Task[Any] | None = None
        self._handoff: asyncio.Task[Any] | None = None

    @property
    def shard_id(self) -> str:
        return self.reader.shard_id

    def start(self, spawn: Spawn, keeper: Coroutine[Any, Any, None]) -> None:
        """Start reading, and the keeper (renewals, the shard's end), both supervised."""
        self.reader.start(spawn)
        self._keeper = spawn(keeper, f"kinesis lease {self.shard_id}")

    def hand_off(self, spawn: Spawn, handoff: Coroutine[Any, Any, None]) -> None:
        """Start handing the lease over (once), beside the keeper, which renews meanwhile."""
        if self._handoff is None:
            self._handoff = spawn(handoff, f"kinesis hand-off {self.shard_id}")

    @property
    def handing_off(self) -> bool:
        return self._handoff is not None

    async def hand_off_done(self) -> None:
        """Wait for a hand-off under way (if any) to end, without cancelling it."""
        if self._handoff is not None and self._handoff is not asyncio.current_task():
            await asyncio.wait({self._handoff})

    async def stop(self) -> None:
        """Stop the reader, the keeper and a hand-off (any but the caller)."""
        await self.reader.stop()
        tasks = [t for t in (self._keeper, self._handoff)
                 if t is not None and t is not asyncio.current_task()]  # fmt: skip
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def finished(self) -> bool:
        """The shard ended and everything read from it was handled and checkpointed."""
        return self.reader.drained and self.holder.lease.checkpoint == self.reader.last_read
