"""GetRecords records the DynamoDB source cannot read as documented.

A record it cannot place in its shard (no `dynamodb`, no numeric `SequenceNumber`) can
be neither handled nor dead-lettered: its reader stops with a line naming it (the
worker then stops, committing nothing at or past it). An attribute value of an odd
form is no reason to stop: it used to fail the read (`too many values to unpack`) on
every restart, so one odd item stopped the shard for good.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.lambda_compat.events import dynamodb_event
from worker.sources.dynamodb.api import DynamoDBStreamsApi
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.dynamodb.record import MalformedRecord

ARN = "arn:aws:dynamodb:eu-west-1:1:table/devices/stream/2026-01-01T00:00:00.000"


class OneRecord:
    def __init__(self, record: dict) -> None:
        self.record = record

    async def get_records(self, **kw):
        return {"Records": [self.record], "NextShardIterator": "next"}


async def page_of(record: dict):
    api = DynamoDBStreamsApi(DynamoDBSourceConfig(stream_arn=ARN))
    await api.open(OneRecord(record))
    return await api.page("shardId-1", "it", api.max_page_records)


def change(**stream: object) -> dict:
    body = {"SequenceNumber": "100", "Keys": {"id": {"S": "a"}},
            "ApproximateCreationDateTime": datetime(2026, 12, 2, tzinfo=UTC), **stream}  # fmt: skip
    return {"eventID": "e-1", "eventName": "MODIFY", "dynamodb": body}


@pytest.mark.parametrize(
    "image",
    [
        {"x": {}},  # a type botocore's model does not know: it leaves the value empty
        {"x": {"S": "a", "N": "1"}},  # two types
        {"x": "raw"},  # not an AttributeValue at all
    ],
)
async def test_an_attribute_value_of_an_odd_form_reaches_the_handler_as_it_came(image):
    (record,) = (await page_of(change(NewImage=image))).records
    assert record.new_image == image
    assert dynamodb_event([record], None)["Records"][0]["dynamodb"]["NewImage"] == image


async def test_binary_parts_of_an_odd_value_are_base64_so_the_change_stays_json():
    """Kept raw, bytes in an odd value made the change unwritable as JSON: the event and
    the on-failure destination's write raised TypeError (the lane died)."""
    image = {"x": {"S": "a", "B": b"\x00"}, "y": {"SDK_UNKNOWN": b"\x01"}, "z": b"\x02"}
    (record,) = (await page_of(change(NewImage=image))).records
    assert record.new_image == {"x": {"S": "a", "B": "AA=="}, "y": {"SDK_UNKNOWN": "AQ=="},
                                "z": "Ag=="}  # fmt: skip
    assert record.json()["dynamodb"]["NewImage"] == record.new_image
    assert dynamodb_event([record], None)["Records"][0]["dynamodb"]["NewImage"]["z"] == "Ag=="


async def test_documented_odd_types_are_read_null_bool_number_sets_and_nested_binary():
    image = {
        "n": {"NULL": True}, "b": {"BOOL": False}, "ns": {"NS": ["1", "2.5"]},
        "l": {"L": [{"M": {"x": {"B": b"\x00"}}}, {"BS": [b"a"]}]},
    }  # fmt: skip
    (record,) = (await page_of(change(NewImage=image, Keys={}))).records
    assert record.key == b"{}"
    assert record.new_image["l"] == {"L": [{"M": {"x": {"B": "AA=="}}}, {"BS": ["YQ=="]}]}
    plain = record.deserialized["new_image"]
    assert plain["n"] is None and plain["b"] is False and bytes(plain["l"][0]["x"]) == b"\x00"


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"eventID": "e-1", "eventName": "INSERT"}, "KeyError: 'dynamodb'"),
        (change(SequenceNumber=None), "TypeError"),
        ({"eventID": "e-1", "dynamodb": {"Keys": {}}}, "KeyError: 'SequenceNumber'"),
        (change(SequenceNumber="not-a-number"), "ValueError"),
        (change(ApproximateCreationDateTime="yesterday"), "TypeError"),
    ],
)
async def test_a_record_that_cannot_be_placed_stops_the_read_with_a_line_naming_it(record, why):
    with pytest.raises(MalformedRecord) as err:
        await page_of(record)
    text = str(err.value)
    assert "shard shardId-1" in text and "'e-1'" in text and why in text
    assert "nothing at or past it" in text
