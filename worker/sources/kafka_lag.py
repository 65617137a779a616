"""`worker lag`: a consumer group's committed offsets, end offsets and lag, from the broker.

Like `kafka-consumer-groups --describe`: it reads the group's offsets with the
admin API, so it works whether or not a worker is running.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from worker.config import SourceConfig


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


async def group_lag(config: SourceConfig) -> list[PartitionLag]:
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=config.bootstrap_servers)
    try:
        await admin.start()
        await consumer.start()
        described = await admin.describe_topics(config.topics)
        tps = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if not t.get("error_code")
            for p in t["partitions"]
        ]
        committed = await admin.list_consumer_group_offsets(config.group_id, partitions=tps)
        ends = await consumer.end_offsets(tps)
    except KafkaConnectionError as exc:
        raise ConnectionError(
            f"kafka: cannot connect to {config.bootstrap_servers}: {exc}"
        ) from exc
    except KafkaError as exc:
        raise ConnectionError(f"kafka: {type(exc).__name__}: {exc}") from exc
    finally:
        await consumer.stop()
        await admin.close()
    rows = []
    for tp in sorted(tps):
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        rows.append(PartitionLag(tp.topic, tp.partition, offset, ends[tp]))
    return rows
