"""The contract between the pipeline and a record source.

Kafka partitions, Kinesis shards and the in-memory log all look the same to
the pipeline: the source owns a set of partitions (by group assignment or by
lease), delivers their records in position order in chunks, can pause a
partition, and checkpoints "everything up to and including position P of
partition X is done". Ownership changes arrive through `AssignmentListener`;
the source awaits `on_revoked` before it gives a partition away, which is
where the pipeline drains and checkpoints (a Kafka revoke, a Kinesis lease
hand-off or shard end).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Protocol

PartitionKey = Hashable


class AssignmentListener(Protocol):
    async def on_assigned(self, partitions: Sequence[PartitionKey]) -> None: ...

    async def on_revoked(self, partitions: Sequence[PartitionKey]) -> None: ...


class OwnershipLost(Exception):
    """Checkpoints were refused because this worker no longer owns some partitions.

    `lost` names them; the other partitions of the same commit call were checkpointed.
    A source that cannot tell (Kafka refuses a whole commit) names them all.
    """

    def __init__(self, message: str, lost: Iterable[Hashable]) -> None:
        super().__init__(message)
        self.lost = frozenset(lost)


class Source(Protocol):
    """A partitioned, checkpointed log read by one worker among a group."""

    name: str
    #: The number of payload bytes of one record (a C-level callable where possible,
    #: since the batcher maps it over whole chunks).
    record_size: Callable[[Any], int]
    #: The record's timestamp in epoch milliseconds, likewise C-level where possible.
    record_timestamp_ms: Callable[[Any], int]

    def attach(self, metrics: Any) -> None:
        """Take the worker's metrics, for what only the source sees (leases, throttles)."""

    async def start(self, listener: AssignmentListener) -> None:
        """Connect, join the group and begin delivering; fail fast on bad settings."""

    async def fetch(self, timeout_s: float) -> Mapping[PartitionKey, Sequence[Any]]:
        """Next chunks of records per owned, unpaused partition (possibly none)."""

    def pause(self, partition: PartitionKey) -> None: ...

    def resume(self, partition: PartitionKey) -> None: ...

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        """Checkpoint each partition as done up to and including the given position."""

    def label(self, partition: PartitionKey) -> str:
        """A stable human name for metrics and logs: "topic-3", "shardId-0001"."""

    def lag(self, partition: PartitionKey) -> int | None:
        """Records between the last checkpoint and the end of the partition, if known."""

    async def stop(self) -> None:
        """Leave the group and release everything; the listener has been drained before."""
