"""`source.client`: which library reads Kafka. The one place that knows there are two.

Each source module is imported only when chosen, so an aiokafka worker never loads
librdkafka (and an install without `streamworker[librdkafka]` still runs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.sources.base import SourceStartError

if TYPE_CHECKING:
    from worker.sources.base import Source
    from worker.sources.kafka.config import KafkaSourceConfig


def kafka_source(config: KafkaSourceConfig) -> Source:
    if config.client == "librdkafka":
        try:
            from worker.sources.kafka.librdkafka_source import LibrdkafkaSource
        except ImportError as exc:
            raise SourceStartError(
                f"kafka: source.client = 'librdkafka' needs confluent-kafka ({exc}): "
                "pip install 'streamworker[librdkafka]'"
            ) from None
        return LibrdkafkaSource(config)
    from worker.sources.kafka.source import KafkaSource

    return KafkaSource(config)
