"""The read-only view of a running worker that health, the watchdog and status read."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RetryingBatch:
    """A failed batch (or record) of a partition waiting for its next attempt.

    Published because a record that always fails holds its partition for ever
    under unlimited retries, and nothing else shows it: the worker stays ready.
    """

    #: Source position of the first record retried, and how many records are retried.
    position: int
    records: int
    #: Failed invocations of it so far.
    attempts: int
    #: As `errors.shown_error` makes it: type and the message's first 200 characters.
    error: str
    #: Wall-clock time (epoch seconds) of its first failure.
    since: float
    #: The `file:line` that raised, where it is known.
    where: str = ""


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """A snapshot one partition publishes of itself."""

    key: Hashable
    label: str
    #: When this owner was given the partition (monotonic): a new assignment is a new life.
    assigned_at: float
    #: Last position this owner checkpointed, and the same as the source's tools show it.
    committed: int | None
    shown_committed: int | None
    #: Records fed and not yet resolved: buffered, in a handler, or waiting for the low
    #: watermark.
    unfinished: int
    buffered: int
    paused: bool
    #: Being drained for a revoke or shutdown: its own deadline bounds it.
    releasing: bool
    halted: str | None
    committed_records: int
    dead_lettered: int
    iterator_age_s: float
    inflight: int
    #: Batches of it being retried now (one per key lane at most).
    retrying: tuple[RetryingBatch, ...] = ()


class WorkerView(Protocol):
    def partition_stats(self) -> Sequence[PartitionStats]:
        """Every partition this worker owns now."""
        ...

    def waiting(self, key: Hashable) -> bool:
        """The source knows of records of `key` past its checkpoint not yet delivered."""
        ...

    def lag(self, key: Hashable) -> int | None:
        """Records between the checkpoint and the end, where the source counts them."""
        ...

    def not_ready_reason(self) -> str | None:
        """Why the worker's lifecycle makes it not ready (starting, stopping, a dead task)."""
        ...
