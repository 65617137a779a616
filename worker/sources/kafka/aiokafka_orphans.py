"""aiokafka's commit requests that outlive a cancelled commit: their outcome is said, and
a commit in a transaction waits for them.

`AIOKafkaConsumer.commit` sends each request in a task of its own that it shields: a
commit cancelled by its bound (the start commit's `START_COMMIT_TIMEOUT_S`, the
committer's `COMMIT_TIMEOUT_S`, a shutdown step's) leaves that request in flight, and
asyncio drops the shield's callback, so when the request fails later nobody awaits it:
the log showed `Task exception was never retrieved` with a traceback (adversary A11, a
start commit cut off by a connection reset). So a cancelled commit looks for the
request tasks started during it that carry its partitions (another commit's request,
started meanwhile, is that one's: said as its own, or not at all) and logs how each
ends, in one line.

Such a request can still land. Later commits of the consumer go on the same connection,
behind it; a transaction's (`outputs.exactly_once`) go on its producer's, and one sent
while the request was held on a stalled connection was overtaken by it: the checkpoint
moved back to the start (adversary B12: 10 of 10 a partition handled again, their
outputs sent twice, tests/adversary/test_start_commit_cut_off). So a commit in a
transaction first waits for those of its partitions (`settled`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable

log = logging.getLogger("worker.source.kafka")

#: The coroutine aiokafka's consumer shields for each commit request (aiokafka 0.14).
REQUEST = "_do_commit_offsets"


def _requests() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks()
            if not task.done() and getattr(task.get_coro(), "__name__", "") == REQUEST}  # fmt: skip


def _carried(task: asyncio.Task[object], ours: frozenset[Hashable]) -> frozenset[Hashable]:
    """The partitions of the request (its coroutine's `offsets`; ours if it has none)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    offsets = frame.f_locals.get("offsets") if frame is not None else None
    return frozenset(offsets) if isinstance(offsets, dict) else ours


class CancelledCommits:
    """The aiokafka source's: watches what its cancelled commits left in flight. In an
    outage every commit round's request is left so: the first failure of a run is a
    warning, the next ones debug lines until one lands (as `commit_failed`)."""

    def __init__(self) -> None:
        self._failing = False
        #: The requests left in flight, with their partitions, until they end.
        self._left: dict[asyncio.Task[object], frozenset[Hashable]] = {}
        self._said: set[asyncio.Task[object]] = set()  # of those, the ones waited for

    async def commit(
        self,
        commit: Awaitable[None],
        partitions: Collection[Hashable],
        label: Callable[[Hashable], str] = str,
    ) -> None:
        """Await `commit` (of `partitions`); if it is cancelled, the requests it left in
        flight are watched."""
        before = _requests()
        try:
            await commit
        except asyncio.CancelledError:
            ours = frozenset(partitions)
            for task in _requests() - before - self._left.keys():
                carried = _carried(task, ours)
                if carried == ours:
                    self._left[task] = carried
                    names = ",".join(sorted(map(label, carried)))
                    task.add_done_callback(functools.partial(self._settled, names))
            raise

    async def settled(self, partitions: Collection[Hashable]) -> None:
        """Until the requests left in flight that carry any of `partitions` have ended."""
        wanted = set(partitions)
        left = [task for task, carried in self._left.items() if not wanted.isdisjoint(carried)]
        if not left:
            return
        if not self._said.issuperset(left):  # once a request: a transaction of each partition waits
            self._said.update(left)
            log.info("event=commit_waits_for_cancelled requests=%d note='a commit cut off by "
                     "its bound is still in flight: sent behind it, not beside it'",
                     len(left))  # fmt: skip
        await asyncio.wait(left)

    def _settled(self, partitions: str, task: asyncio.Task[object]) -> None:
        self._left.pop(task, None)
        self._said.discard(task)
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
