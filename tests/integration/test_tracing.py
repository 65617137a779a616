"""OpenTelemetry tracing on the real broker, exported with the SDK's in-memory exporter.

Records are produced with W3C `traceparent` headers of trace ids the test makes
(some without one), one of them a poison record: it fails its batch, which is
bisected down to it, retried once, then sent to the on-failure topic. The
spans must be: one CONSUMER `process {topic}` span per batch with the messaging
attributes, linking to exactly the produced trace ids; `bisect` and `retry`
children, an `on_failure send` child, and `commit` spans.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.kafka_helpers import committed_offsets, create_topic, unique
from worker.config import WorkerConfig
from worker.runtime.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
PARTITIONS = 2
RECORDS = 40
POISON = 13  # its value; it lands in partition 13 % 2


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's one global provider (OTel allows one), with an in-memory exporter."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def config(kafka: str, topic: str, group: str, **sections: dict[str, Any]) -> WorkerConfig:
    tree: dict[str, dict[str, Any]] = {
        "source": {"bootstrap_servers": [kafka], "topics": [topic], "group_id": group},
        "batching": {"batch_size": 100, "maximum_batching_window_ms": 500},
        "errors": {"retry_backoff_ms": [5, 20]},
        "metrics": {"enabled": False},
        "tracing": {"enabled": True},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return WorkerConfig.model_validate(tree)


@asynccontextmanager
async def running(cfg: WorkerConfig, handler: Callable[..., Any]) -> AsyncIterator[Worker]:
    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        yield worker
    finally:
        worker.request_exit()
        await task


async def produce_traced(kafka: str, topic: str, every: int = 4) -> set[int]:
    """RECORDS records, record i in partition i % 2; all but each `every`-th (none with
    0) carry a traceparent of a new trace. Returns those trace ids."""
    rng = random.Random(17)
    traces: set[int] = set()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=20)
    await producer.start()
    try:
        sends = []
        for i in range(RECORDS):
            headers = [("origin", b"sensor")]
            if not every or i % every:
                trace_id, span_id = rng.getrandbits(128) | 1, rng.getrandbits(64) | 1
                traces.add(trace_id)
                headers.append(("traceparent", f"00-{trace_id:032x}-{span_id:016x}-01".encode()))
            sends.append(await producer.send(topic, str(i).encode(), partition=i % PARTITIONS,
                                              headers=headers))  # fmt: skip
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return traces


async def all_committed(kafka: str, group: str, topic: str, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    want = {p: RECORDS // PARTITIONS for p in range(PARTITIONS)}
    while await committed_offsets(kafka, group, topic) != want:
        assert loop.time() < deadline, "not all committed"
        await asyncio.sleep(0.1)


async def test_batches_become_process_spans_linked_to_the_producers_traces(
    kafka: str, spans: InMemorySpanExporter
):
    topic, dlq, group = unique("traced"), unique("traced-dlq"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    await create_topic(kafka, dlq, 1)
    traces = await produce_traced(kafka, topic)
    spans.clear()

    async def handler(batch) -> None:
        if any(r.value == str(POISON).encode() for r in batch.records):
            raise ValueError("poison")

    errors = {"maximum_retry_attempts": 1, "on_failure": f"kafka://{dlq}"}
    async with running(config(kafka, topic, group, errors=errors), handler):
        await all_committed(kafka, group, topic)
    finished = spans.get_finished_spans()
    process = [s for s in finished if s.name == f"process {topic}"]
    assert process and all(s.kind == trace.SpanKind.CONSUMER for s in process)
    for s in process:
        a = s.attributes
        assert a["messaging.system"] == "kafka" and a["messaging.operation.type"] == "process"
        assert a["messaging.destination.name"] == topic
        assert a["messaging.destination.partition.id"] in {"0", "1"}
        assert a["messaging.consumer.group.name"] == group
        assert 0 < a["messaging.batch.message_count"] <= RECORDS // PARTITIONS
        assert a["streamworker.links_capped"] == 0
    linked = [link.context.trace_id for s in process for link in s.links]
    assert sorted(linked) == sorted(traces)  # each produced trace once, nothing else
    assert sum(s.attributes["messaging.batch.message_count"] for s in process) == RECORDS
    by_id = {s.context.span_id: s for s in finished}

    def root(s):  # the outermost finished ancestor
        while s.parent is not None and s.parent.span_id in by_id:
            s = by_id[s.parent.span_id]
        return s

    for name in ("bisect", "retry", "on_failure send"):
        children = [s for s in finished if s.name == name]
        assert children, f"no {name} span"
        assert all(root(c) in process and c.parent is not None for c in children), name
    (send,) = [s for s in finished if s.name == "on_failure send"]
    assert send.attributes["messaging.destination.name"] == f"kafka://{dlq}"
    commits = [s for s in finished if s.name == "commit"]
    assert commits and all(s.attributes["messaging.consumer.group.name"] == group for s in commits)


async def test_links_past_the_cap_are_counted_not_linked(kafka: str, spans: InMemorySpanExporter):
    topic, group = unique("capped"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    traces = await produce_traced(kafka, topic, every=0)  # every record traced
    spans.clear()

    async def handler(batch) -> None:
        return None

    cfg = config(kafka, topic, group, tracing={"max_links": 3})
    async with running(cfg, handler) as worker:
        await all_committed(kafka, group, topic)
        capped = worker.metrics.registry.get_sample_value(
            "worker_trace_links_capped_total", {"source": "kafka"}
        )
    process = [s for s in spans.get_finished_spans() if s.name == f"process {topic}"]
    assert all(len(s.links) <= 3 for s in process)
    counted = sum(s.attributes["streamworker.links_capped"] for s in process)
    linked = {link.context.trace_id for s in process for link in s.links}
    assert linked <= traces and len(linked) + counted == len(traces) == RECORDS
    assert counted > 0 and capped == counted
