"""On-failure destinations: where records go when retries or age run out."""

from __future__ import annotations

from worker.config import WorkerConfig
from worker.destinations.base import Destination, DestinationError, FailureEvent
from worker.observe.metrics import Metrics

__all__ = ["Destination", "DestinationError", "FailureEvent", "make_destination"]


def make_destination(config: WorkerConfig, metrics: Metrics) -> Destination | None:
    """The destination named by `errors.on_failure`, or None for "none"."""
    target = config.errors.on_failure
    if target.startswith("kafka://"):
        from worker.destinations.kafka import KafkaDestination
        from worker.sources.kafka.config import KafkaSourceConfig
        from worker.sources.kafka.security import client_kwargs

        # A Kafka source's servers and security; from another source, the default servers.
        source = config.source if isinstance(config.source, KafkaSourceConfig) else None
        settings = source or KafkaSourceConfig(topics=["-"])
        return KafkaDestination(
            target.removeprefix("kafka://"),
            client_kwargs(settings),
            config.errors.on_failure_timeout_s,
            metrics.dead_letter_truncated,
            settings.connect_timeout_s,
        )
    if target.startswith("kinesis://"):
        from worker.destinations.kinesis import KinesisDestination
        from worker.sources.kinesis.config import KinesisSourceConfig

        # A Kinesis source's region and endpoint; else the standard AWS settings.
        s = config.source if isinstance(config.source, KinesisSourceConfig) else None
        return KinesisDestination(
            target.removeprefix("kinesis://"),
            s.region if s else None,
            s.endpoint_url if s else None,
            config.errors.on_failure_timeout_s,
            truncated=metrics.dead_letter_truncated,
        )
    if target.startswith("file://"):
        from worker.destinations.file import FileDestination

        return FileDestination(target.removeprefix("file://"))
    return None
