"""Every long-lived task of the worker, owned and watched in one place.

A task that ends with an error (not by cancellation) is logged with its name
and traceback, takes readiness with it, and ends the worker with status 1:
nothing fails silently, and nothing keeps running half-dead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from worker.observe.errors import shown_error

log = logging.getLogger("worker")

EXIT_TASK_CRASHED = 1


class TaskSupervisor:
    def __init__(self, on_crash: Callable[[int], None]) -> None:
        self._on_crash = on_crash
        self._tasks: set[asyncio.Task[Any]] = set()
        #: "task NAME died: ERROR" once one has, for readiness.
        self.crashed: str | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.watch(task, name)
        return task

    def watch(self, task: asyncio.Task[Any], name: str) -> None:
        """Keep a reference; a task that dies of an unexpected error stops the worker."""
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or (error := t.exception()) is None:
                return
            log.error("event=task_crashed task=%s error=%r", name, str(error), exc_info=error)
            # Served on /readyz and the status page: cut as every shown error is (the log
            # line above has it whole).
            shown = shown_error(type(error).__name__, str(error))
            self.crashed = self.crashed or f"task {name} died: {shown}"
            self._on_crash(EXIT_TASK_CRASHED)

        task.add_done_callback(done)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
