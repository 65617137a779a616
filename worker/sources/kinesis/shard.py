"""An owned shard: the holder of its lease, its reader, and the task that keeps the lease."""

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

    @property
    def shard_id(self) -> str:
        return self.reader.shard_id

    def start(self, spawn: Spawn, keeper: Coroutine[Any, Any, None]) -> None:
        """Start reading, and the keeper (renewals, the shard's end), both supervised."""
        self.reader.start(spawn)
        self._keeper = spawn(keeper, f"kinesis lease {self.shard_id}")

    async def stop(self) -> None:
        """Stop the reader and the keeper (unless the keeper is the caller)."""
        await self.reader.stop()
        keeper = self._keeper
        if keeper is not None and keeper is not asyncio.current_task():
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    @property
    def finished(self) -> bool:
        """The shard ended and everything read from it was handled and checkpointed."""
        return self.reader.drained and self.holder.lease.checkpoint == self.reader.last_read
