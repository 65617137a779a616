"""A revoke cancelled part-way (aiokafka cancels its coordinator's task when it closes)
still forgets the partitions: nothing of theirs may be committed afterwards. Before, the
cancellation skipped `forget` and the source kept them as its own (adversary A2)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from worker.sources.kafka.aiokafka_rebalance import RebalanceBridge
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.source import KafkaSource

TP = TopicPartition("t", 0)


class BlockedRevoke:
    def __init__(self) -> None:
        self.inside = asyncio.Event()

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        self.inside.set()
        await asyncio.Event().wait()  # a drain that never ends


async def test_a_revoke_cancelled_inside_the_listener_forgets_its_partitions():
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=["127.0.0.1:9"], topics=["t"]))
    listener = BlockedRevoke()
    source._announced.add(TP)  # as after an assignment (no broker here)
    source._committed[TP] = 7
    revoke = asyncio.create_task(RebalanceBridge(source, listener).on_partitions_revoked({TP}))
    await listener.inside.wait()
    revoke.cancel()
    await asyncio.gather(revoke, return_exceptions=True)
    assert TP not in source._announced and TP not in source._committed
