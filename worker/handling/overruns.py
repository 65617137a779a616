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

A handler process whose call was cancelled (its partition was revoked past the
deadline) is being killed: until pebble has stopped it, it is a call that still
runs, and its partition waits for it the same way (`ending`). Releasing a revoked
partition asks `running_s` and awaits `returned`, so a partition leaves this worker
only once nothing of it runs here any more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.observe.metrics import Metrics

log = logging.getLogger("worker.invoker")


@dataclass(frozen=True, slots=True)
class _Running:
    """A call that still runs although its batch was given up: since when, and how."""

    #: time.monotonic() when the handler call started.
    started: float
    #: False for a thread (nobody can stop it), True for a process being killed.
    ending: bool


class Overruns:
    """The invoker's slots and its calls past their timeout, by partition. Loop thread only."""

    def __init__(self, size: int, spare: int, metrics: Metrics | None = None) -> None:
        self._slots = asyncio.Semaphore(size)
        self._spare = spare
        self._metrics = metrics
        self._running: dict[str, dict[asyncio.Future[None], _Running]] = {}
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
        await self.returned(partition)
        log.warning("event=handler_overrun_wait_over partition=%s waited_s=%.3f",
                    partition, time.monotonic() - started)  # fmt: skip

    async def returned(self, partition: str) -> None:
        """Return once no call of `partition` runs any more (never cancels one)."""
        while pending := self._running.get(partition):
            await asyncio.wait(set(pending))  # only our own wait ends if we are cancelled

    def running_s(self, partition: str, threads_only: bool = False) -> float | None:
        """How long the oldest call of `partition` still running has run, or None if none.

        With `threads_only`, only calls nobody can stop count (not a process being
        killed, which is gone in a moment)."""
        calls = [c for c in self._running.get(partition, {}).values()
                 if not (threads_only and c.ending)]  # fmt: skip
        if not calls:
            return None
        return time.monotonic() - min(c.started for c in calls)

    def ending(self, partition: str, gone: concurrent.futures.Future[Any], started: float) -> None:
        """A call ended for us whose handler process is still being killed: the
        partition holds until `gone` is done (the process has exited)."""
        self._track(partition, gone, _Running(started, ending=True), lambda: None)

    async def take_slot(self) -> None:
        await self._slots.acquire()

    def give_back(self) -> None:
        """Free a slot taken for a call that never started."""
        self._slots.release()

    def settle(
        self,
        source: str,
        partition: str,
        call: concurrent.futures.Future[Any],
        why: str,
        started: float,
    ) -> None:
        """After a call ended for us: free its slot, or, if it runs on, hold the partition
        (and maybe the slot) until it returns. `started` is its time.monotonic() start."""
        if call.done():
            self._slots.release()
            return
        keeps_slot = self.now >= self._spare
        if not keeps_slot:
            self._slots.release()
        self.now += 1
        self.total += 1
        if self._metrics is not None:
            self._metrics.handler_overruns.labels(source, partition).inc()
            self._metrics.handler_overrunning.labels(source).inc()
        overran = time.monotonic()
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
            log.warning("event=handler_overrun_returned partition=%s overran_s=%.3f",
                        partition, time.monotonic() - overran)  # fmt: skip

        self._track(partition, call, _Running(started, ending=False), ended)

    def _track(
        self,
        partition: str,
        call: concurrent.futures.Future[Any],
        running: _Running,
        ended: Callable[[], None],
    ) -> None:
        """Hold `partition` until `call` is done, then run `ended` (on the loop)."""
        loop = asyncio.get_running_loop()
        returned: asyncio.Future[None] = loop.create_future()
        self._running.setdefault(partition, {})[returned] = running

        def on_loop() -> None:
            ended()
            pending = self._running[partition]
            del pending[returned]
            if not pending:
                del self._running[partition]
            returned.set_result(None)

        def on_done(_: concurrent.futures.Future[Any]) -> None:  # in the call's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(on_loop)

        call.add_done_callback(on_done)
