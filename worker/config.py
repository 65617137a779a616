"""The configuration schema: every key a user can set, its default and its range.

Names follow Lambda's event source mapping parameters in snake_case so that a
team moving off Lambda recognises them. Every model forbids unknown keys: a
typo must fail at start, not be silently ignored.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from worker.config_base import Section, SourceSettings
from worker.outputs.config import OutputsConfig
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kinesis.config import KinesisSourceConfig

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class MemorySourceConfig(SourceSettings):
    """The in-process log of `worker.testing`: a worker built in a test passes the source in."""

    standalone = False
    kind: Literal["memory"] = "memory"


def _source_kind(value: Any) -> str | None:
    """The `kind` tag, "kafka" when absent (the default source)."""
    if isinstance(value, dict):
        return value.get("kind", "kafka")
    return getattr(value, "kind", None)


SourceConfig = Annotated[
    Annotated[KafkaSourceConfig, Tag("kafka")]
    | Annotated[KinesisSourceConfig, Tag("kinesis")]
    | Annotated[DynamoDBSourceConfig, Tag("dynamodb")]
    | Annotated[MemorySourceConfig, Tag("memory")],
    Discriminator(_source_kind),
]
SOURCE_MODELS: dict[str, type[SourceSettings]] = {
    "kafka": KafkaSourceConfig,
    "kinesis": KinesisSourceConfig,
    "dynamodb": DynamoDBSourceConfig,
    "memory": MemorySourceConfig,
}


class BatchingConfig(Section):
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    maximum_batching_window_ms: Annotated[int, Field(ge=0, le=300_000)] = 500
    maximum_batch_bytes: Annotated[int, Field(ge=1, le=268_435_456)] = 6_291_456
    tumbling_window_s: Annotated[int, Field(ge=0, le=900)] = 0


class HandlerConfig(Section):
    target: str = "handlers.iot_telemetry:handle"
    style: Literal["native", "lambda"] = "native"
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 60
    parallelization_factor: Annotated[int, Field(ge=1, le=100)] = 1
    concurrency: Literal["async", "thread", "process"] = "async"
    threads: Annotated[int, Field(ge=1, le=1024)] = 32
    #: Handler calls running at once across all partitions and key lanes (0: no cap).
    max_concurrency: Annotated[int, Field(ge=0, le=100_000)] = 0
    processes: Annotated[int, Field(ge=1, le=256)] = Field(
        default_factory=lambda: os.cpu_count() or 1
    )
    function_name: str = "streamworker"
    memory_limit_in_mb: Annotated[int, Field(ge=128, le=10_240)] = 1024
    aws_region: str = "us-east-1"

    @field_validator("target")
    @classmethod
    def _target_shape(cls, value: str) -> str:
        if not _TARGET.match(value):
            raise ValueError("must be 'package.module:function', for example 'handlers.iot:handle'")
        return value


_Ms = Annotated[int, Field(ge=0, le=3_600_000)]
MIN_STALL_TIMEOUT_S = 1.0
_DESTINATION = re.compile(
    r"^(none|kafka://[A-Za-z0-9._-]+|kinesis://[A-Za-z0-9._-]+|file://.+\.jsonl)$"
)


class ErrorsConfig(Section):
    bisect_batch_on_function_error: bool = True
    maximum_retry_attempts: Annotated[int, Field(ge=-1, le=10_000)] = -1
    maximum_record_age_s: Annotated[int, Field(ge=-1, le=604_800)] = -1
    retry_backoff_ms: tuple[_Ms, _Ms] = (100, 30_000)
    report_batch_item_failures: bool = True
    partial_retry: Literal["from_first_failure", "failed_only"] = "from_first_failure"
    on_failure: str = "none"
    on_failure_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30
    max_dead_letter_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0
    max_consecutive_dead_letters: Annotated[int, Field(ge=0)] = 0

    @field_validator("maximum_record_age_s")
    @classmethod
    def _age(cls, value: int) -> int:
        if 0 <= value < 60:
            raise ValueError("must be -1 (no limit) or 60..604800 seconds, as in Lambda")
        return value

    @field_validator("on_failure")
    @classmethod
    def _destination(cls, value: str) -> str:
        if not _DESTINATION.match(value):
            raise ValueError(
                "must be 'none', 'kafka://TOPIC', 'kinesis://STREAM' or 'file://PATH.jsonl'"
            )
        return value

    @field_validator("retry_backoff_ms")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError("must be [min, max] with min <= max")
        return value


class FilterConfig(Section):
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _valid(cls, value: list[str]) -> list[str]:
        from worker.lambda_compat.patterns import PatternError, compile_pattern

        problems = []
        for i, text in enumerate(value):
            try:
                compile_pattern(text)
            except PatternError as exc:
                problems.append(f"pattern {i}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class MetricsConfig(Section):
    listen: str = "0.0.0.0:9108"
    enabled: bool = True
    #: The status page (`/`) and `/status.json`; off: only /metrics, /healthz, /readyz.
    status_page: bool = True

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be 'HOST:PORT', for example '0.0.0.0:9108' (port 0 = any free)")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class RuntimeConfig(Section):
    shutdown_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 30
    rebalance_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 20
    #: Records fed and not yet committed, per partition: what a crash can make the next
    #: owner redo. A million at most: past that the bound protects nothing.
    max_buffered_records: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    max_buffered_bytes: Annotated[int, Field(ge=1024, le=4 * 1024**3)] = 8 * 1024 * 1024
    #: Every record the process holds: the client's prefetch and the pipeline's buffers.
    #: 48 MiB: the pipeline's former 32 MiB plus what the client fetches ahead of 8
    #: partitions at its default (16 MiB), so up to 8 partitions run as they did before
    #: the budget covered the client.
    memory_budget_bytes: Annotated[int, Field(ge=1024 * 1024, le=64 * 1024**3)] = 48 * 1024 * 1024
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    stall_timeout_s: Annotated[float, Field(ge=0, le=86_400)] = 900
    gc_freeze: bool = True

    @field_validator("stall_timeout_s")
    @classmethod
    def _stall(cls, value: float) -> float:
        if 0 < value < MIN_STALL_TIMEOUT_S:
            raise ValueError(
                f"must be 0 (off) or at least {MIN_STALL_TIMEOUT_S:g} s: the loop guard "
                "wakes every second, so a shorter limit ends a healthy, idle worker"
            )
        return value

    gc_threshold: tuple[
        Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]
    ] = (100_000, 50, 1000)


class TracingConfig(Section):
    """OpenTelemetry spans per batch and commit (extra `otel`); exporters are configured
    through the SDK's own OTEL_* environment variables."""

    enabled: bool = False
    #: Span links per `process` span, one per record with a traceparent; the rest counted.
    max_links: Annotated[int, Field(ge=0, le=10_000)] = 128


