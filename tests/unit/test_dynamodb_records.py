"""DynamoDB Streams records: Lambda's documented event, batchItemFailures by SequenceNumber,
the native record API, filters on the change, and the settings Lambda refuses."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from worker.config_load import ConfigError, load_config
from worker.lambda_compat.events import dynamodb_event
from worker.lambda_compat.filters import RecordFilter
from worker.lambda_compat.responses import InvalidResponse
from worker.lambda_compat.shapes import shape_of
from worker.sources.dynamodb.api import DynamoDBStreamsApi
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.dynamodb.record import TRAITS, DynamoDBRecord

ARN = (
    "arn:aws:dynamodb:us-west-2:123456789012:table/ExampleTableWithStream/stream/"
    "2015-06-27T00:48:05.899"
)
CREATED = 1693997155.0

#: AWS's example DynamoDB event ("Using AWS Lambda with Amazon DynamoDB", the Lambda
#: developer guide), with the creation time real events carry.
AWS_EVENT = {
    "Records": [
        {
            "eventID": "1",
            "eventVersion": "1.0",
            "dynamodb": {
                "ApproximateCreationDateTime": CREATED,
                "Keys": {"Id": {"N": "101"}},
                "NewImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}},
                "StreamViewType": "NEW_AND_OLD_IMAGES",
                "SequenceNumber": "111",
                "SizeBytes": 26,
            },
            "awsRegion": "us-west-2",
            "eventName": "INSERT",
            "eventSourceARN": ARN,
            "eventSource": "aws:dynamodb",
        },
        {
            "eventID": "2",
            "eventVersion": "1.0",
            "dynamodb": {
                "ApproximateCreationDateTime": CREATED,
                "OldImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}},
                "SequenceNumber": "222",
                "Keys": {"Id": {"N": "101"}},
                "SizeBytes": 59,
                "NewImage": {"Message": {"S": "This item has changed"}, "Id": {"N": "101"}},
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
            "awsRegion": "us-west-2",
            "eventName": "MODIFY",
            "eventSourceARN": ARN,
            "eventSource": "aws:dynamodb",
        },
        {
            "eventID": "3",
            "eventVersion": "1.0",
            "dynamodb": {
                "ApproximateCreationDateTime": CREATED,
                "Keys": {"Id": {"N": "101"}},
                "SizeBytes": 38,
                "SequenceNumber": "333",
                "OldImage": {"Message": {"S": "This item has changed"}, "Id": {"N": "101"}},
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
            "awsRegion": "us-west-2",
            "eventName": "REMOVE",
            "eventSourceARN": ARN,
            "eventSource": "aws:dynamodb",
        },
    ]
}


def from_get_records(event: dict) -> list[DynamoDBRecord]:
    """The event's records as botocore parses GetRecords (no ARN, the time as a datetime)."""
    out = []
    for record in copy.deepcopy(event["Records"]):
        arn = record.pop("eventSourceARN")
        stream = record["dynamodb"]
        stream["ApproximateCreationDateTime"] = datetime.fromtimestamp(
            stream["ApproximateCreationDateTime"], UTC
        )
        out.append(DynamoDBRecord.from_api("ExampleTableWithStream", "shard-1", record, arn))
    return out


def test_the_lambda_event_is_the_one_aws_documents():
    records = from_get_records(AWS_EVENT)
    assert dynamodb_event(records, None) == AWS_EVENT
    assert shape_of("dynamodb").parse is not None
    renamed = dynamodb_event(records, "arn:other")
    assert {r["eventSourceARN"] for r in renamed["Records"]} == {"arn:other"}


def test_batch_item_failures_name_records_by_sequence_number():
    records = from_get_records(AWS_EVENT)
    parse = shape_of("dynamodb").parse
    assert parse({"batchItemFailures": [{"itemIdentifier": "222"}]}, records) == [1]
    assert parse({"batchItemFailures": []}, records) is None  # none failed
    with pytest.raises(InvalidResponse):
        parse({"batchItemFailures": [{"itemIdentifier": "999"}]}, records)


