"""librdkafka's rebalance callbacks, handed from the poller thread to the event loop.

librdkafka runs `on_assign`, `on_revoke` and `on_lost` inside `consume()`, on the
thread that called it (the source's poller thread), and the rebalance goes on only
when the callback returns. Each callback hands its work to the loop and blocks until
the listener is done: the revoked partitions are drained and committed while this
member still owns them (the commit is queued to this thread, which runs it while it
waits: `librdkafka_calls`), and
new partitions are assigned to the client, so their records flow, only once the
listener has them. A callback never raises into librdkafka: a failure is kept, the
next `fetch` raises it, and the worker stops (the partitions of a failed assignment
are never assigned, so nothing of theirs is read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.sources.kafka.librdkafka_calls import PollerCalls

log = logging.getLogger("worker.source.kafka")

#: A rebalance callback waiting this long for the listener says so (and again each time).
WAIT_LOG_S = 10.0


class RebalanceOwner(Protocol):
    """What the bridge needs of the source: each step runs on the loop."""

    incremental: bool
    closing: bool

    def starts(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> list[Any]: ...

    async def assigned(self, partitions: list[TopicPartition], starts: list[int]) -> None: ...

    async def revoked(self, partitions: list[TopicPartition]) -> None: ...

    async def lost(self, partitions: list[TopicPartition]) -> None: ...

    def fail(
        self, doing: str, partitions: Sequence[TopicPartition], exc: BaseException
    ) -> None: ...


def ours(partitions: Sequence[RdTopicPartition]) -> list[TopicPartition]:
    return sorted(TopicPartition(tp.topic, tp.partition) for tp in partitions)


class RebalanceBridge:
    def __init__(
        self, owner: RebalanceOwner, loop: asyncio.AbstractEventLoop, calls: PollerCalls
    ) -> None:
        self._owner = owner
        self._loop = loop
        self._calls = calls
        #: Whether the listener was told of an assignment yet (an empty one included).
        self._told = False

    def _on_loop(self, coro: Coroutine[Any, Any, None], doing: str) -> None:
        """Run `coro` on the loop and wait for it here, on the poller thread, for as long
        as it takes (the listener bounds its own drain), running the consumer calls it
        asks for meanwhile (its commits); a long wait is logged every `WAIT_LOG_S`, so a
        stalled rebalance names where it waits."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        waited = 0.0
        while not self._calls.serve_until(future, WAIT_LOG_S):
            waited += WAIT_LOG_S
            log.warning("event=rebalance_callback_waiting doing=%s waited_s=%.0f", doing, waited)
        future.result()

    def _guarded(self, doing: str, keys: list[TopicPartition], step: Callable[[], None]) -> bool:
        try:
            step()
            return True
        except BaseException as exc:  # never into librdkafka's C frame
            self._owner.fail(doing, keys, exc)
            return False

    def on_assign(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        keys = ours(partitions)
        if self._owner.closing:  # leaving: take nothing (the group hands them on)
            if not partitions:
                self._assign(consumer, [])
            return
        if not partitions:
            # A member the group gives nothing (more members than partitions) must still
            # hear of its first assignment, as aiokafka's listener does: readiness waits
            # for it, and an idle pod stayed unready for ever. Later empty ones (KIP-848
            # tells of every change) are only for the client.
            if not self._told:
                self._told = True
                self._guarded("taking", [], lambda: self._tell_assigned([]))
            self._assign(consumer, [])
            return
        self._told = True
        starts: list[Any] = []

        def prepare() -> None:
            starts.extend(self._owner.starts(consumer, partitions))
            self._tell_assigned(keys, starts)

        if self._guarded("taking", keys, prepare):
            self._assign(consumer, starts)

    def _tell_assigned(self, keys: list[TopicPartition], starts: Sequence[Any] = ()) -> None:
        self._on_loop(self._owner.assigned(keys, [tp.offset for tp in starts]), "taking")

    def _assign(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        if self._owner.incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        keys = ours(partitions)
        if keys and not self._owner.closing:  # closing: the worker drained them already
            self._guarded(
                "revoking", keys, lambda: self._on_loop(self._owner.revoked(keys), "revoking")
            )
        self._unassign(consumer, partitions)

    def on_lost(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        keys = ours(partitions)
        if keys:
            self._guarded("losing", keys, lambda: self._on_loop(self._owner.lost(keys), "losing"))
        self._unassign(consumer, partitions)

    def _unassign(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        try:
            if self._owner.incremental:
                consumer.incremental_unassign(partitions)
            else:
                consumer.unassign()
            # librdkafka keeps a partition's pause across unassign and assign, and the
            # worker's next partition of it starts unpaused: it would never be resumed
            # and never read again.
            consumer.resume(partitions)
        except Exception as exc:  # the consumer is closing: its assignment goes with it
            log.debug("event=unassign_failed error=%r", exc)
