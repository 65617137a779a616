"""aiokafka's commit requests that outlive a cancelled commit: their outcome is said.

`AIOKafkaConsumer.commit` sends each request in a task of its own that it shields: a
commit cancelled by its bound (the start commit's `START_COMMIT_TIMEOUT_S`, the
committer's `COMMIT_TIMEOUT_S`, a shutdown step's) leaves that request in flight, and
asyncio drops the shield's callback, so when the request fails later nobody awaits it:
the log showed `Task exception was never retrieved` with a traceback (adversary A11, a
start commit cut off by a connection reset). So a cancelled commit looks for the
request tasks started during it and logs how each ends, in one line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable

log = logging.getLogger("worker.source.kafka")

#: The coroutine aiokafka's consumer shields for each commit request (aiokafka 0.14).
REQUEST = "_do_commit_offsets"


def _requests() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks()
            if not task.done() and getattr(task.get_coro(), "__name__", "") == REQUEST}  # fmt: skip


class CancelledCommits:
    """The aiokafka source's: watches what its cancelled commits left in flight. In an
    outage every commit round's request is left so: the first failure of a run is a
    warning, the next ones debug lines until one lands (as `commit_failed`)."""

    def __init__(self) -> None:
        self._failing = False

    async def commit(self, commit: Awaitable[None], partitions: str) -> None:
        """Await `commit`; if it is cancelled, the requests it left in flight are watched."""
        before = _requests()
        try:
            await commit
        except asyncio.CancelledError:
            for task in _requests() - before:
                task.add_done_callback(functools.partial(self._settled, partitions))
            raise

    def _settled(self, partitions: str, task: asyncio.Task[object]) -> None:
        if task.cancelled():
            log.info("event=commit_settled_after_cancel partitions=%s outcome=cancelled",
                     partitions)  # fmt: skip
            return
        exc = task.exception()  # retrieved: never asyncio's traceback
        if exc is None:
            self._failing = False
            log.info("event=commit_settled_after_cancel partitions=%s outcome=landed", partitions)
            return
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(
            level,
            "event=commit_settled_after_cancel partitions=%s outcome=failed error=%r note='a "
            "commit given up on by its bound failed later: nothing of it landed'",
            partitions, str(exc) or type(exc).__name__,
        )  # fmt: skip
