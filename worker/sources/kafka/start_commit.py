"""A new partition's start, committed as the group's checkpoint before any of its records
is handed out (both Kafka clients).

A partition the group has no checkpoint of starts where `starting_position` says. Until
a first commit, that start exists only in this member's memory: a worker gone before it
(kill -9, a lost session) leaves none, and the next owner starts where
`starting_position` says again. With `latest` that is the end at its own start, past
every record written since the first one: skipped for good, and committed past with the
next record handled (measured: 10 of 10 a partition, both clients,
tests/integration/test_kafka_fresh_group_start). So the start is committed while the
partition is still being taken: after the listener took it (exactly once fenced the
earlier owner's producers there and read the checkpoint again, `resume_from_committed`:
a start decided before the fence may be stale) and before its records flow.

Nothing below the start is read, so nothing unhandled is committed past. A commit that
fails is logged and reading starts all the same: the partition's first checkpoint then
comes with its first handled records, as before. Its start is kept past the partition's
revoke or loss: a worker cut off from the broker inside that commit is expired by the
group and takes its partitions again, still with no checkpoint; starting where
`starting_position` says then (with `latest`, the end again) skipped every record written
since the first start, and committed past them (measured: 10 of 10 a partition, both
clients, tests/adversary/test_start_commit_cut_off). So it starts at the earlier start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping

from worker.sources.base import OwnershipLost

log = logging.getLogger("worker.source.kafka")

#: The start commit holds the rebalance callback: in an outage the listener stops waiting
#: this soon (the clients retry a commit until the coordinator answers). aiokafka's request
#: goes on unawaited; librdkafka's poller thread still waits for its own commit, up to its
#: request timeout, before it assigns (measured by adversary A11: a SIGTERM then took the
#: whole shutdown budget).
START_COMMIT_TIMEOUT_S = 5.0


class FreshStarts:
    """The partitions taken with no checkpoint of the group's, until their start is
    committed (or they go): kept by each Kafka source."""

    def __init__(self) -> None:
        self._fresh: set[Hashable] = set()
        #: Starts taken here that are not known to be the group's checkpoint: kept when
        #: their partition goes, until one is committed or a checkpoint is found.
        self._unsaved: dict[Hashable, int] = {}

    def found(self, partition: Hashable, start: int) -> int:
        """The group has no checkpoint of `partition`; `starting_position` says `start`.
        Where reading starts: an earlier start taken here and never committed, if lower
        (records between were written after the group's start: they are owed)."""
        self._fresh.add(partition)
        start = min(self._unsaved.get(partition, start), start)
        self._unsaved[partition] = start
        return start

    def checkpointed(self, partition: Hashable) -> None:
        """The group has a checkpoint of `partition` (read as it is taken, or again after
        a fence): reading starts there."""
        self._fresh.discard(partition)
        self._unsaved.pop(partition, None)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Revoked or lost: their unsaved starts stay (see the module's docstring)."""
        self._fresh.difference_update(partitions)

    async def commit(
        self,
        partitions: Iterable[Hashable],
        starts: Mapping[Hashable, int],
        commit: Callable[[Mapping[Hashable, int]], Awaitable[None]],
        label: Callable[[Hashable], str],
    ) -> None:
        """Commit the start of each of `partitions` that is fresh, through the source's
        own `commit` (its positions are the last done: the start's offset - 1)."""
        fresh = [tp for tp in partitions if tp in self._fresh]
        self._fresh.difference_update(fresh)
        if not fresh:
            return
        try:
            async with asyncio.timeout(START_COMMIT_TIMEOUT_S):
                await commit({tp: starts[tp] - 1 for tp in fresh})
        except (OwnershipLost, ConnectionError, TimeoutError) as exc:
            log.warning(
                "event=start_not_committed partitions=%s error=%r note='not acknowledged "
                "(it may still land); read from the start all the same, which is kept for "
                "a retake here; the first checkpoint comes with the first handled records'",
                ",".join(map(label, fresh)), str(exc) or type(exc).__name__,
            )  # fmt: skip
            return
        for tp in fresh:
            self._unsaved.pop(tp, None)
