"""Turns a `lambda_handler(event, context)` into a handler of batches, plus its response parser."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from worker.config import WorkerConfig
from worker.lambda_compat.context import ContextFactory
from worker.lambda_compat.events import kafka_event, kinesis_event
from worker.lambda_compat.responses import kafka_failed_indexes, kinesis_failed_indexes
from worker.pipeline.failure_policy import ResultParser
from worker.pipeline.invoker import is_coroutine_callable
from worker.records import Batch

EventBuilder = Callable[[Sequence[Any]], dict[str, Any]]


def event_builder(config: WorkerConfig, source_name: str) -> tuple[EventBuilder, ResultParser]:
    """The event shape and identifier rules of the source: Kinesis, or Kafka (also memory)."""
    s = config.source
    if source_name == "kinesis":
        region = config.handler.aws_region
        arn = s.event_source_arn or f"arn:aws:kinesis:{region}:000000000000:stream/unknown"
        role = f"arn:aws:iam::000000000000:role/{config.handler.function_name}"
        return (lambda records: kinesis_event(records, region, arn, role)), kinesis_failed_indexes
    return (
        lambda records: kafka_event(records, s.bootstrap_servers, s.event_source_arn)
    ), kafka_failed_indexes


def _event(build: EventBuilder, batch: Batch) -> dict[str, Any]:
    event = build(batch.records)
    if batch.window is not None:
        event.update(batch.window)
    return event


def lambda_style(
    fn: Callable[..., Any], config: WorkerConfig, source_name: str
) -> tuple[Callable[[Batch], Any], ResultParser]:
    """A batch handler calling `fn(event, context)`; the event is built where `fn` runs."""
    build, parse = event_builder(config, source_name)
    contexts = ContextFactory(config.handler)
    if is_coroutine_callable(fn):

        async def call_async(batch: Batch) -> Any:
            return await fn(_event(build, batch), contexts())

        return call_async, parse

    def call(batch: Batch) -> Any:
        return fn(_event(build, batch), contexts())

    return call, parse
