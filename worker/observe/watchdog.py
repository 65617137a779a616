"""Self-protection: a commit-progress watchdog and an event-loop lag monitor.

A worker can look alive and do nothing: a handler wedged beyond its timeout,
a client stuck after a broker restart (aiokafka #1154), a Kinesis reader that
stopped, a loop blocked by a handler that sleeps on it. Then the only cure is
a restart, and the orchestrator restarts what reports itself broken:

- Commits: when a partition has records waiting (unfinished records of its
  own, or records the source knows of past the checkpoint: a Kafka lag, a
  Kinesis time behind the tip) and its checkpoint has not moved for
  `stall_timeout_s`, the worker turns not ready, logs the await chain of
  every task and the stack of every thread, and exits with status 3. Each
  assignment of a partition starts its clock afresh, and a partition being
  drained for a revoke is not timed (its own deadline bounds it), so a
  rebalance never trips it.
- The loop: a monitor measures how late its own wake-ups are (a histogram,
  and a warning when the delay endangers the source's liveness: the group
  heartbeat, the lease renewal). If the loop makes no progress at all for
  `stall_timeout_s`, no task can report it, so a thread does: it logs every
  thread's stack and ends the process (status 3).
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
from types import FrameType
from typing import Any

from prometheus_client import Histogram

from worker.observe.view import WorkerView

log = logging.getLogger("worker.watchdog")

EXIT_STALLED = 3
LOOP_TICK_S = 0.25


def await_chain(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames of a task from its coroutine down to what it awaits now.

    `Task.get_stack()` gives only the outermost frame of a suspended coroutine,
    which hides where it really waits (a commit waiting for a coordinator shows
    as the committer's loop); following `cr_await` shows the whole chain.
    """
    frames = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def stacks() -> str:
    """Every asyncio task's await chain and every thread's stack, for the log of a stall."""
    parts = []
    try:
        for task in asyncio.all_tasks():
            lines = [
                f'  File "{f.f_code.co_filename}", line {f.f_lineno}, in {f.f_code.co_name}\n'
                for f in await_chain(task)
            ]
            if lines:
                parts.append(f"task {task.get_name()}:\n{''.join(lines)}")
    except RuntimeError:  # no running loop: called from the guard thread
        pass
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        parts.append(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}")
    return "\n".join(p for p in parts if p)


class CommitWatchdog:
    def __init__(
        self,
        view: WorkerView,
        stall_timeout_s: float,
        on_stall: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._timeout_s = stall_timeout_s
        self._on_stall = on_stall
        self._clock = clock
        #: (partition, its assignment) -> (checkpoint seen, since when it has not moved)
        self._since: dict[tuple[Hashable, float], tuple[int | None, float]] = {}
        self.stalled: str | None = None

    async def run(self) -> None:
        while self.stalled is None:
            await asyncio.sleep(min(1.0, self._timeout_s / 4))
            self.check()

    def check(self) -> None:
        now = self._clock()
        since: dict[tuple[Hashable, float], tuple[int | None, float]] = {}
        stalled = []
        for p in self._view.partition_stats():
            if p.releasing:
                continue
            life = (p.key, p.assigned_at)
            seen = self._since.get(life)
            waiting = p.unfinished > 0 or self._view.waiting(p.key)
            if seen is None or not waiting or p.committed != seen[0]:
                seen = (p.committed, now)
            elif now - seen[1] >= self._timeout_s:
                stalled.append(p.label)
            since[life] = seen
        self._since = since
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
        self._on_stall(EXIT_STALLED)


class LoopMonitor:
    """Measures how late the loop wakes us; a guard thread catches a loop that stopped."""

    def __init__(self, histogram: Histogram, warn_after_s: float, stall_timeout_s: float) -> None:
        self._warn_after_s = warn_after_s
        self._stall_timeout_s = stall_timeout_s
        self._histogram = histogram
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
                        "event=event_loop_blocked late_s=%.3f note='the group heartbeat or "
                        "lease renewal and the metrics endpoint waited; a handler blocks the "
                        "loop (make it async, or a plain function so it runs in a thread)'",
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
