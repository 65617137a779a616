"""Producing a commit round's outputs: per batch of the client, not per record.

`AIOKafkaProducer.send` costs tens of microseconds a record in Python, which made it
most of the cost of an output; its batch API (`create_batch`, `send_batch`) appends to
a record batch for a fraction of that. Outputs are partitioned as `send` would (the
client's default partitioner: murmur2 of the key, a random partition without one), so
an output's key decides its partition and each partition's outputs keep their order.
Transactional producers add each partition to their transaction the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from worker.outputs.outbox import Output

#: The outputs producer's record batches: large, since a round sends many at once
#: (within Kafka's default `max.message.bytes` of about 1 MB).
BATCH_BYTES = 512 * 1024
_partitioner = DefaultPartitioner()


async def produce(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> None:
    """Send every output and wait for all acknowledgements (raises the first error)."""
    partitions: dict[str, list[int]] = {}
    groups: dict[tuple[str, int], list[Output]] = {}
    for o in outputs:
        parts = partitions.get(o.topic)
        if parts is None:
            parts = partitions[o.topic] = sorted(await producer.partitions_for(o.topic))
        groups.setdefault((o.topic, _partitioner(o.key, parts, parts)), []).append(o)
    acks: list[Any] = []
    for (topic, partition), items in groups.items():
        batch = producer.create_batch()
        for o in items:
            if not _append(batch, o):  # full: send it, start the next
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if not _append(batch, o):  # an empty batch takes any one record
                    raise RuntimeError("an empty record batch refused an output")
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*acks)


def _append(batch: Any, o: Output) -> bool:
    return batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers) is not None
