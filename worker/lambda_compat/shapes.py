"""How Lambda presents each source: the one per-source table of `lambda_compat`.

For every source kind: the event a Lambda handler receives for a batch, how
its `batchItemFailures` identifiers name records, and the document a filter
pattern is matched against. The memory source stands in for Kafka in tests,
so it takes Kafka's shape. The core never asks which source it reads; only
this table does, once, when the worker is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.config import WorkerConfig
from worker.handling.failure_policy import ResultParser
from worker.lambda_compat.events import dynamodb_event, kafka_event, kinesis_event, timestamp_type
from worker.lambda_compat.responses import kafka_failed_indexes, kinesis_failed_indexes
from worker.records import Record

EventBuilder = Callable[[Sequence[Record]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Shape:
    #: The event builder for a worker's settings.
    events: Callable[[WorkerConfig], EventBuilder]
    #: `batchItemFailures` identifiers to indexes of the batch.
    parse: ResultParser
    #: A record's metadata as filter patterns see it (without the body).
    document: Callable[[Record], dict[str, Any]]
    #: The field that holds the decoded value in that document (None: the document is
    #: the whole record, as for DynamoDB, whose filters match the change itself).
    body: str | None
    #: The topic or stream a sample event (`worker event --config`) names.
    sample_name: Callable[[WorkerConfig], str]


def _kafka_events(config: WorkerConfig) -> EventBuilder:
    s = config.source
    servers: Sequence[str] = getattr(s, "bootstrap_servers", ())
    return lambda records: kafka_event(records, servers, s.event_source_arn)


def _kinesis_events(config: WorkerConfig) -> EventBuilder:
    region = config.handler.aws_region
    arn = (
        config.source.event_source_arn
        or getattr(config.source, "stream_arn", None)
        or f"arn:aws:kinesis:{region}:000000000000:stream/{_kinesis_name(config)}"
    )
    role = f"arn:aws:iam::000000000000:role/{config.handler.function_name}"
    return lambda records: kinesis_event(records, region, arn, role)


def _utf8(key: bytes | None) -> str | None:
    try:
        return key.decode() if key is not None else None
    except UnicodeDecodeError:
        return None


def _kafka_document(r: Record) -> dict[str, Any]:
    return {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp_ms,
        "timestampType": timestamp_type(r),
        "key": _utf8(r.key),
    }


def _kinesis_document(r: Any) -> dict[str, Any]:
    return {
        "partitionKey": _utf8(r.key),
        "sequenceNumber": r.sequence_number,
        "approximateArrivalTimestamp": r.timestamp_ms / 1000.0,
    }


def _kafka_name(config: WorkerConfig) -> str:
    topics: Sequence[str] = getattr(config.source, "topics", ())
    return topics[0] if topics else "topic"


def _kinesis_name(config: WorkerConfig) -> str:
    name = getattr(config.source, "stream_name", None)
    arn = getattr(config.source, "stream_arn", None)
    return name or (arn.rpartition("/")[2] if arn else "stream")


def _dynamodb_events(config: WorkerConfig) -> EventBuilder:
    arn = config.source.event_source_arn
    return lambda records: dynamodb_event(records, arn)


def _dynamodb_document(r: Any) -> dict[str, Any]:
    return r.change  # type: ignore[no-any-return]


def _dynamodb_name(config: WorkerConfig) -> str:
    return getattr(config.source, "table", None) or "table"


KAFKA = Shape(_kafka_events, kafka_failed_indexes, _kafka_document, "value", _kafka_name)
KINESIS = Shape(_kinesis_events, kinesis_failed_indexes, _kinesis_document, "data", _kinesis_name)
#: `batchItemFailures` name DynamoDB records by sequence number, as Kinesis's.
DYNAMODB = Shape(_dynamodb_events, kinesis_failed_indexes, _dynamodb_document, None,
                 _dynamodb_name)  # fmt: skip
SHAPES = {"kafka": KAFKA, "memory": KAFKA, "kinesis": KINESIS, "dynamodb": DYNAMODB}


def shape_of(source: str) -> Shape:
    try:
        return SHAPES[source]
    except KeyError:
        raise ValueError(f"no Lambda event shape is defined for source {source!r}") from None
