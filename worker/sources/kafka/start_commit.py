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

A start not committed is also owed by every later commit round of the member while it
owns the partition (`owed`, sent with the notes by the sources' `flush_notes`), a
revoke's or shutdown's final commit among them, within the same bound: a worker stopped
inside its start commit (SIGTERM) handled nothing of the partition, so its final
commit had nothing to send, it left no checkpoint, and the next worker (latest) started
at the end again (measured: 10 of 10 a partition, both clients, the held commit lost
with its connection). Never after a commit past the start was sent (`sent`): that one
may have landed, and the checkpoint must not go back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container, Hashable, Iterable, Mapping

from worker.sources.base import OwnershipLost

log = logging.getLogger("worker.source.kafka")

#: The start commit holds the rebalance callback: in an outage the listener stops waiting
#: this soon (the clients retry a commit until the coordinator answers). aiokafka's request
#: goes on unawaited (`aiokafka_orphans` says how it ends); librdkafka's poller thread still
#: waits for its own commit before it assigns. Not bounded there: confluent-kafka's
#: synchronous commit takes no timeout, and an asynchronous one is answered only in a
#: later `consume()` and can be retried by librdkafka after a commit sent behind it (it
#: retries a commit after a connection reset, measured: test_start_commit_cut_off), moving
#: the checkpoint back; the one poller thread's synchronous commits keep them in order. A
#: SIGTERM in a total outage takes the shutdown budget on both clients alike (30 s of 30,
#: measured through the commit-holding proxy): the final commit's bound, then leaving the
#: group (`source_stop`) waits for the broker.
START_COMMIT_TIMEOUT_S = 5.0


class FreshStarts:
    """The partitions taken with no checkpoint of the group's, until their start is
    committed (or they go): kept by each Kafka source."""

    def __init__(self) -> None:
        self._fresh: set[Hashable] = set()
        #: Starts taken here that are not known to be the group's checkpoint: kept when
        #: their partition goes, until one is committed or a checkpoint is found. One
        #: int for each partition whose start and final commits both failed, never more
        #: than the partitions ever taken: dropped, a retake would skip records again.
        self._unsaved: dict[Hashable, int] = {}
        #: Unsaved starts a commit past them was sent for: no longer owed (see `sent`).
        self._passed: set[Hashable] = set()

    def found(self, partition: Hashable, start: int) -> int:
        """The group has no checkpoint of `partition`; `starting_position` says `start`.
        Where reading starts: an earlier start taken here and never committed, if lower
        (records between were written after the group's start: they are owed)."""
        self._fresh.add(partition)
        start = min(self._unsaved.get(partition, start), start)
        self._unsaved[partition] = start
        self._passed.discard(partition)
        return start

    def checkpointed(self, partition: Hashable) -> None:
        """The group has a checkpoint of `partition` (read as it is taken, or again after
        a fence): reading starts there."""
        self._fresh.discard(partition)
        self.landed([partition])

    def sent(self, offsets: Mapping[Hashable, int]) -> set[Hashable]:
        """A commit of these (next to read) is being sent. One past an unsaved start may
        land even if it is not acknowledged: the start is not owed any more (committed
        after it, it would move the checkpoint back); it is still kept for a retake.
        The partitions it passed now (for `unsent`)."""
        passing = {tp for tp, offset in offsets.items() if tp not in self._passed
                   and (start := self._unsaved.get(tp)) is not None and offset > start}  # fmt: skip
        self._passed |= passing
        return passing

    def unsent(self, passing: Iterable[Hashable]) -> None:
        """The commit `sent` said `passing` of certainly did not land (a transaction
        aborted before its commit): their starts are owed again. Else a start cut off
        at the take stayed unsent while every transaction failed (an output refused),
        and a worker stopped then left no checkpoint: the next one (latest) started
        at the end, past every record written since."""
        self._passed.difference_update(passing)

    def landed(self, partitions: Iterable[Hashable]) -> None:
        """A commit of `partitions` was acknowledged: the group has a checkpoint of them."""
        for tp in partitions:
            self._unsaved.pop(tp, None)
            self._passed.discard(tp)

    def owed(self, owned: Container[Hashable]) -> dict[Hashable, int]:
        """The unsaved starts of `owned` partitions that no commit past them was sent for,
        and whose first start commit is not still to come: to be committed (next to read)."""
        return {tp: start for tp, start in self._unsaved.items()
                if tp in owned and tp not in self._passed and tp not in self._fresh}  # fmt: skip

    def not_committed(
        self, owed: Mapping[Hashable, int], exc: BaseException, label: Callable[[Hashable], str]
    ) -> None:
        """A commit round that carried owed starts failed (or its bound cut it off)."""
        log.warning(
            "event=start_not_committed partitions=%s error=%r note='retried with a commit "
            "round (a revoke or shutdown: its final commit), not acknowledged; if this "
            "member leaves now, the next owner starts where starting_position says "
            "(latest: past every record written since)'",
            ",".join(f"{label(tp)}@{start}" for tp, start in owed.items()),
            "cut off by its bound" if isinstance(exc, asyncio.CancelledError)
            else str(exc) or type(exc).__name__,
        )  # fmt: skip

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
        self.landed(fresh)


async def owed_with(
    fresh: FreshStarts,
    owed: Mapping[Hashable, int],
    due: Mapping[Hashable, int],
    commit: Callable[[Mapping[Hashable, int]], Awaitable[None]],
    label: Callable[[Hashable], str],
) -> None:
    """A source's `flush_notes`: commit `due` (notes at their committed offsets, next to
    read) with the `owed` starts, through the source's `commit` (last done); a failure
    that carried starts is said (`not_committed`), then raised as any commit's."""
    offsets = {**due, **owed}
    if not offsets:
        return
    try:
        await commit({tp: offset - 1 for tp, offset in offsets.items()})
    except BaseException as exc:  # its bound's cancel too: said, never silent
        if owed:
            fresh.not_committed(owed, exc, label)
        raise
