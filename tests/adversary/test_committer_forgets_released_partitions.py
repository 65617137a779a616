"""A released partition never comes back into the committer through a failed commit.

Fault injected at the source boundary: the memory source's `commit` is made to wait
for the test, which then lets each call through or fails it (ConnectionError, as a
coordinator outage would).
"""

import asyncio

from worker.runtime.worker import Worker
from worker.sources.memory import MemorySource
from worker.testing import MemoryBroker, memory_config, wait_until

TOPIC = "t"
P0, P1 = (TOPIC, 0), (TOPIC, 1)


class GatedSource(MemorySource):
    """Every commit call waits until the test answers it: None lets it through."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gated = False
        self.held: list[tuple[dict, asyncio.Future]] = []
        self.calls: list[dict] = []
        #: Partitions whose release the listener finished (it returned from on_revoked).
        self.released: set = set()
        #: Commit calls that named a partition after its release.
        self.late: list[dict] = []

    async def revoke(self, partitions):
        assert self._listener is not None
        await self._listener.on_revoked(list(partitions))
        self.released.update(partitions)
        for tp in partitions:
            self.positions.pop(tp, None)

    async def assign(self, partitions):
        self.released.difference_update(partitions)
        await super().assign(partitions)

    async def commit(self, positions):
        self.calls.append(dict(positions))
        if self.released.intersection(positions):
            self.late.append(dict(positions))
        if self.gated:
            answer = asyncio.get_running_loop().create_future()
            self.held.append((dict(positions), answer))
            error = await answer
            if error is not None:
                raise error
        await super().commit(positions)

    def answer(self, error=None) -> dict:
        positions, future = self.held.pop(0)
        future.set_result(error)
        return positions


async def test_a_partition_released_while_commits_fail_is_not_committed_again():
    """Kafka refuses a whole commit naming a partition the member no longer owns
    (aiokafka IllegalStateError -> OwnershipLost for every partition of the call), so a
    released partition coming back drops the progress of every healthy partition of that
    round; here we check the core never offers it."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 2)
    gate0 = asyncio.Event()

    async def handler(batch):
        if batch.records[0].partition == 0:
            await gate0.wait()

    source = GatedSource(broker, [TOPIC])
    config = memory_config({"source": {"commit_interval_ms": 0}})
    w = Worker(config, source=source, handler=handler)
    task = asyncio.create_task(w.serve())
    try:
        await wait_until(lambda: w.assignments.get(P0) is not None)
        broker.produce(TOPIC, b"{}", partition=0)  # in the handler until gate0
        await wait_until(lambda: w.partition(P0).stats().inflight == 1)
        source.gated = True
        broker.produce(TOPIC, b"{}", partition=1)  # handled: the committer's commit C1 waits
        await wait_until(lambda: len(source.held) == 1)
        revoke = asyncio.create_task(source.revoke([P0]))
        await wait_until(lambda: w.assignments.get(P0) is None)  # popped, draining
        gate0.set()  # P0's batch finishes: it tells the committer, the release commits
        await wait_until(lambda: len(w.committer._lock._waiters or ()) == 1)
        assert source.answer() == {P1: 0}  # C1 goes through
        await wait_until(lambda: len(source.held) == 1)
        assert source.answer(ConnectionError("coordinator down")) == {P0: 0}  # the release's
        # The loop's own round had P0 too (it told the committer as it finished); a
        # partition being released is no longer offered there, so nothing else is held.
        await asyncio.wait_for(revoke, 5)
        source.gated = False
        while source.held:
            source.answer()
        broker.produce(TOPIC, b"{}", partition=1)  # the next round
        await wait_until(lambda: broker.committed("test", TOPIC, 1) == 2)
        assert source.late == [], f"released partition offered again: {source.late}"
    finally:
        gate0.set()
        for _, future in source.held:
            future.set_result(None)
        w.request_exit()
        await asyncio.wait_for(task, 10)