def test_the_native_record_gives_the_change_its_key_and_plain_values():
    raw = {
        "eventID": "e1",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
        "dynamodb": {
            "ApproximateCreationDateTime": datetime(2026, 12, 2, 10, 0, 0, 500000, UTC),
            "Keys": {"site": {"S": "berlin"}, "device_id": {"S": "d-7"}},
            "NewImage": {
                "device_id": {"S": "d-7"},
                "site": {"S": "berlin"},
                "fw": {"N": "2.5"},
                "blob": {"B": b"\x00\xff"},
                "tags": {"SS": ["a", "b"]},
                "cfg": {"M": {"raw": {"B": b"\x01"}, "l": {"L": [{"N": "1"}]}}},
            },
            "OldImage": {"device_id": {"S": "d-7"}, "site": {"S": "berlin"}, "fw": {"N": "2"}},
            "SequenceNumber": "1200000000000136158523",
            "SizeBytes": 91,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }
    r = DynamoDBRecord.from_api("devices", "shard-9", raw, ARN)
    assert (r.topic, r.shard_id, r.partition) == ("devices", "shard-9", 0)
    assert r.position == r.offset == 1200000000000136158523
    assert r.event_name == "MODIFY" and r.stream_view_type == "NEW_AND_OLD_IMAGES"
    assert r.key == b'{"device_id":{"S":"d-7"},"site":{"S":"berlin"}}'  # sorted: one per item
    created = datetime(2026, 12, 2, 10, 0, 0, 500000, UTC).timestamp()
    assert r.timestamp_ms == int(created * 1000) and r.approximate_creation_time == created
    assert r.size_bytes == TRAITS.size(r) == 91
    assert r.user_identity == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert r.new_image["blob"] == {"B": "AP8="}  # base64, as Lambda's event has it
    assert r.new_image["cfg"]["M"]["raw"] == {"B": "AQ=="}
    assert r.json() == json.loads(r.value) and r.json()["eventSourceARN"] == ARN
    plain = r.deserialized
    assert plain["keys"] == {"site": "berlin", "device_id": "d-7"}
    assert plain["new_image"]["fw"] == Decimal("2.5") and plain["old_image"]["fw"] == 2
    assert bytes(plain["new_image"]["blob"]) == b"\x00\xff" and plain["new_image"]["tags"] == {
        "a",
        "b",
    }
    assert bytes(plain["new_image"]["cfg"]["raw"]) == b"\x01"
    (back,) = TRAITS.unpack(TRAITS.pack([r]))
    assert back.change == r.change and back.key == r.key and back.shard_id == "shard-9"


@pytest.mark.parametrize(
    ("pattern", "kept"),
    [
        ({"eventName": ["INSERT"]}, ["111"]),
        ({"eventName": ["MODIFY", "REMOVE"]}, ["222", "333"]),
        ({"dynamodb": {"NewImage": {"Message": {"S": ["This item has changed"]}}}}, ["222"]),
        ({"dynamodb": {"Keys": {"Id": {"N": ["101"]}}}, "eventName": ["REMOVE"]}, ["333"]),
        ({"dynamodb": {"NewImage": {"Message": {"S": [{"prefix": "New"}]}}}}, ["111"]),
        ({"dynamodb": {"OldImage": [{"exists": False}]}}, ["111"]),
    ],
)
def test_filters_match_the_change_as_lambdas_dynamodb_filters_do(pattern, kept):
    records = from_get_records(AWS_EVENT)
    f = RecordFilter([json.dumps(pattern)], shape_of("dynamodb"))
    assert [r.sequence_number for r in f.keep(records)] == kept


def problems(**source: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"source.{k}={json.dumps(v)}" for k, v in source.items()], {})
    return err.value.problems


def test_settings_lambda_does_not_allow_for_dynamodb_are_refused_with_one_line():
    (line,) = problems(kind="dynamodb", table_name="devices", starting_position="at_timestamp")
    assert "trim_horizon" in line and "at_timestamp" in line
    (line,) = problems(kind="dynamodb")
    assert "table_name or stream_arn" in line
    (line,) = problems(kind="dynamodb", stream_arn="arn:aws:kinesis:eu-west-1:1:stream/s")
    assert "not a DynamoDB stream ARN" in line


def test_the_lease_table_cannot_be_the_table_whose_stream_is_read():
    """Each checkpoint is a write to the lease table: if that is the source table, each
    one is a change on its stream, read, handled and checkpointed again, without end."""
    (line,) = problems(kind="dynamodb", table_name="orders", lease_table="orders")
    assert "source.lease_table" in line and "'orders'" in line
    (line,) = problems(kind="dynamodb", table_name="g-leases", group_id="g")
    assert "'g-leases'" in line
    overrides = [
        'source.kind="dynamodb"',
        'source.table_name="orders"',
        'source.lease_table="orders"',
        'source.lease_endpoint_url="http://other:8000"',
    ]
    elsewhere = load_config(None, overrides, {})
    assert elsewhere.source.lease_table == "orders"  # another endpoint: another table


def test_the_lease_table_is_where_the_stream_is_unless_told_otherwise():
    c = DynamoDBSourceConfig(stream_arn=ARN, endpoint_url="http://127.0.0.1:1")
    assert c.table == "ExampleTableWithStream" and c.lease_endpoint == "http://127.0.0.1:1"
    c = DynamoDBSourceConfig(table_name="devices", endpoint_url="a", lease_endpoint_url="b")
    assert c.lease_endpoint == "b"


class PagedStreams:
    """DynamoDB Streams' paging of ListStreams and DescribeStream, for the API's loops."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    async def list_streams(self, **kw):
        self.calls.append(("list_streams", kw))
        if "ExclusiveStartStreamArn" not in kw:
            return {"Streams": [{"StreamArn": "old", "StreamLabel": "2026-01-01T00:00:00.000"}],
                    "LastEvaluatedStreamArn": "old"}  # fmt: skip
        return {"Streams": [{"StreamArn": "new", "StreamLabel": "2026-06-01T00:00:00.000"}]}

    async def describe_stream(self, **kw):
        self.calls.append(("describe_stream", kw))
        if "ExclusiveStartShardId" not in kw:
            shards = [{"ShardId": "a"}, {"ShardId": "b", "ParentShardId": "a"}]
            return {"StreamDescription": {"Shards": shards, "LastEvaluatedShardId": "b"}}
        return {"StreamDescription": {"Shards": [{"ShardId": "c", "ParentShardId": "b"}]}}


async def test_the_latest_stream_is_read_and_every_page_of_shards_with_its_lineage():
    api, client = DynamoDBStreamsApi(DynamoDBSourceConfig(table_name="devices")), PagedStreams()
    await api.open(client)
    assert api.stream_arn == "new"
    assert [s async for s in api.shards()] == [("a", ()), ("b", ("a",)), ("c", ("b",))]
    assert client.calls[-1] == (
        "describe_stream",
        {"StreamArn": "new", "ExclusiveStartShardId": "b"},
    )
