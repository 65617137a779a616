"""Handler slots, and calls still running past `handler.timeout_s`: their partition waits.

A thread cannot be stopped. A thread call past its timeout fails its batch, but
runs on; if the partition's retry (or next batch) started meanwhile, two calls of
one partition would overlap and one key's records could be written out of order.
So a call that runs on holds its partition: the partition's next call waits
until it has returned (logged, and counted in `worker_handler_overruns_total`).

Slots bound the calls running at once to `size`, and a call takes its slot before
its timeout starts, so waiting for a slot never counts against a healthy call.
The executor has `spare` more threads than slots: up to `spare` overrunning
calls give their slot back at once and take nothing from healthy partitions.
Past that, an overrunning call keeps its slot until it returns, so the threads
stay bounded (`size + spare`) and capacity degrades rather than grows without limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from typing import Any

from worker.observe.metrics import Metrics

log = logging.getLogger("worker.invoker")


class Overruns:
    """The invoker's slots and its calls past their timeout, by partition. Loop thread only."""

    def __init__(self, size: int, spare: int, metrics: Metrics | None = None) -> None:
        self._slots = asyncio.Semaphore(size)
        self._spare = spare
        self._metrics = metrics
        self._running: dict[str, set[asyncio.Future[None]]] = {}
        #: Calls running past their timeout now, and since the start.
        self.now = 0
        self.total = 0

    async def wait(self, partition: str) -> None:
        """Return once no call of `partition` is running past its timeout."""
        if not self._running.get(partition):
            return
        started = time.monotonic()
        log.warning(
            "event=handler_overrun_wait partition=%s calls=%d note='a call past "
            "handler.timeout_s is still running; the partition waits for it to return'",
            partition, len(self._running[partition]),
        )  # fmt: skip
        while pending := self._running.get(partition):
            await asyncio.wait(set(pending))  # never cancels them: only our own wait ends
        log.warning("event=handler_overrun_wait_over partition=%s waited_s=%.3f",
                    partition, time.monotonic() - started)  # fmt: skip

    async def take_slot(self) -> None:
        await self._slots.acquire()

    def give_back(self) -> None:
        """Free a slot taken for a call that never started."""
        self._slots.release()

    def settle(
        self, source: str, partition: str, call: concurrent.futures.Future[Any], why: str
    ) -> None:
        """After a call ended for us: free its slot, or, if it runs on, hold the partition
        (and maybe the slot) until it returns."""
        if call.done():
            self._slots.release()
            return
        loop = asyncio.get_running_loop()
        returned: asyncio.Future[None] = loop.create_future()
        self._running.setdefault(partition, set()).add(returned)
        keeps_slot = self.now >= self._spare
        if not keeps_slot:
            self._slots.release()
        self.now += 1
        self.total += 1
        if self._metrics is not None:
            self._metrics.handler_overruns.labels(source, partition).inc()
            self._metrics.handler_overrunning.labels(source).inc()
        started = time.monotonic()
        log.warning(
            "event=handler_overrun partition=%s reason=%s overrunning=%d keeps_slot=%s "
            "note='the call cannot be stopped; the partition waits for it to return'",
            partition, why, self.now, keeps_slot,
        )  # fmt: skip

        def ended() -> None:
            self.now -= 1
            if keeps_slot:
                self._slots.release()
            if self._metrics is not None:
                self._metrics.handler_overrunning.labels(source).dec()
            pending = self._running[partition]
            pending.discard(returned)
            if not pending:
                del self._running[partition]
            returned.set_result(None)
            log.warning("event=handler_overrun_returned partition=%s overran_s=%.3f",
                        partition, time.monotonic() - started)  # fmt: skip

        def on_done(_: concurrent.futures.Future[Any]) -> None:  # in the call's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(ended)

        call.add_done_callback(on_done)
