"""Where a shard with no checkpoint starts: decided once when its lease is made (`new_leases`),
and read off the lease when it is taken (`start_of`). Pure functions, tested without AWS.

`starting_position` names where the mapping starts, not where every shard does. Under
`latest` a shard that appears after the mapping started (a split or merge on Kinesis; on
DynamoDB Streams shards roll over every few hours as a matter of course) is a child whose
lease is taken only once its parents reached SHARD_END: read from the tip then, every
record written to it since it was created would be skipped for good (100 of 200 on
kinesis-local in tests/kinesis/test_reshard_start). Such a shard is read from its oldest
record, as KCL and Lambda read a child after its parent. Shards that existed when the
mapping started keep `starting_position`: a stream resharded yesterday must not replay a
day of its open children under `latest`.

"After the mapping started" is judged from the table, never from one worker's memory: a
worker takes leases only after a complete shard sync, so once any lease has been taken
(its counter moved) every shard that existed before has a lease, and a shard a sync finds
with none is new since. The sync lists the shards *before* it reads the table: a shard
made with `starting_position` because nothing was taken yet existed before any take, and
one made `oldest` was missing from the listing of the worker that took first (made after
it, at most seconds before the first take). So several workers doing their first sync at
once, or a first sync cut off half-way, can neither read a shard that was there at the
start from its oldest record nor one made after the first take from the tip.

The decision is written with the lease's conditional create (`start`), so every worker
that later takes the lease reads the shard from the same place. Rows an older worker made
have no `start`; every lease round marks those it can tell are of a shard made after the
start (`unmarked`) before it takes any: a mark left to the shard sync (every third round)
lost the race with the take of a child whose parent had just ended (20 of 120 records).

Only `latest` changes: a shard made after the mapping started has nothing before
`trim_horizon`'s start, and `at_timestamp` already puts a child at its first record at or
after the timestamp (all of it, for a timestamp before the mapping started; none before a
timestamp still to come).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.sources.kinesis.leases import OLDEST, SHARD_END, Lease


def mapping_started(leases: Iterable[Lease]) -> bool:
    """Some worker took a lease of the table: every shard that existed before has a lease."""
    return any(lease.counter > 0 for lease in leases)


def new_leases(
    listed: Iterable[tuple[str, tuple[str, ...]]], leases: list[Lease]
) -> list[tuple[str, tuple[str, ...], bool]]:
    """The shards listed (before `leases` was read) that have no lease yet: each with its
    parents and whether it is to be read from its oldest record (made after the start)."""
    known = {lease.shard_id for lease in leases}
    late = mapping_started(leases)
    return [(shard_id, parents, late) for shard_id, parents in listed if shard_id not in known]


def unmarked(leases: list[Lease]) -> list[Lease]:
    """Rows an older worker made (no `start`) that are, as far as the table can tell, of a
    shard that appeared after the mapping started: never taken, and a parent that was read
    past a record (pinned, or checkpointed before its end) or was itself made after the
    start. Under `latest` a parent that was already closed when the mapping started is read
    from the tip and ends with nothing read, so a child made at the start never matches.
    A child whose parent had no record read at all is not found (read as today)."""
    if not mapping_started(leases):
        return []
    by_id = {lease.shard_id: lease for lease in leases}

    def read_since_the_start(parent: Lease) -> bool:
        return parent.start == OLDEST or parent.start_at is not None or (
            parent.checkpoint not in (None, SHARD_END))  # fmt: skip

    return [
        lease for lease in leases
        if lease.start is None and lease.counter == 0 and lease.checkpoint is None
        and any(read_since_the_start(by_id[p]) for p in lease.parents if p in by_id)
    ]  # fmt: skip


@dataclass(frozen=True)
class Start:
    """Where a reader of a lease just taken starts: after `after` (the checkpoint), else at
    the stream's oldest record (`oldest`), else AT `at` (a pinned `latest` start), else at
    the starting position, pinned first if `pin` (see `reader`)."""

    after: str | None = None
    oldest: bool = False
    at: str | None = None
    pin: bool = False


def start_of(lease: Lease, at_tip: bool) -> Start:
    """`at_tip`: the starting position is `latest`. A checkpoint always wins. A lease made
    after the start is read from the oldest record, even if an older worker (which knew
    nothing of `start`) pinned a start in it: nothing is checkpointed, so nothing is lost
    and the records before the pin are read too."""
    if lease.checkpoint is not None:
        return Start(after=lease.checkpoint)
    if at_tip and lease.start == OLDEST:
        return Start(oldest=True)
    return Start(at=lease.start_at, pin=at_tip and lease.start_at is None)
