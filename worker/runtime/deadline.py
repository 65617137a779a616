"""Time budgets for stopping: every step of a shutdown gets what is left, and no more.

A broker outage must not turn SIGTERM into a wait without end: the final
commit and the client's close both wait for a coordinator that may not come
back, and an orchestrator then kills the worker at the end of its grace
period anyway. `bounded` runs one step within what is left and reports a step
that ran out; `Backstop` is the last resort of the daemon process: a thread
that ends it a little after the budget, whatever the event loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("worker")

#: Each step gets at least this long, even when the budget is spent: a last try.
MIN_STEP_S = 0.5


class Deadline:
    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.at = clock() + budget_s

    def left(self) -> float:
        return max(self.at - self._clock(), 0.0)

    def keeping(self, reserve_s: float) -> Deadline:
        """This deadline less `reserve_s`, but never less than half of what is left: the
        steps after the one given it keep that time. In a broker outage the final commit
        waits out whatever it is given, and the client's close still has to run after
        it (seen on librdkafka: the close began after the budget, and the backstop ended
        the worker before `shutdown_complete`)."""
        left = self.left()
        return Deadline(left - min(reserve_s, left / 2), self._clock)


class ExitRequest(asyncio.Event):
    """The worker's `should_exit`, knowing when it was first set: the shutdown's budget
    counts from the request (a SIGTERM), as the backstop's does, not from when the main
    loop next looks, after a fetch (librdkafka's: up to 0.7 s while its poller is held)
    or a poll error's 1 s backoff: those ate the close's reserve, and the backstop's
    grace."""

    asked_at: float | None = None

    def set(self) -> None:
        if self.asked_at is None:
            self.asked_at = time.monotonic()
        super().set()

    def waited_s(self) -> float:
        return 0.0 if self.asked_at is None else time.monotonic() - self.asked_at


async def bounded(step: Awaitable[object], timeout_s: float, what: str) -> bool:
    """Await `step` within `timeout_s` (at least MIN_STEP_S); False if it did not finish.

    A step that fails is logged, not raised: the rest of the shutdown still runs. That
    includes a CancelledError the step raises on its own (aiokafka's consumer re-raises
    that of a fetch cancelled in its backoff); one aimed at us is passed on.
    """
    try:
        async with asyncio.timeout(max(timeout_s, MIN_STEP_S)):
            await step
        return True
    except TimeoutError:
        log.warning("event=shutdown_step_timed_out step=%s timeout_s=%.1f", what, timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("event=shutdown_step_failed step=%s error=CancelledError", what)
    except Exception as exc:
        log.warning("event=shutdown_step_failed step=%s error=%r", what, str(exc))
    return False


class Backstop:
    """Ends the process `after_s` from now unless disarmed: for the daemon only."""

    def __init__(self, after_s: float, exit_code: Callable[[], int]) -> None:
        self._after_s = after_s
        self._exit_code = exit_code
        self._disarmed = threading.Event()

    def arm(self) -> None:
        threading.Thread(target=self._watch, name="shutdown-backstop", daemon=True).start()

    def disarm(self) -> None:
        self._disarmed.set()

    def _watch(self) -> None:
        if not self._disarmed.wait(self._after_s):
            self._fire(self._after_s, self._exit_code)

    @staticmethod
    def _fire(after_s: float, exit_code: Callable[[], int]) -> None:
        code = exit_code()
        log.error("event=shutdown_deadline_exceeded after_s=%.1f exit_code=%d note='ending the "
                  "process; uncommitted work will be redone'", after_s, code)  # fmt: skip
        logging.shutdown()
        os._exit(code)


async def unless_stopped(step: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run `step`, cut short (cancelled) the moment `stop` is set.

    The start can wait a long time (a broker not up yet, `source.connect_timeout_s`): a
    SIGTERM then must end that wait at once, not after it, and not as an error.
    """
    running = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    if not running.cancelled():
        running.result()  # its error, if it failed
