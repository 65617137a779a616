"""OpenTelemetry tracing of handler invokes and commits (`tracing.enabled`, extra `otel`).

One CONSUMER span `process {topic}` per batch handed to the failure policy, with
the messaging semantic conventions' attributes and one link per record to the
producer's span from the record's W3C `traceparent` header: links, not a parent,
since a batch has many producers. Links are capped (`tracing.max_links`); what
the cap left out is counted on the span and in `worker_trace_links_capped_total`.
Inside it: a child span per retry, per bisect half and per on-failure write. A
`commit` span per checkpoint call.

Off (the default), no `Tracing` exists: the hooks test one attribute per batch
and nothing runs per record. The SDK is configured the standard way: a
TracerProvider set globally before the start (`opentelemetry-instrument`) is
used as it is; else one is made from the environment (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_EXPORTER` = otlp by default, console,
or any exporter package's entry point; `OTEL_EXPORTER_OTLP_ENDPOINT` and the
rest are read by the exporter itself).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any

from prometheus_client import Counter

from worker.errors import StartError
from worker.records import Batch, Record

TRACEPARENT = "traceparent"


class Tracing:
    def __init__(
        self,
        tracer: Any,
        source: str,
        group: str,
        max_links: int,
        capped: Counter,
        system: str | None = None,
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = tracer
        self._system = system or source
        self._group = group
        self._max_links = max_links
        self._capped = capped.labels(source)

    @classmethod
    def from_config(cls, config: Any, metrics: Any, system: str | None = None) -> Tracing | None:
        """None unless `tracing.enabled`. `system`: the source's `messaging.system`."""
        if not config.tracing.enabled:
            return None
        provider = configure_provider()
        capped = Counter(
            "worker_trace_links_capped",
            "Records of a traced batch whose traceparent was not linked (over tracing.max_links).",
            ("source",),
            registry=metrics.registry,
        )
        tracer = provider.get_tracer("streamworker")
        return cls(tracer, config.source.kind, config.source.group_id,
                   config.tracing.max_links, capped, system)  # fmt: skip

    # -- spans ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def process(self, batch: Batch) -> Iterator[Any]:
        """The CONSUMER span of one batch, current while the policy resolves it."""
        records = batch.records
        first = records[0] if records else None
        topic = first.topic if first is not None else batch.partition
        partition = str(first.partition) if first is not None else batch.partition
        links, capped = self._links(records)
        if capped:
            self._capped.inc(capped)
        attributes = {
            "messaging.system": self._system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": partition,
            "messaging.consumer.group.name": self._group,
            "messaging.batch.message_count": len(records),
            "streamworker.links_capped": capped,
        }
        with self._tracer.start_as_current_span(
            f"process {topic}", kind=self._trace.SpanKind.CONSUMER, links=links,
            attributes=attributes,
        ) as span:  # fmt: skip
            yield span

    def _links(self, records: Sequence[Record]) -> tuple[list[Any], int]:
        """One link per record with a valid `traceparent`, up to the cap; and how many more."""
        links: list[Any] = []
        capped = 0
        for record in records:
            value = next((v for k, v in record.headers or () if k == TRACEPARENT), None)
            if value is None:
                continue
            if len(links) >= self._max_links:
                capped += 1
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            context = self._propagator.extract({TRACEPARENT: text})
            span_context = self._trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                links.append(self._trace.Link(span_context))
        return links, capped

    def attempt(self, records: int, whole: int, attempts: int) -> Any:
        """A child span for an invoke other than the batch's first: a retry or a bisect half."""
        if attempts == 0 and records == whole:
            return contextlib.nullcontext()
        name = "retry" if attempts else "bisect"
        return self._tracer.start_as_current_span(
            name, attributes={"messaging.batch.message_count": records,
                              "streamworker.attempt": attempts + 1},
        )  # fmt: skip

    def destination_write(self, destination: str, records: int) -> Any:
        return self._tracer.start_as_current_span(
            "on_failure send", kind=self._trace.SpanKind.PRODUCER,
            attributes={"messaging.destination.name": destination,
                        "messaging.batch.message_count": records},
        )  # fmt: skip

    def commit(self, partitions: int) -> Any:
        return self._tracer.start_as_current_span(
            "commit", attributes={"messaging.system": self._system,
                                  "messaging.consumer.group.name": self._group,
                                  "streamworker.partitions": partitions},
        )  # fmt: skip


def configure_provider() -> Any:
    """The global TracerProvider: the one already set, else one from the environment
    (flushed at exit by the SDK itself, `shutdown_on_exit`)."""
    try:
        from opentelemetry import trace
    except ImportError:
        raise StartError(
            "tracing.enabled needs OpenTelemetry: pip install 'streamworker[otel]'"
        ) from None

    provider = trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):  # the API's proxy: none set yet
        provider = _provider_from_environment()
        trace.set_tracer_provider(provider)
    return provider


def _provider_from_environment() -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise StartError(
            "tracing.enabled needs the OpenTelemetry SDK: pip install 'streamworker[otel]'"
        ) from None

    provider = TracerProvider(resource=Resource.create())
    for name in filter(None, os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")):
        name = name.strip()
        if name == "none":
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise StartError(
                f"OTEL_TRACES_EXPORTER={name}: no such exporter installed (otlp comes with "
                "pip install 'streamworker[otel]'; console with the SDK)"
            )
        exporter = next(iter(found)).load()()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
