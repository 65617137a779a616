"""The contract between the core and a record source, and the traits the core may ask of it.

Kafka partitions, Kinesis shards and the in-memory log all look the same to
the core: the source owns a set of partitions (by group assignment or by
lease), delivers their records in position order in chunks, can pause a
partition, and checkpoints "everything up to and including position P of
partition X is done". Ownership changes arrive through `AssignmentListener`;
the source awaits `on_revoked` before it gives a partition away, which is
where the core drains and checkpoints (a Kafka revoke, a Kinesis lease
hand-off or shard end).

Whatever differs between sources and matters to the core (how big a record
is, its timestamp, what a buffered one costs in memory, how it crosses to a
handler process, how a checkpoint reads) is a trait the source declares,
never a comparison of source names in the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from worker.errors import StartError
from worker.records import Record

if TYPE_CHECKING:
    from worker.observe.metrics import Metrics

PartitionKey = Hashable


class SourceStartError(StartError):
    """The source could not start; the message says why in one line."""


class SourceFailed(Exception):
    """The source cannot go on (a rebalance callback failed, a lease cannot be renewed).

    Raised from `fetch()`: the worker stops, turns not ready and exits 1, rather than
    own partitions it no longer processes.
    """


class AssignmentListener(Protocol):
    async def on_assigned(self, partitions: Sequence[PartitionKey]) -> None: ...

    async def on_revoked(self, partitions: Sequence[PartitionKey]) -> None: ...

    async def on_lost(self, partitions: Sequence[PartitionKey]) -> None:
        """Taken away without a hand-over (another owner already reads them): abandon
        their batches at once, commit nothing more of them."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a long-lived task of the source's (a reader, a lease keeper) under the
        worker's supervisor: one that dies of an error turns the worker not ready and
        ends it, so no part of a source fails silently."""
        ...


class NothingCommitted(Exception):
    """A commit in a transaction that certainly did not land (aborted before its commit):
    the source may count its offsets as never sent (a start it passed is owed again)."""


class OwnershipLost(Exception):
    """Checkpoints were refused because this worker no longer owns some partitions.

    `lost` names them; the other partitions of the same commit call were checkpointed.
    A source that cannot tell (Kafka refuses a whole commit) names them all.
    """

    def __init__(self, message: str, lost: Iterable[Hashable]) -> None:
        super().__init__(message)
        self.lost = frozenset(lost)


def next_to_read(last_done: int) -> int:
    """A checkpoint as an offset log shows it: the next position to read."""
    return last_done + 1


def last_done(position: int) -> int:
    """A checkpoint as a sequence-numbered stream shows it: the last position done."""
    return position


@dataclass(frozen=True, slots=True)
class RecordTraits:
    """What the core needs to know about a source's records.

    Every callable is a module-level function (or a C-level `attrgetter`), so the
    traits pickle by reference into a handler process, and `size`/`timestamp_ms`
    can be mapped over a whole chunk at C speed.
    """

    #: Payload bytes of one record.
    size: Callable[[Any], int]
    #: The record's timestamp in epoch milliseconds.
    timestamp_ms: Callable[[Any], int]
    #: Memory a buffered record costs beyond its value bytes (the record object, key and
    #: value headers), counted against the buffer limits so that they bound what RSS sees.
    overhead_bytes: int
    #: Records to a few flat, picklable columns, and back to records with the full API:
    #: how a batch crosses to a handler process without one pickled object per record.
    pack: Callable[[Sequence[Any]], Any]
    unpack: Callable[[Any], list[Any]]
    #: A checkpoint (the last position done) as the source's own tools show it.
    shown_checkpoint: Callable[[int], int]
    #: OpenTelemetry's `messaging.system` for spans of these records.
    messaging_system: str = "unknown"


class Source(Protocol):
    """A partitioned, checkpointed log read by one worker among a group."""

    name: str
    traits: RecordTraits
    #: How long from a revoke's start the source can keep a partition from its next owner
    #: while a handler call of it still runs; None: no longer than the drain deadline (a
    #: call still running then makes the worker fail stop, exit 3).
    revoke_hold_s: float | None

    def attach(self, metrics: Metrics) -> None:
        """Take the worker's metrics, to add the families only this source sees."""

    async def start(self, listener: AssignmentListener) -> None:
        """Connect, join the group and begin delivering; SourceStartError on bad settings."""

    async def fetch(self, timeout_s: float) -> Mapping[PartitionKey, Sequence[Record]]:
        """Next chunks of records per owned, unpaused partition (possibly none)."""

    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        """Your share of the memory budget is `share_bytes` for `partitions` owned ones:
        hold no more than that fetched ahead of `fetch` (set the client's fetch limits
        from it; a record larger than a partition's part must still get through).
        Returns the most the source may now hold ahead, which the pipeline's buffers do
        not get. Called on every assignment change, never per fetch."""

    def pause(self, partition: PartitionKey) -> None: ...

    def resume(self, partition: PartitionKey) -> None: ...

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:
        """Checkpoint each partition as done up to and including the given position."""

    async def commit_in_transaction(
        self,
        positions: Mapping[PartitionKey, int],
        commit: Callable[[Mapping[Any, Any], str], Awaitable[None]],
    ) -> None:
        """Kafka only (`outputs.exactly_once`): as `commit`, with the same checks and
        bookkeeping, but the offsets (the source's own form, notes included) and the group
        id are handed to `commit`, which puts them in a transaction with their outputs."""

    async def resume_from_committed(self, partitions: Sequence[PartitionKey]) -> None:
        """Kafka only (exactly once): read the checkpoints again and resume there; called
        while the partitions are being assigned, after the sink fenced earlier owners."""

    async def committed_offset(self, partition: PartitionKey) -> int | None:
        """Kafka only (exactly once): the group's checkpoint as the broker has it now (the
        next offset to read), to settle a transaction whose commit was in doubt."""

    def keep_notes(self) -> None:
        """Keep each partition's note with its checkpoints from now on (see `remember`)."""

    def remember(self, partition: PartitionKey, note: str) -> None:
        """Write `note` (short) with the partition's next checkpoints, for its next owner:
        the dead-letter guard's counts, so a halt outlives a restart."""

    def recall(self, partition: PartitionKey) -> str:
        """The note of the partition's last checkpoint when it was assigned ('' if none)."""

    async def flush_notes(self) -> None:
        """Write notes that changed while their partition's position did not move (the
        guard halted a partition inside a batch): at the positions already checkpointed."""

    def label(self, partition: PartitionKey) -> str:
        """A stable human name for metrics and logs: "topic-3", "shardId-0001"."""

    def lag(self, partition: PartitionKey) -> int | None:
        """Records between the last checkpoint and the end of the partition, if known."""

    def read_through(self, partition: PartitionKey) -> int | None:
        """The last position the client moved past with every record up to it returned by
        `fetch` or never a record for us (Kafka's transaction markers, aborted records),
        when that is past the checkpoint; None if not, or if it cannot be sure. Asked only
        for a settled partition (see `runtime.settle`): the core commits it."""

    def waiting(self, partition: PartitionKey) -> bool:
        """True when the source knows of records past the checkpoint not yet delivered:
        a record lag (Kafka) or a time behind the stream's tip (Kinesis). The commit
        watchdog reads it, with the partition's own unfinished records."""

    async def stop_taking(self) -> None:
        """Take no more partitions: the worker is shutting down and is about to release
        what it owns (which stays owned until `stop`)."""

    async def stop(self) -> None:
        """Leave the group and release everything; the listener has been drained before."""
