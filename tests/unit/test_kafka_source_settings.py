"""The aiokafka source's settings as it hands them to aiokafka, without a broker."""

from __future__ import annotations

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.source import KafkaSource


async def test_aborted_transactions_are_not_read_unless_asked_for():
    """aiokafka's own default is read_uncommitted: handlers got the records of aborted
    transactions (the real broker's test: test_kafka_isolation)."""
    config = KafkaSourceConfig.model_validate({"topics": ["t"]})
    assert KafkaSource(config)._consumer._isolation_level == "read_committed"
    asked = config.model_copy(update={"isolation_level": "read_uncommitted"})
    assert KafkaSource(asked)._consumer._isolation_level == "read_uncommitted"
