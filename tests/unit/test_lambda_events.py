"""Golden tests: the events we build match the shapes AWS documents, field for field."""

import base64
from dataclasses import dataclass

import pytest

from worker.config import HandlerConfig
from worker.lambda_compat import events
from worker.lambda_compat.context import ContextFactory
from worker.lambda_compat.events import kafka_event, kinesis_event
from worker.sources.memory import MemoryRecord

# The documented MSK example (reference/lambda-esm-semantics.md §3).
AWS_KAFKA_EXAMPLE = {
    "eventSource": "aws:kafka",
    "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/C/uuid-4",
    "bootstrapServers": "b-1.x:9092,b-2.x:9092",
    "records": {
        "mytopic-0": [
            {
                "topic": "mytopic",
                "partition": 0,
                "offset": 15,
                "timestamp": 1545084650987,
                "timestampType": "CREATE_TIME",
                "key": "cmVjb3JkS2V5",
                "value": "eyJrZXkiOiJ2YWx1ZSJ9",
                "headers": [{"headerKey": [104, 101, 97, 100, 101, 114, 86, 97, 108, 117, 101]}],
            }
        ]
    },
}

# The documented Kinesis example (same section), one record.
AWS_KINESIS_RECORD = {
    "kinesis": {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": "1",
        "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
        "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
        "approximateArrivalTimestamp": 1545084650.987,
    },
    "eventSource": "aws:kinesis",
    "eventVersion": "1.0",
    "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
    "eventName": "aws:kinesis:record",
    "invokeIdentityArn": "arn:aws:iam::123456789012:role/r",
    "awsRegion": "us-east-2",
    "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/s",
}


def test_kafka_event_matches_the_documented_msk_example_exactly():
    record = MemoryRecord(
        "mytopic", 0, 15, b"recordKey", b'{"key":"value"}', 1545084650987,
        (("headerKey", b"headerValue"),),
    )  # fmt: skip
    event = kafka_event(
        [record],
        ["b-1.x:9092", "b-2.x:9092"],
        "arn:aws:kafka:us-east-1:123456789012:cluster/C/uuid-4",
    )
    assert event == AWS_KAFKA_EXAMPLE
    assert list(event) == list(AWS_KAFKA_EXAMPLE)


def test_self_managed_kafka_has_no_arn_and_omits_a_missing_key():
    records = [
        MemoryRecord("t", 3, 7, None, b"v", 1, ()),
        MemoryRecord("t", 3, 8, b"k", b"w", 2, ()),
    ]
    event = kafka_event(records, ["127.0.0.1:9092"])
    assert event["eventSource"] == "SelfManagedKafka" and "eventSourceArn" not in event
    first, second = event["records"]["t-3"]
    assert "key" not in first and second["key"] == base64.b64encode(b"k").decode()
    assert isinstance(first["timestamp"], int) and first["headers"] == []


def test_kafka_log_append_time_is_named_as_aws_names_it():
    @dataclass
    class AppendTimeRecord(MemoryRecord):
        timestamp_type: int = 1

    record = AppendTimeRecord("t", 0, 0, None, b"v", 5)
    (built,) = kafka_event([record], ["b:9092"])["records"]["t-0"]
    assert built["timestampType"] == "LOG_APPEND_TIME"


@dataclass
class KinesisRecord:
    key: bytes
    value: bytes
    sequence_number: str
    shard_id: str
    timestamp_ms: int


def test_kinesis_event_matches_the_documented_example_exactly():
    record = KinesisRecord(
        b"1",
        b"Hello, this is a test.",
        "49590338271490256608559692538361571095921575989136588898",
        "shardId-000000000006",
        1545084650987,
    )
    event = kinesis_event(
        [record],
        "us-east-2",
        "arn:aws:kinesis:us-east-2:123456789012:stream/s",
        "arn:aws:iam::123456789012:role/r",
    )
    assert event == {"Records": [AWS_KINESIS_RECORD]}
    arrival = event["Records"][0]["kinesis"]["approximateArrivalTimestamp"]
    assert isinstance(arrival, float)


def test_context_gives_each_invoke_a_request_id_and_a_deadline_from_the_timeout():
    make = ContextFactory(HandlerConfig(function_name="iot", timeout_s=30, aws_region="eu-west-1"))
    a, b = make(), make()
    assert a.aws_request_id != b.aws_request_id
    assert a.function_name == "iot" and a.function_version == "$LATEST"
    assert a.invoked_function_arn == "arn:aws:lambda:eu-west-1:000000000000:function:iot"
    assert a.log_group_name == "/aws/lambda/iot" and "[$LATEST]" in a.log_stream_name
    assert a.memory_limit_in_mb == "1024"
    assert 29_000 < a.get_remaining_time_in_millis() <= 30_000


def test_null_and_empty_header_values_keep_aws_shape_in_events_and_stay_apart_elsewhere():
    """AWS documents header values only as byte lists: null and empty are both [] in the
    event; a native handler and the dead-letter document still tell them apart."""
    from worker.destinations.base import FailureEvent
    from worker.destinations.file import event_document

    record = MemoryRecord("t", 0, 0, None, b"v", 1, (("null", None), ("empty", b"")))
    (event_record,) = kafka_event([record], ["b:9092"])["records"]["t-0"]
    assert event_record["headers"] == [{"null": []}, {"empty": []}]
    document = event_document(FailureEvent("RetryAttemptsExhausted", "kafka", "t-0", [record], 1))
    assert document["records"][0]["headers"] == [["null", None], ["empty", ""]]


def _plain_kafka_event(records, servers):
    """Lambda's Kafka event built the obvious way, record by record: the spec the fast
    builder (one pass per topic-partition run, C-level base64) must equal, key order too."""
    grouped: dict = {}
    for r in records:
        item = {"topic": r.topic, "partition": r.partition, "offset": r.offset,
                "timestamp": r.timestamp_ms, "timestampType": "CREATE_TIME"}  # fmt: skip
        if r.key is not None:
            item["key"] = base64.b64encode(r.key).decode()
        item["value"] = None if r.value is None else base64.b64encode(r.value).decode()
        item["headers"] = [{k: list(v or b"")} for k, v in r.headers]
        grouped.setdefault(f"{r.topic}-{r.partition}", []).append(item)
    return {"eventSource": "SelfManagedKafka", "bootstrapServers": ",".join(servers),
            "records": grouped}  # fmt: skip


@pytest.mark.parametrize("builder", ["c", "python"])
def test_the_kafka_event_builder_equals_the_plain_one_for_any_records(builder, monkeypatch):
    """Both builders, the C module's and its Python twin (used where it is not built)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    record = st.builds(
        MemoryRecord,
        st.sampled_from(["t", "u"]), st.integers(0, 2), st.integers(0, 10**12),
        st.none() | st.binary(max_size=20), st.none() | st.binary(max_size=60),
        st.integers(0, 2**41),
        st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=5)), max_size=3)
        .map(tuple),
    )  # fmt: skip

    twins = {"c": events._c_kafka_records, "python": events._python_kafka_records}
    monkeypatch.setattr(events, "_kafka_records", twins[builder])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(record, max_size=30))
    def check(records):
        built = kafka_event(records, ["a:1", "b:2"])
        plain = _plain_kafka_event(records, ["a:1", "b:2"])
        assert built == plain
        assert [list(r) for g in built["records"].values() for r in g] == [
            list(r) for g in plain["records"].values() for r in g
        ]

    check()
