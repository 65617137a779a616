"""`handler.max_concurrency`: one cap on the handler calls running at once, worker-wide.

Partitions times `parallelization_factor` lanes can each run a call; a handler that
writes to a database wants fewer at once than that. The invoker takes a slot before a
call's clock starts and gives it back when the call has really ended, so waiting for a
slot is backpressure (the lane holds its batch, the partition's buffer fills and the
source pauses it), never handler time: the timeout counts from the call's start.

A thread call past its timeout runs on and keeps its slot until it returns (it is
still a call running), so the cap holds for what the handler itself sees.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from typing import Any

from prometheus_client import Histogram


class CallLimit:
    """Slots for handler calls; loop thread only, apart `release_when_done`'s callback."""

    __slots__ = ("_slots", "_wait", "size")

    def __init__(self, size: int, wait: Histogram) -> None:
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._wait = wait

    async def acquire(self) -> None:
        """Return holding a slot (the wait is observed only when there was one)."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        started = time.perf_counter()
        await self._slots.acquire()
        self._wait.observe(time.perf_counter() - started)

    def release(self) -> None:
        self._slots.release()

    def release_when_done(self, call: concurrent.futures.Future[Any]) -> None:
        """Give the slot back once a pool call has returned (it may outlive its timeout)."""
        loop = asyncio.get_running_loop()

        def on_done(_: concurrent.futures.Future[Any]) -> None:  # in the call's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._slots.release)

        call.add_done_callback(on_done)
