"""Turns a `lambda_handler(event, context)` into a handler of batches, plus its response parser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from worker.config import WorkerConfig
from worker.handling.failure_policy import ResultParser
from worker.handling.handler import is_coroutine_callable, load_handler
from worker.lambda_compat.context import ContextFactory
from worker.lambda_compat.shapes import EventBuilder, shape_of
from worker.records import Batch


def _event(build: EventBuilder, batch: Batch) -> dict[str, Any]:
    """The event of one call, the handler's own. A tumbling window's fields are copied in
    (JSON, as the window step keeps them): a retry is invoked with the same batch, so a
    handler that changed `event["state"]` in place and then failed gave its retry the
    changed state, an aggregate counted twice, where Lambda sends the state it kept."""
    event = build(batch.records)
    if batch.window is not None:
        event.update(orjson.loads(orjson.dumps(batch.window)))
    return event


def lambda_style(
    fn: Callable[..., Any], config: WorkerConfig, source_name: str
) -> tuple[Callable[[Batch], Any], ResultParser]:
    """A batch handler calling `fn(event, context)`; the event is built where `fn` runs."""
    shape = shape_of(source_name)
    build = shape.events(config)
    contexts = ContextFactory(config.handler)
    if is_coroutine_callable(fn):

        async def call_async(batch: Batch) -> Any:
            return await fn(_event(build, batch), contexts())

        return call_async, shape.parse

    def call(batch: Batch) -> Any:
        return fn(_event(build, batch), contexts())

    return call, shape.parse


def child_handler(config_json: str, source_name: str) -> Callable[[Batch], Any]:
    """In a handler process: the Lambda-style handler as a batch handler (a `ChildSpec`)."""
    config = WorkerConfig.model_validate_json(config_json)
    return lambda_style(load_handler(config.handler.target), config, source_name)[0]
