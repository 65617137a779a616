"""On-failure destinations: where records go when retries or age run out."""

from __future__ import annotations

from worker.config import WorkerConfig
from worker.destinations.base import Destination, DestinationError, FailureEvent

__all__ = ["Destination", "DestinationError", "FailureEvent", "make_destination"]


def make_destination(config: WorkerConfig) -> Destination | None:
    """The destination named by `errors.on_failure`, or None for "none"."""
    target = config.errors.on_failure
    if target.startswith("kafka://"):
        from worker.destinations.kafka import KafkaDestination
        from worker.sources.kafka_security import client_kwargs

        return KafkaDestination(
            target.removeprefix("kafka://"),
            client_kwargs(config.source),
            config.errors.on_failure_timeout_s,
        )
    if target.startswith("kinesis://"):
        from worker.destinations.kinesis import KinesisDestination

        s = config.source
        return KinesisDestination(
            target.removeprefix("kinesis://"),
            s.region,
            s.endpoint_url,
            config.errors.on_failure_timeout_s,
        )
    if target.startswith("file://"):
        from worker.destinations.file import FileDestination

        return FileDestination(target.removeprefix("file://"))
    return None
