"""Output topics of the tests of batch.send: create one, read it all, count what is in it."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from load.pipeline_telemetry import read_topic

__all__ = [
    "create_output_topic", "expected_outputs", "outputs_seen", "read_topic", "set_topic_config",
]  # fmt: skip


async def create_output_topic(bootstrap: str, name: str, partitions: int = 1, **configs) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        settings = {k.replace("_", "."): str(v) for k, v in configs.items()}
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=settings)])
    finally:
        await admin.close()


async def set_topic_config(bootstrap: str, name: str, **configs) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        settings = {k.replace("_", "."): str(v) for k, v in configs.items()}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, settings)])
    finally:
        await admin.close()


def outputs_seen(
    bootstrap: str, name: str, partitions: int = 2, isolation_level: str = "read_uncommitted"
) -> Counter:
    """How many times each "partition:offset" output is in the topic."""
    values = asyncio.run(asyncio.wait_for(read_topic(bootstrap, name, partitions,
                                                     isolation_level), 60))  # fmt: skip
    return Counter(v.decode().rstrip() for v in values)


def expected_outputs(ends: dict[int, int], skip: set[tuple[int, int]] = frozenset()) -> set[str]:
    return {f"{p}:{o}" for p, end in ends.items() for o in range(end) if (p, o) not in skip}
