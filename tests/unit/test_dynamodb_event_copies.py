"""A Lambda handler owns the event it is given: editing it must not edit the records.

Kinesis and Kafka events are built afresh for each invocation; DynamoDB's were the
records' own change dicts, so a handler that edited its event in place (redacting an
attribute, deserializing images into the record) changed what the retry gave it and
what the on-failure destination stored.
"""

from __future__ import annotations

import contextlib

from tests.unit.test_dynamodb_records import AWS_EVENT, from_get_records
from worker.config import WorkerConfig
from worker.lambda_compat.adapter import lambda_style
from worker.records import Batch


def dynamodb_config(**source: object) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "source": {"kind": "dynamodb", "table_name": "devices", **source},
            "handler": {"style": "lambda"},
        }
    )


def redact_then_fail(seen: list[dict]):
    def handler(event, context):
        seen.append(event["Records"][0]["dynamodb"].get("NewImage"))
        for record in event["Records"]:
            record["dynamodb"].pop("NewImage", None)  # redact before logging, say
            record["eventName"] = "SEEN"
        raise RuntimeError("downstream is down")

    return handler


def _run_twice(config: WorkerConfig) -> tuple[list[dict], list]:
    records = from_get_records(AWS_EVENT)
    before = [r.value for r in records]
    seen: list[dict] = []
    call, _ = lambda_style(redact_then_fail(seen), config, "dynamodb")
    for _ in range(2):  # the first invocation, then its retry
        with contextlib.suppress(RuntimeError):
            call(Batch(records, "dynamodb", "shard-1"))
    assert [r.value for r in records] == before, "the records were edited by the handler"
    assert records[0].event_name == "INSERT"
    return seen, records


def test_a_handler_editing_its_dynamodb_event_leaves_the_records_and_the_retry_intact():
    seen, _ = _run_twice(dynamodb_config())
    assert seen[1] == seen[0] is not None  # the retry gets the image the first call got


def test_the_same_with_a_configured_event_source_arn():
    seen, _ = _run_twice(dynamodb_config(event_source_arn="arn:aws:dynamodb:x:1:table/t/stream/s"))
    assert seen[1] == seen[0] is not None
