"""The output sink the configuration asks for, or None when `batch.send` is off."""

from __future__ import annotations

from worker.config import WorkerConfig
from worker.observe.metrics import Metrics
from worker.outputs.sink import AckedOutputs, OutputSink
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.security import client_kwargs


def make_output_sink(config: WorkerConfig, metrics: Metrics, source_name: str) -> OutputSink | None:
    o = config.outputs
    if not o.topics:
        return None
    # A Kafka source's servers and security, unless outputs name servers of their own.
    source = config.source if isinstance(config.source, KafkaSourceConfig) else None
    settings = source or KafkaSourceConfig(topics=["-"])
    connection = client_kwargs(settings)
    if o.bootstrap_servers:
        connection["bootstrap_servers"] = o.bootstrap_servers
    if o.exactly_once:
        from worker.outputs.transactions import TransactionalOutputs

        return TransactionalOutputs(connection, config, metrics.outputs, source_name,
                                    settings.connect_timeout_s)  # fmt: skip
    return AckedOutputs(connection, o, metrics.outputs, source_name, settings.connect_timeout_s)
