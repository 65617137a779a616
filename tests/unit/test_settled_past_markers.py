"""A settled partition is committed past what its source skipped (Kafka's transaction
markers, see `runtime.settle`), and never while a record of it is buffered or in flight:
the source's position may be past records the worker has not handled yet.

On the memory source with a client that says it moved past markers (`through`): the
real clients' side of the decision (when their position can be trusted) is
`tests/unit/test_kafka_fetch_trust.py`, and both on the real broker are
`tests/integration/test_kafka_transaction_markers.py`.
"""

import asyncio

import pytest

from worker.runtime import settle
from worker.sources.memory import MemorySource
from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"
TP = (TOPIC, 0)


class PastMarkers(MemorySource):
    """A source whose log has markers after its records, up to `through` (last done): as
    a real client, it says so once it returned every record (its position at the end)."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker, [TOPIC], group_id="test")
        self.through: int | None = None
        self.asked = 0

    def read_through(self, partition):  # type: ignore[override]
        self.asked += 1
        returned_all = self.positions.get(partition) == self.broker.end_offset(*partition)
        return self.through if returned_all else None


def produce(broker: MemoryBroker, n: int) -> None:
    for i in range(n):
        broker.produce(TOPIC, b'{"n": %d}' % i, partition=0)


@pytest.fixture(autouse=True)
def every_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settle, "SETTLE_EVERY_S", 0.0)  # a round after every fetch


async def rounds_pass(worker, n: int = 5) -> None:
    """`n` settle rounds of the main loop (each after a fetch was fed)."""
    start = worker.assignments.settler.rounds
    await wait_until(lambda: worker.assignments.settler.rounds >= start + n)


async def test_records_still_buffered_keep_the_position_from_being_committed():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    produce(broker, 5)
    source = PastMarkers(broker)
    source.through = 14  # the client says so; offsets 0-4 are still waiting in the batcher
    calls: list[list[int]] = []

    async def handler(batch) -> None:
        calls.append([r.offset for r in batch.records])

    settings = {"batching": {"batch_size": 10, "maximum_batching_window_ms": 1000}}
    frozen = lambda: 0.0  # noqa: E731  the window never ends: the records stay buffered
    async with running_worker(handler, broker, [TOPIC], settings, clock=frozen,
                              source=source) as w:  # fmt: skip
        await wait_until(lambda: [s.buffered for s in w.partition_stats()] == [5])
        await rounds_pass(w)
        assert calls == []
        assert broker.committed("test", TOPIC, 0) is None, "committed past buffered records"
        produce(broker, 5)  # the batch fills (size 10): handled, committed, then passed
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 15)
    assert calls == [list(range(10))]


async def test_a_batch_in_the_handler_keeps_the_position_from_being_committed():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    produce(broker, 5)
    source = PastMarkers(broker)
    source.through = 9
    gate, entered = asyncio.Event(), asyncio.Event()

    async def handler(batch) -> None:
        entered.set()
        await gate.wait()

    async with running_worker(handler, broker, [TOPIC], {"batching": {"batch_size": 5}},
                              source=source) as w:  # fmt: skip
        try:
            await entered.wait()
            asked = source.asked
            await rounds_pass(w)
            assert broker.committed("test", TOPIC, 0) is None, "committed past a batch in flight"
            assert source.asked == asked, "a partition with work left is not even asked"
        finally:
            gate.set()  # else the shutdown waits out its drain deadline for the batch
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 10)


@pytest.mark.parametrize("lanes", [1, 3])
async def test_a_settled_partition_is_committed_to_the_position_once_and_no_further(lanes):
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    for i in range(5):
        broker.produce(TOPIC, b"{}", key=b"k%d" % i, partition=0)  # over every lane
    source = PastMarkers(broker)

    async def handler(batch) -> None:
        pass

    settings = {"batching": {"batch_size": 5}, "handler": {"parallelization_factor": lanes}}
    async with running_worker(handler, broker, [TOPIC], settings, source=source) as w:
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 5)
        await rounds_pass(w)
        assert broker.committed("test", TOPIC, 0) == 5  # nothing said: nothing passed
        source.through = 7
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 8)
        commits = len(source.commits)
        await rounds_pass(w)
        assert len(source.commits) == commits, "the same position committed again"
        source.through = 6  # behind the checkpoint: never backwards
        await rounds_pass(w)
        assert broker.committed("test", TOPIC, 0) == 8
        # The records the source returns next, past the passed position (8, 9 here), are
        # handled and committed as usual; none at or below it is fed again.
        produce(broker, 5)
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 10)
