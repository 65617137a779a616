"""`worker invoke` and `worker event`: call the handler once on a Lambda-shaped event, locally.

`invoke` works for both handler styles: a Lambda-style handler gets the event
and a context as they are; a native handler gets the event's records as a
batch. `event` prints a sample event to start from.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from worker.config import WorkerConfig
from worker.encoding import unb64
from worker.handling.handler import is_coroutine_callable, load_handler
from worker.lambda_compat.context import ContextFactory
from worker.lambda_compat.events import dynamodb_event, kafka_event, kinesis_event
from worker.lambda_compat.shapes import SHAPES
from worker.records import Batch
from worker.sources.dynamodb.record import DynamoDBRecord
from worker.sources.memory import MemoryRecord

SAMPLE_SEQUENCE = "49590338271490256608559692538361571095921575989136588898"


def sample_event(
    kind: str, value: str, key: str | None, topic: str = "telemetry", partition: int = 0
) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    raw_key = key.encode() if key is not None else None
    if kind == "dynamodb":
        return dynamodb_event([dynamodb_sample(topic, value, key)], None)
    if kind == "kafka":
        record = MemoryRecord(topic, partition, 0, raw_key, value.encode(), now_ms)
        return kafka_event([record], ["127.0.0.1:9092"])
    record = MemoryRecord(
        topic, partition, 0, raw_key or b"1", value.encode(), now_ms,
        sequence_number=SAMPLE_SEQUENCE, shard_id="shardId-000000000000",
    )  # fmt: skip
    arn = f"arn:aws:kinesis:us-east-1:000000000000:stream/{topic}"
    return kinesis_event([record], "us-east-1", arn, "arn:aws:iam::000000000000:role/worker")


def dynamodb_sample(table: str, value: str, key: str | None) -> DynamoDBRecord:
    """An INSERT of the item `value` (JSON); `key` names its key attribute (default: the
    item's first attribute)."""
    import json
    from decimal import Decimal

    from boto3.dynamodb.types import TypeSerializer

    item = json.loads(value, parse_float=Decimal)
    if not isinstance(item, dict) or not item:
        raise ValueError("a DynamoDB sample's --value is a JSON object (the new item)")
    try:
        image = {name: TypeSerializer().serialize(v) for name, v in item.items()}
    except (TypeError, ArithmeticError) as exc:  # NaN, or a number DynamoDB cannot hold
        raise ValueError(f"--value: not a DynamoDB item: {type(exc).__name__}: {exc}") from exc
    name = key if key is not None else next(iter(image))
    if name not in image:
        raise ValueError(f"--key {name!r}: the item has no such attribute")
    arn = f"arn:aws:dynamodb:us-east-1:000000000000:table/{table}/stream/2026-01-01T00:00:00.000"
    change = {
        "eventID": "1", "eventName": "INSERT", "eventVersion": "1.1",
        "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "dynamodb": {"ApproximateCreationDateTime": float(int(time.time())),
                     "Keys": {name: image[name]}, "NewImage": image,
                     "SequenceNumber": "100000000000000000001",
                     "SizeBytes": len(value.encode()), "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "eventSourceARN": arn,
    }  # fmt: skip
    return DynamoDBRecord(table, "shardId-00000000000000000000-00000000", change)


def configured_event(
    config: WorkerConfig, value: str, key: str | None, partition: int = 0
) -> dict[str, Any]:
    """The event the configured worker would build for one record of its own source."""
    shape = SHAPES[config.source.kind]
    if config.source.kind == "dynamodb":
        return shape.events(config)([dynamodb_sample(shape.sample_name(config), value, key)])
    record = MemoryRecord(
        shape.sample_name(config), partition, 0, key.encode() if key is not None else None,
        value.encode(), int(time.time() * 1000),
        sequence_number=SAMPLE_SEQUENCE, shard_id="shardId-000000000000",
    )  # fmt: skip
    return shape.events(config)([record])


def batch_from_event(event: dict[str, Any]) -> Batch:
    """The records of a Kafka, Kinesis or DynamoDB event as a native batch."""
    records: list[MemoryRecord] = []
    if "records" in event:
        for items in event["records"].values():
            for r in items:
                headers = tuple((k, bytes(v)) for h in r.get("headers", []) for k, v in h.items())
                records.append(
                    MemoryRecord(
                        r["topic"],
                        r["partition"],
                        r["offset"],
                        unb64(r.get("key")),
                        unb64(r.get("value")),
                        r["timestamp"],
                        headers,
                    )
                )
        label = f"{records[0].topic}-{records[0].partition}" if records else "-"
        return Batch(records, "kafka", label)
    changes = event.get("Records", [])
    if changes and changes[0].get("eventSource") == "aws:dynamodb":
        table = changes[0].get("eventSourceARN", "").partition(":table/")[2].partition("/")[0]
        shard = "shardId-local"
        return Batch([DynamoDBRecord(table, shard, c) for c in changes], "dynamodb", shard)
    for i, r in enumerate(changes):
        k = r["kinesis"]
        records.append(
            MemoryRecord(
                "",
                0,
                i,
                k["partitionKey"].encode(),
                unb64(k["data"]),
                int(k["approximateArrivalTimestamp"] * 1000),
                sequence_number=k["sequenceNumber"],
                shard_id=r["eventID"].split(":")[0],
            )
        )
    return Batch(records, "kinesis", records[0].shard_id if records else "-")


@dataclass
class Invocation:
    response: Any
    took_s: float
    error: BaseException | None = None


def invoke_once(config: WorkerConfig, event: dict[str, Any]) -> Invocation:
    """Call the configured handler once, as the worker would; HandlerLoadError if it won't load,
    ValueError if a native handler's event cannot be read as a batch."""
    fn = load_handler(config.handler.target)
    if config.handler.style == "lambda":
        args: tuple[Any, ...] = (event, ContextFactory(config.handler)())
    else:
        try:
            args = (batch_from_event(event),)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ValueError(
                "--event: not a Kafka, Kinesis or DynamoDB event a native handler can be given "
                f"({type(exc).__name__}: {exc!s:.200})"
            ) from exc
    started = time.perf_counter()
    try:
        response = asyncio.run(fn(*args)) if is_coroutine_callable(fn) else fn(*args)
    except (Exception, SystemExit) as exc:  # `sys.exit()` in a handler is its error too
        return Invocation(None, time.perf_counter() - started, exc)
    return Invocation(response, time.perf_counter() - started)
