"""The Kafka destination's envelope (written in place of a record over the topic's
limit) names the record's position; a Kinesis or DynamoDB sequence number is past 64
bits, which orjson refuses to write as a number: the envelope raised TypeError, which is
no DestinationError, so the lane died and every restart died on the same record."""

from __future__ import annotations

import orjson

from tests.unit.test_dynamodb_records import AWS_EVENT, from_get_records
from worker.destinations.base import FailureEvent
from worker.destinations.kafka import envelope

BIG = "1200000000000136158523"


def test_an_envelope_of_a_dynamodb_record_past_64_bits_is_written_with_its_position():
    (record, *_) = from_get_records(AWS_EVENT)
    record.change["dynamodb"]["SequenceNumber"] = BIG
    record.position = int(BIG)
    event = FailureEvent("RetryAttemptsExhausted", "dynamodb", "shard-1", [record], 3)
    document = orjson.loads(envelope(event, record, 1000))
    assert document["position"] == BIG
    assert document["truncated"] is True


def test_a_kafka_offset_stays_a_number():
    from worker.sources.memory import MemoryRecord

    record = MemoryRecord("t", 0, 42, None, b"x" * 10, 0)
    event = FailureEvent("RetryAttemptsExhausted", "kafka", "t-0", [record], 3)
    assert orjson.loads(envelope(event, record, 1000))["position"] == 42
