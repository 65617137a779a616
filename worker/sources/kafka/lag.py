"""`worker lag`: a consumer group's committed offsets, end offsets and lag, from the broker.

Like `kafka-consumer-groups --describe`: it reads the group's offsets with the
admin API, so it works whether or not a worker is running.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
)

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.preflight import topics_problem
from worker.sources.kafka.security import client_kwargs

COORDINATOR_WAIT_S = 10.0
#: A command run by hand: a broker that does not answer soon is reported, not waited for.
LAG_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


async def _group_offsets(admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]) -> dict:
    """The group's offsets; a cluster still electing its group coordinator is waited for."""
    deadline = time.monotonic() + COORDINATOR_WAIT_S
    while True:
        try:
            return await admin.list_consumer_group_offsets(group, partitions=tps)
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def group_lag(config: KafkaSourceConfig) -> list[PartitionLag]:
    connection = client_kwargs(config)
    # The start's own check first: it names refused credentials, TLS and missing topics.
    problem = await topics_problem(connection, config.topics, LAG_CONNECT_TIMEOUT_S, "lag",
                                   "source.topics: ", None, line_prefix="kafka")  # fmt: skip
    if problem is not None:
        raise ConnectionError(problem)
    admin = AIOKafkaAdminClient(**connection)
    consumer = AIOKafkaConsumer(**connection)
    try:
        await admin.start()
        await consumer.start()
        described = await admin.describe_topics(config.topics)
        missing = [t["topic"] for t in described if t.get("error_code")]
        if missing:  # an empty table would read as "no lag"
            raise LookupError(
                f"kafka: source.topics: {', '.join(missing)} (not found) at "
                f"{','.join(config.bootstrap_servers)}"
            )
        tps = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if not t.get("error_code")
            for p in t["partitions"]
        ]
        committed = await _group_offsets(admin, config.group_id, tps)
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


async def caught_up(
    config: KafkaSourceConfig, timeout_s: float, every_s: float = 1.0
) -> tuple[bool, list[PartitionLag]]:
    """Ask until the group has committed every record there was when it asked (lag 0),
    or `timeout_s` passed: for scripts that start a worker and go on once it is done
    (`worker lag --wait`). Returns whether it caught up, and the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await group_lag(config)
        if sum(r.lag for r in rows) == 0 or time.monotonic() + every_s > deadline:
            return sum(r.lag for r in rows) == 0, rows
        await asyncio.sleep(every_s)
