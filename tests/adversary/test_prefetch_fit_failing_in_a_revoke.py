"""The source failing to fit its prefetch at a revoke (aiokafka moved the fetcher's
attributes: `apply_limits` raises) must not cut the revoke short: the revoked
partitions were already dropped from the owned ones, so a drain skipped there left
their handler calls running beside the next owner, and nothing of them committed."""

from __future__ import annotations

import asyncio

import pytest

from worker.runtime.worker import Worker
from worker.sources.memory import MemoryBroker, MemorySource
from worker.testing import memory_config


class FitFailsAtTheRevoke(MemorySource):
    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        if self.prefetch_shares:
            raise RuntimeError("aiokafka's consumer has no fetcher with _fetch_max_bytes")
        return super().fit_prefetch(share_bytes, partitions)


async def test_a_revoke_whose_fit_fails_still_drains_and_commits_the_partition():
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for i in range(10):
        broker.produce("t", b"%d" % i, partition=1)
    running: dict[int, int] = {0: 0, 1: 0}
    entered = asyncio.Event()

    async def handler(batch) -> None:
        p = batch.records[0].partition
        running[p] += 1
        entered.set()
        await asyncio.sleep(0.05)  # a call in flight when the revoke comes (work, not sync)
        running[p] -= 1

    source = FitFailsAtTheRevoke(broker, ["t"], group_id="g")
    cfg = memory_config({"batching": {"batch_size": 10}})
    worker = Worker(cfg, source=source, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        await asyncio.wait_for(entered.wait(), 10)
        with pytest.raises(RuntimeError, match="fetcher"):
            await source.revoke([("t", 1)])
        assert running[1] == 0  # drained before the revoke returned
        assert broker.committed("g", "t", 1) == 10
    finally:
        worker.request_exit()
        await task
