"""Commits a settled partition past what the source skipped: Kafka's transaction markers.

A topic written by a transactional producer has a control record (commit or abort
marker) after each transaction, and under read_committed the records of aborted
transactions are skipped too. Consumers never receive them, so the last handled
record's next offset stays one (or more) short of the end: the group's lag never
reaches 0 (KEDA never scales to zero, `worker lag --wait` waits for ever).

So, from the main loop, right after a fetch was fed (the records the client returned
are in the partitions then, never still on their way), each partition that has settled
(nothing buffered, nothing in flight, everything finished committed) is offered the
position the source says it moved past with nothing left to deliver
(`Source.read_through`); the partition finishes an empty unit there and the committer
checkpoints it. Sources that never skip (Kinesis, memory) say None.

Per `SETTLE_EVERY_S`, not per fetch: the work is per partition owned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from worker.partition.partition import Partition
from worker.sources.base import Source

#: How often settled partitions are offered the source's position. Only an idle
#: partition's lag waits for it (a busy one's next records carry its commit past).
SETTLE_EVERY_S = 1.0


class Settler:
    def __init__(
        self,
        source: Source,
        partitions: Callable[[], Iterable[Partition]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._partitions = partitions
        self._clock = clock
        self._every_s = SETTLE_EVERY_S
        self._next = 0.0
        #: Rounds run (a test waits for rounds, not for time).
        self.rounds = 0

    def after_fetch(self) -> None:
        """Called by the main loop after it fed a fetch; a round at most every interval."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every_s
        self.rounds += 1
        for partition in self._partitions():
            if partition.settled:
                through = self._source.read_through(partition.key)
                if through is not None:
                    partition.pass_to(through)
