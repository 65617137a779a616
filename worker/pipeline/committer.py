"""Checkpoints the lanes' finished positions at the source, coalescing commits.

One commit is in flight at a time. Lanes call `notify()` after each finished
batch; the committer then commits every lane whose finished position moved,
waits at least `interval_s`, and goes again if more finished meanwhile. Under
load that coalesces many batches per commit; when idle, a finished batch is
committed at once. Revoke and shutdown call `commit_now()` directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from worker.metrics import Metrics
from worker.pipeline.lane import PartitionLane
from worker.sources.base import OwnershipLost, Source

log = logging.getLogger("worker.committer")


class Committer:
    def __init__(
        self,
        source: Source,
        lanes: Callable[[], Iterable[PartitionLane]],
        interval_s: float,
        metrics: Metrics,
    ) -> None:
        self._source = source
        self._lanes = lanes
        self._interval_s = interval_s
        self._failures = metrics.commit_failures.labels(source.name)
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self.commits = 0

    def notify(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            if not await self.commit_now(self._lanes()):
                self._wanted.set()  # retry after the interval
            await asyncio.sleep(self._interval_s)

    async def commit_now(self, lanes: Iterable[PartitionLane]) -> bool:
        """Commit what the given lanes finished; False if the source refused for now."""
        async with self._lock:
            moved = [
                (lane, lane.committable, lane.uncommitted_records)
                for lane in lanes
                if lane.committable is not None and lane.committable != lane.committed
            ]
            if not moved:
                return True
            try:
                await self._source.commit({lane.key: pos for lane, pos, _ in moved})
            except OwnershipLost as exc:
                # Those partitions are being taken away (a rebalance, a lost lease): their
                # revoke path commits what it still may. The others were checkpointed.
                log.info("event=commit_skipped reason=ownership_lost detail=%r", str(exc))
                moved = [m for m in moved if m[0].key not in exc.lost]
            except ConnectionError as exc:
                self._failures.inc()
                log.warning("event=commit_failed error=%r note='will retry'", str(exc))
                return False
            self.commits += 1
            for lane, pos, count in moved:
                lane.committed = pos
                lane.uncommitted_records -= count
                m = lane.metrics
                m.committed.inc(count)
                m.committed_position.set(pos + 1)
                lag = self._source.lag(lane.key)
                if lag is not None:
                    m.lag.set(lag)
            return True
