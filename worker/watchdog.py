"""Self-protection: a commit-progress watchdog and an event-loop lag monitor.

A worker can look alive and do nothing: a handler wedged beyond its timeout,
a client stuck after a broker restart (aiokafka #1154), a loop blocked by a
handler that sleeps on it. Then the only cure is a restart, and the
orchestrator restarts what reports itself broken:

- Commits: when a partition has records waiting (lag > 0) and its committed
  offset has not moved for `stall_timeout_s`, the worker turns not ready,
  logs the stack of every task and thread, and exits with status 3. Timers
  restart on every assignment and are suspended during a rebalance, so a
  normal rebalance never trips it.
- The loop: a monitor measures how late its own wake-ups are (a histogram,
  and a warning when the delay endangers the group heartbeat). If the loop
  makes no progress at all for `stall_timeout_s`, no task can report it, so a
  thread does: it logs every thread's stack and ends the process (status 3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.app import Worker

log = logging.getLogger("worker.watchdog")

EXIT_STALLED = 3
LOOP_TICK_S = 0.25


def stacks() -> str:
    """Every asyncio task's and every thread's stack, for the log line of a stall."""
    parts = []
    try:
        for task in asyncio.all_tasks():
            frames = task.get_stack()
            if frames:
                parts.append(
                    f"task {task.get_name()}:\n{''.join(traceback.format_stack(frames[-1]))}"
                )
    except RuntimeError:  # no running loop: called from the guard thread
        pass
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        parts.append(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}")
    return "\n".join(p for p in parts if p)


class CommitWatchdog:
    def __init__(
        self, worker: Worker, stall_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._worker = worker
        self._timeout_s = stall_timeout_s
        self._clock = clock
        self._since: dict[Hashable, tuple[int | None, float]] = {}
        self.stalled: str | None = None

    async def run(self) -> None:
        while self.stalled is None:
            await asyncio.sleep(min(1.0, self._timeout_s / 4))
            self.check()

    def check(self) -> None:
        now = self._clock()
        worker = self._worker
        if worker.rebalancing:
            self._since.clear()
            return
        stalled = []
        for key, lane in worker.lanes.items():
            seen = self._since.get(key)
            lag = worker.source.lag(key)
            if seen is None or not lag or lane.committed != seen[0]:
                self._since[key] = (lane.committed, now)
            elif now - seen[1] >= self._timeout_s:
                stalled.append(lane.label)
        for key in set(self._since) - set(worker.lanes):
            del self._since[key]
        if stalled:
            self._trip(stalled)

    def _trip(self, partitions: list[str]) -> None:
        self.stalled = (
            f"commits stalled for {self._timeout_s:g}s with records waiting: "
            + ",".join(partitions)
        )
        log.error(
            "event=commits_stalled partitions=%s stall_timeout_s=%g note='exiting so the "
            "orchestrator restarts the worker; nothing uncommitted is lost' stacks=%r",
            ",".join(partitions),
            self._timeout_s,
            stacks(),
        )
        self._worker.request_exit(EXIT_STALLED)


class LoopMonitor:
    """Measures how late the loop wakes us; a guard thread catches a loop that stopped."""

    def __init__(self, worker: Worker, warn_after_s: float, stall_timeout_s: float) -> None:
        self._worker = worker
        self._warn_after_s = warn_after_s
        self._stall_timeout_s = stall_timeout_s
        self._histogram = worker.metrics.loop_lag.labels(worker.source.name)
        self.last_tick = time.monotonic()
        self._stop = threading.Event()

    async def run(self) -> None:
        if self._stall_timeout_s:
            threading.Thread(target=self._guard, name="loop-guard", daemon=True).start()
        try:
            while True:
                before = time.monotonic()
                await asyncio.sleep(LOOP_TICK_S)
                self.last_tick = now = time.monotonic()
                late = max(now - before - LOOP_TICK_S, 0.0)
                self._histogram.observe(late)
                if late >= self._warn_after_s:
                    log.warning(
                        "event=event_loop_blocked late_s=%.3f note='the group heartbeat and "
                        "the metrics endpoint waited; a handler blocks the loop (make it "
                        "async, or a plain function so it runs in a thread)'",
                        late,
                    )
        finally:
            self._stop.set()

    def _guard(self) -> None:
        while not self._stop.wait(1.0):
            stuck = time.monotonic() - self.last_tick
            if stuck >= self._stall_timeout_s:
                log.error(
                    "event=event_loop_stalled stuck_s=%.1f note='ending the process' stacks=%r",
                    stuck,
                    stacks(),
                )
                logging.shutdown()
                os._exit(EXIT_STALLED)
