"""Calls the user's handler with one batch, bounded by `handler.timeout_s`.

Coroutine functions run on the event loop; plain functions run in a thread
pool so that they never block the loop (aiokafka's heartbeats run on it). A
timed-out coroutine is cancelled; a timed-out thread cannot be killed, so it
runs on but its result is ignored and the batch counts as failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from worker.config import HandlerConfig
from worker.handling.handler import (
    HandlerLoadError,
    call_sync,
    is_coroutine_callable,
    materialise,
)
from worker.handling.process_pool import ProcessPool

log = logging.getLogger("worker.invoker")


@dataclass(slots=True)
class Outcome:
    """How one invocation ended; `result` is what the handler returned."""

    ok: bool
    duration_s: float
    result: Any = None
    error: BaseException | None = None
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return f"timed out after {self.duration_s:.3f}s"
        return f"{type(self.error).__name__}: {self.error}"

    def traceback_text(self) -> str:
        if self.error is None:
            return ""
        return "".join(traceback.format_exception(self.error))


def _cancelled_by_us() -> bool:
    """True if this task was asked to stop (a partition stopping, shutdown), so a
    CancelledError must travel on; False if the handler raised one of its own."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class Invoker:
    def __init__(
        self, fn: Callable[..., Any], config: HandlerConfig, processes: ProcessPool | None = None
    ) -> None:
        self._fn = fn
        self._timeout_s = config.timeout_s
        self.is_async = is_coroutine_callable(fn)
        self._processes = processes
        self._pool: ThreadPoolExecutor | None = None
        if processes is not None:
            if self.is_async:
                raise HandlerLoadError(
                    "handler.concurrency = 'process' needs a plain (not async) handler function"
                )
        elif not self.is_async:
            self._pool = ThreadPoolExecutor(config.threads, thread_name_prefix="handler")
            if config.concurrency == "async":
                log.info("handler is a plain function: running it in a thread pool")

    async def invoke(self, *args: Any) -> Outcome:
        start = time.perf_counter()
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                if self._processes is not None:
                    result = await self._processes.run(*args)
                elif self._pool is None:
                    result = materialise(await self._fn(*args))
                else:
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(self._pool, call_sync, self._fn, *args)
        except asyncio.CancelledError as exc:
            if _cancelled_by_us():
                raise
            return Outcome(False, time.perf_counter() - start, error=exc)
        except BaseException as exc:
            # The handler's SystemExit, KeyboardInterrupt or other BaseException fails its
            # batch: `sys.exit(0)` in a handler is not the worker's exit. A TimeoutError the
            # handler raised itself is an ordinary error.
            timed_out = deadline.expired()
            return Outcome(False, time.perf_counter() - start, error=exc, timed_out=timed_out)
        return Outcome(True, time.perf_counter() - start, result=result)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.close()
