"""The handler timeout of one task's successive calls, on one loop timer.

`asyncio.timeout` arms a loop timer for every call and cancels it after: at small
batches that was the largest fixed cost of an invoke. A `CallTimer` belongs to the task
that makes the calls (a partition's lane) and keeps one timer: armed at the first
call's deadline, and when it fires during a later call it re-arms itself at that call's
deadline instead of cancelling. So a call that finishes in time costs two assignments,
and a call that overruns is cancelled at its own deadline, as with `asyncio.timeout`.

Like `asyncio.timeout`, expiry cancels the task; `timed_out()` then tells the caller
that the CancelledError it caught was the timer's alone (`uncancel`), not a stop.
"""

from __future__ import annotations

import asyncio


class CallTimer:
    __slots__ = ("_cancelling", "_ends", "_expired", "_handle", "_loop", "_task", "_timeout_s")

    def __init__(self, task: asyncio.Task[object], timeout_s: float) -> None:
        self._task = task
        self._timeout_s = timeout_s
        self._loop = task.get_loop()
        self._ends: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    def start(self) -> None:
        """A call begins: it may run `timeout_s`."""
        self._ends = ends = self._loop.time() + self._timeout_s
        self._expired = False
        self._cancelling = self._task.cancelling()
        if self._handle is None:
            self._handle = self._loop.call_at(ends, self._fire)

    def stop(self) -> None:
        """The call ended (the timer stays armed for the next one, or lapses idle). If it
        expired while the call was finishing anyway, its cancel request is withdrawn."""
        self._ends = None
        if self._expired:
            self._expired = False
            self._task.uncancel()

    def timed_out(self) -> bool:
        """After a CancelledError from the call: True if the timer alone caused it (the
        request is withdrawn; the caller reports a timeout), False if the task is being
        stopped (the caller lets the error travel on)."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def _fire(self) -> None:
        self._handle = None
        ends = self._ends
        if ends is None:
            return  # between calls: armed again by the next start
        if self._loop.time() < ends:  # a later call than the one it was armed for
            self._handle = self._loop.call_at(ends, self._fire)
            return
        self._expired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