class WorkerConfig(Section):
    source: SourceConfig = Field(default_factory=dict, validate_default=True)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    handler: HandlerConfig = Field(default_factory=HandlerConfig)
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)

    @model_validator(mode="after")
    def _outputs_fit(self) -> WorkerConfig:
        """Every problem of the outputs at once, one line each (not the first only)."""
        o, kafka = self.outputs, isinstance(self.source, KafkaSourceConfig)
        memory = isinstance(self.source, MemorySourceConfig)  # the memory broker's topics
        problems = [
            (o.topics and self.handler.style != "native", "topics", "outputs.topics: batch.send "
             "is for native handlers (a Lambda-style handler writes with its own clients)"),
            (o.topics and self.handler.concurrency == "process", "topics", "outputs.topics: "
             "batch.send needs handler.concurrency = 'async' or 'thread'"),
            (o.exactly_once and not (kafka and o.topics), "exactly_once",
             "outputs.exactly_once: needs a Kafka source and outputs.topics"),
            (o.exactly_once and kafka and not self.source.commits_in_transactions,  # type: ignore[union-attr]
             "exactly_once", "outputs.exactly_once: needs source.client = 'aiokafka' (the "
             "librdkafka source cannot commit in a transaction yet)"),
            (o.topics and not (kafka or memory) and not o.bootstrap_servers, "bootstrap_servers",
             "outputs.bootstrap_servers: needed when the source is not Kafka"),
            (kafka and set(o.topics) & set(self.source.topics), "topics", "outputs.topics: must "
             "not be a source topic (its records would be consumed again)"),
        ]  # fmt: skip
        errors = [InitErrorDetails(type=PydanticCustomError("value_error", msg),
                                   loc=("outputs", key), input=getattr(o, key))
                  for bad, key, msg in problems if bad]  # fmt: skip
        if errors:
            raise ValidationError.from_exception_data("WorkerConfig", errors)
        return self

    @model_validator(mode="after")
    def _windows_need_lambda_style(self) -> WorkerConfig:
        if self.batching.tumbling_window_s and self.handler.style != "lambda":
            raise ValueError(
                "batching.tumbling_window_s: tumbling windows need handler.style = 'lambda' "
                "(the window and state travel in the Lambda event)"
            )
        if self.batching.tumbling_window_s and self.handler.parallelization_factor > 1:
            raise ValueError(
                "batching.tumbling_window_s: tumbling windows need "
                "handler.parallelization_factor = 1 (one state per partition)"
            )
        return self

    @model_validator(mode="after")
    def _rebalance_covers_the_drain(self) -> WorkerConfig:
        s, drain_ms = self.source, self.runtime.rebalance_timeout_s * 1000
        if isinstance(s, KafkaSourceConfig) and s.rebalance_timeout_ms < drain_ms:
            raise ValueError(
                f"source.rebalance_timeout_ms = {s.rebalance_timeout_ms}: must cover "
                f"runtime.rebalance_timeout_s ({drain_ms:g} ms), or the broker gives "
                "partitions away while they still drain"
            )
        if isinstance(s, KafkaSourceConfig) and s.rebalance_timeout_ms > s.max_poll_interval_ms:
            raise ValueError(
                f"source.rebalance_timeout_ms = {s.rebalance_timeout_ms}: must not exceed "
                f"source.max_poll_interval_ms ({s.max_poll_interval_ms})"
            )
        return self

    @model_validator(mode="after")
    def _dlq_is_not_a_source(self) -> WorkerConfig:
        target = self.errors.on_failure
        topics = self.source.topics if isinstance(self.source, KafkaSourceConfig) else []
        if target.startswith("kafka://") and target[len("kafka://") :] in topics:
            raise ValueError(
                f"errors.on_failure = {target!r}: must not be a source topic "
                "(its records would be consumed again)"
            )
        return self
