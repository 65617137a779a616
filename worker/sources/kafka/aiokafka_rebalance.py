"""aiokafka's rebalance callbacks as our listener's, awaited in order (the aiokafka source's;
librdkafka has its own, `librdkafka_rebalance`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition

from worker.sources.base import AssignmentListener


class RebalanceOwner(Protocol):
    """What the bridge needs of the aiokafka source."""

    def hold(self, partitions: Sequence[TopicPartition]) -> None: ...

    async def prepare(self, partitions: list[TopicPartition]) -> None: ...

    async def commit_starts(self, partitions: Sequence[TopicPartition]) -> None: ...

    def release(self, partitions: Sequence[TopicPartition]) -> None: ...

    def forget(self, partitions: Sequence[TopicPartition]) -> None: ...

    def fail(self, doing: str, partitions: Sequence[TopicPartition], exc: Exception) -> None: ...


class RebalanceBridge(ConsumerRebalanceListener):
    """Turns aiokafka's rebalance callbacks into our listener's, awaited in order.

    aiokafka awaits these before it rejoins the group, so the pipeline can drain
    and commit revoked partitions while this member still owns them. aiokafka
    fetches newly assigned partitions while the assigned callback still runs
    (reading committed offsets takes round trips); a record returned then would
    find no partition to take it while the consumer's position moved past it.
    So new partitions stay paused until the listener has them.
    """

    def __init__(self, source: RebalanceOwner, listener: AssignmentListener) -> None:
        self._source = source
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Any) -> None:
        partitions = sorted(revoked)
        try:
            if partitions:
                await self._listener.on_revoked(partitions)
        except Exception as exc:  # aiokafka would log it and go on with a half-revoke
            self._source.fail("revoking", partitions, exc)
        finally:  # cancelled too (aiokafka's close): nothing of theirs is committed after
            self._source.forget(partitions)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = sorted(assigned)
        self._source.hold(partitions)
        try:
            await self._source.prepare(partitions)
            await self._listener.on_assigned(partitions)
            await self._source.commit_starts(partitions)  # before a record of theirs flows
        except Exception as exc:  # else: owned, held, and never processed
            self._source.fail("taking", partitions, exc)
            return
        self._source.release(partitions)
