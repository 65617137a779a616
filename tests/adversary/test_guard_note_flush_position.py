"""flush_notes writes the guard's note "at the positions already checkpointed"; for a
partition the group had no offset for, that position is what `prepare` read for lag
(the end, or the beginning), not where the consumer actually starts reading.

Real broker; the only thing steered is timing: records arrive while the assignment
callback runs (a producer that keeps writing does this on its own, in any busy topic),
after aiokafka reset the new partition's position to the end and before `prepare` read
the end offsets. The worker then reads from the reset position; a halt in its first
batch must not commit past the records it never handled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.kafka_helpers import create_topic, unique
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.markers import fetch_position
from worker.sources.kafka.source import KafkaSource

pytestmark = pytest.mark.kafka


class Listener:
    def __init__(self) -> None:
        self.assigned = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def on_assigned(self, partitions: Sequence[Any]) -> None:
        self.assigned.set()

    async def on_revoked(self, partitions: Sequence[Any]) -> None:
        return None

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task


async def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group, partitions=[tp])
    finally:
        await admin.close()
    meta = found.get(tp)
    return None if meta is None or meta.offset < 0 else meta.offset


@pytest.mark.parametrize("starting_position", ["latest"])
def test_a_halt_in_the_first_batch_of_a_fresh_partition_commits_nothing_past_it(
    kafka: str, starting_position: str
):
    topic, group = unique("notes"), unique("g")
    tp = TopicPartition(topic, 0)

    async def scenario() -> tuple[int, int | None, int | None]:
        await create_topic(kafka, topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka)
        await producer.start()
        for i in range(3):
            await producer.send_and_wait(topic, b"before-%d" % i)
        source = KafkaSource(
            KafkaSourceConfig(
                bootstrap_servers=[kafka], topics=[topic], group_id=group,
                starting_position=starting_position, fetch_max_wait_ms=100,
            )
        )  # fmt: skip
        source.keep_notes()  # the dead-letter guard is on
        load = source._notes.load
        reset_at: list[int | None] = []

        async def load_while_records_arrive(partitions: list[TopicPartition]) -> None:
            # Let aiokafka reset the new partition's position as it does on its own...
            deadline = time.monotonic() + 5
            while fetch_position(source._consumer, tp) is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            reset_at.append(fetch_position(source._consumer, tp))
            # ...then records arrive, before prepare reads the end offsets.
            for i in range(5):
                await producer.send_and_wait(topic, b"during-%d" % i)
            await load(partitions)

        source._notes.load = load_while_records_arrive  # type: ignore[method-assign]
        listener = Listener()
        await source.start(listener)
        try:
            await asyncio.wait_for(listener.assigned.wait(), 30)
            await asyncio.sleep(0.1)  # the bridge resumes the partition after on_assigned
            for i in range(2):  # and more after: there is always something to read
                await producer.send_and_wait(topic, b"after-%d" % i)
            first: int | None = None
            deadline = time.monotonic() + 10
            while first is None and time.monotonic() < deadline:
                chunks = await source.fetch(0.5)
                if chunks.get(tp):
                    first = chunks[tp][0].offset
            assert first is not None, "nothing fetched"
            # The handler failed the first batch and the guard halted the partition: only
            # its note changed, so flush_notes writes it "at the committed position".
            source.remember(tp, "dlg1:0,10,10")
            await source.flush_notes()
            committed = await _committed(kafka, group, tp)
        finally:
            for task in listener.tasks:
                task.cancel()
            await asyncio.gather(*listener.tasks, return_exceptions=True)
            await source.stop()
            await producer.stop()
        return first, committed, reset_at[0] if reset_at else None

    first, committed, reset = asyncio.run(scenario())
    # Nothing from `first` on was handled: a commit past it skips those records for ever.
    assert committed is None or committed <= first, (
        f"committed {committed} past the first unhandled record {first} (position reset to {reset})"
    )
