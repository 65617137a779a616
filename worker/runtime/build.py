"""Composition: the parts of a worker, built from its configuration.

The one place that knows every kind of part: which source, which executor
for the handler, which Lambda shape, which steps a partition's batches go
through. Everything below receives its collaborators ready-made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any

from worker.backoff import Backoff
from worker.config import WorkerConfig
from worker.destinations import Destination
from worker.handling.call_limit import CallLimit
from worker.handling.dead_letter import DeadLetter, DeadLetterGuard
from worker.handling.failure_policy import FailurePolicy, ResultParser
from worker.handling.handler import load_handler
from worker.handling.invoker import Invoker
from worker.handling.partial import failed_indexes
from worker.handling.process_pool import ChildSpec, ProcessPool
from worker.lambda_compat.adapter import child_handler, lambda_style
from worker.lambda_compat.filters import FilterStep, RecordFilter
from worker.lambda_compat.shapes import shape_of
from worker.lambda_compat.windows import TumblingWindows
from worker.observe.errors import RecentErrors
from worker.observe.metrics import Metrics, PartitionMetrics
from worker.observe.tracing import Tracing
from worker.partition.partition import Partition, PartitionSettings
from worker.partition.steps import PartitionContext, Step
from worker.sources.base import Source

log = logging.getLogger("worker")


def warn_about_failures(config: WorkerConfig, destination: Destination | None) -> None:
    """Say once, at start, what the failure settings do to a record that always fails.

    Unlimited retries (the default) retry it for ever: its partition stops there while
    the worker stays ready. Limited ones with nowhere to send what runs out drop it.
    """
    e = config.errors
    unlimited = e.maximum_retry_attempts < 0 and e.maximum_record_age_s < 0
    if unlimited and destination is None:
        log.warning("event=config_warning detail='retries are unlimited and there is no "
                    "on-failure destination: one bad record stops its partition' "
                    "see='worker_partition_retrying, worker status' fix='set "
                    "errors.maximum_retry_attempts and errors.on_failure'")  # fmt: skip
    elif unlimited:
        log.warning("event=config_warning detail='retries are unlimited: one bad record stops "
                    "its partition, and errors.on_failure is never used' "
                    "see='worker_partition_retrying, worker status' fix='set "
                    "errors.maximum_retry_attempts or errors.maximum_record_age_s'")  # fmt: skip
    elif destination is None:
        log.warning("event=config_warning detail='retries or record age are limited and "
                    "errors.on_failure is none: records that run out are dropped "
                    "(counted in worker_records_dropped_total)'")  # fmt: skip


def make_invoker(
    config: WorkerConfig, source: Source, handler: Callable[..., Any] | None, metrics: Metrics
) -> tuple[Invoker, ResultParser]:
    """The invoker of the configured handler (or `handler`), and how to read its results."""
    h = config.handler
    fn = handler or load_handler(h.target)
    parse: ResultParser = failed_indexes
    if h.style == "lambda":
        fn, parse = lambda_style(fn, config, source.name)
    processes = None
    if h.concurrency == "process":
        spec = (
            ChildSpec(child_handler, (config.model_dump_json(), source.name))
            if h.style == "lambda"
            else ChildSpec(load_handler, (h.target,))
        )
        processes = ProcessPool(spec, source.traits, h.processes)
    limit = None
    if h.max_concurrency:
        limit = CallLimit(h.max_concurrency, metrics.outputs.slot_wait.labels(source.name))
    outputs = frozenset(config.outputs.topics) if h.style == "native" else frozenset()
    max_bytes = config.outputs.max_message_bytes
    return Invoker(fn, h, processes, metrics, limit, outputs, max_bytes), parse


class StepChain:
    """Builds each partition's steps: [filter ->] [window ->] failure policy."""

    def __init__(
        self,
        config: WorkerConfig,
        source: Source,
        invoker: Invoker,
        parse: ResultParser,
        destination: Destination | None,
        metrics: Metrics,
        recent_errors: RecentErrors,
    ) -> None:
        #: Spans of batches and commits (None: off), which the committer shares.
        self.tracing = self._tracing = Tracing.from_config(
            config, metrics, source.traits.messaging_system
        )
        self._config = config
        self._source = source
        self._timestamp_ms = source.traits.timestamp_ms
        self._invoker = invoker
        self._parse = parse
        self._destination = destination
        self._metrics = metrics
        self._recent_errors = recent_errors
        patterns = config.filter.patterns
        self._filter = RecordFilter(patterns, shape_of(source.name)) if patterns else None
        e = config.errors
        self._guarded = e.max_consecutive_dead_letters > 0 or e.max_dead_letter_ratio < 1.0
        if self._guarded:
            source.keep_notes()

    def __call__(self, ctx: PartitionContext) -> Step:
        e, b = self._config.errors, self._config.batching
        if self._guarded:
            guard = DeadLetterGuard.resumed(
                self._source.recall(ctx.key), e.max_dead_letter_ratio,
                e.max_consecutive_dead_letters, partial(self._source.remember, ctx.key),
            )  # fmt: skip
        else:
            guard = DeadLetterGuard(e.max_dead_letter_ratio, e.max_consecutive_dead_letters)
        dead_letter = DeadLetter(
            self._destination,
            Backoff(*e.retry_backoff_ms),
            self._metrics,
            ctx,
            guard,
            self._tracing,
        )
        policy = FailurePolicy(self._invoker, e, dead_letter, ctx, self._metrics,
                               self._recent_errors, self._timestamp_ms, self._parse,
                               tracing=self._tracing)  # fmt: skip
        step: Step = policy
        if b.tumbling_window_s:
            grace_s = max(1.0, b.maximum_batching_window_ms / 1000.0)
            step = TumblingWindows(policy, ctx, b.tumbling_window_s, grace_s, self._timestamp_ms)
        if self._filter is not None:
            step = FilterStep(self._filter, step, ctx)
        return step


class PartitionFactory:
    """Makes the `Partition` of a newly assigned key, with its own steps and metrics."""

    def __init__(
        self,
        config: WorkerConfig,
        source: Source,
        metrics: Metrics,
        steps: StepChain,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        b, rt = config.batching, config.runtime
        self._settings = PartitionSettings(
            batch_size=b.batch_size,
            max_batch_bytes=b.maximum_batch_bytes,
            batching_window_s=b.maximum_batching_window_ms / 1000.0,
            key_lanes=config.handler.parallelization_factor,
            max_buffered_records=rt.max_buffered_records,
            max_buffered_bytes=rt.max_buffered_bytes,
        )
        self._source = source
        self._metrics = metrics
        self._steps = steps
        self._clock = clock

    def __call__(
        self,
        key: Hashable,
        on_progress: Callable[[Partition], None],
        on_drained: Callable[[Partition], None],
        on_buffered: Callable[[Partition, int], None] | None = None,
    ) -> Partition:
        name, label = self._source.name, self._source.label(key)
        return Partition(key, label, name, self._settings, self._source.traits, self._steps,
                         PartitionMetrics(self._metrics, name, label), on_progress,
                         on_drained, self._clock, on_buffered)  # fmt: skip
