"""Both Kafka clients read committed records only unless told otherwise: aiokafka's own
default is read_uncommitted, which hands handlers the records of aborted transactions.
(On the real broker: tests/integration/test_kafka_isolation.py.)"""

from __future__ import annotations

import pytest

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.source import KafkaSource


def config(**settings: object) -> KafkaSourceConfig:
    return KafkaSourceConfig(bootstrap_servers=["127.0.0.1:9"], topics=["t"], **settings)


@pytest.mark.parametrize("level", [None, "read_committed", "read_uncommitted"])
async def test_the_aiokafka_consumer_reads_at_the_configured_level(level: str | None):
    source = KafkaSource(config() if level is None else config(isolation_level=level))
    # aiokafka hands its own setting to the fetcher when it starts (not started here).
    assert source._consumer._isolation_level == (level or "read_committed")
