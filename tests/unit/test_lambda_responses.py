"""batchItemFailures read exactly as Lambda reads them."""

import pytest

from worker.handling.partial import InvalidResponse
from worker.lambda_compat.responses import kafka_failed_indexes, kinesis_failed_indexes
from worker.testing import make_batch

RECORDS = make_batch([b"a", b"b", b"c"], topic="t", partition=2, first_offset=10).records


def kafka(*items):
    return {"batchItemFailures": [{"itemIdentifier": i} for i in items]}


@pytest.mark.parametrize(
    "response",
    [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, {"statusCode": 200}, "ok"],
)
def test_null_empty_or_absent_failures_mean_success(response):
    assert kafka_failed_indexes(response, RECORDS) is None


def test_kafka_identifiers_name_partition_and_offset():
    response = kafka({"partition": "t-2", "offset": 12}, {"partition": "t-2", "offset": 11})
    assert kafka_failed_indexes(response, RECORDS) == [1, 2]


@pytest.mark.parametrize(
    "response",
    [
        kafka({"partition": "t-2", "offset": 99}),  # not in the batch
        kafka({"partition": "t-3", "offset": 10}),  # wrong partition
        kafka(None),
        kafka(""),
        kafka({}),
        kafka({"partition": "t-2"}),
        kafka({"partition": "t-2", "offset": 10, "extra": 1}),
        {"batchItemFailures": [{"itemId": {"partition": "t-2", "offset": 10}}]},  # mis-keyed
        {"batchItemFailures": "t-2:10"},
    ],
)
def test_a_bad_identifier_fails_the_whole_batch(response):
    with pytest.raises(InvalidResponse):
        kafka_failed_indexes(response, RECORDS)


class Seq:
    def __init__(self, n: str) -> None:
        self.sequence_number = n


def test_kinesis_identifiers_are_sequence_numbers():
    records = [Seq("100"), Seq("200"), Seq("300")]
    assert kinesis_failed_indexes(kafka("300", "200"), records) == [1, 2]
    for bad in ("400", "", None, 300):
        with pytest.raises(InvalidResponse):
            kinesis_failed_indexes(kafka(bad), records)


def test_a_native_kinesis_response_may_name_sequence_numbers_as_strings():
    from worker.handling.partial import InvalidResponse, failed_indexes
    from worker.sources.kinesis.record import KinesisRecord

    base = 49590338271490256608559692538361571095921575989136588898
    records = [KinesisRecord("s", "shardId-0", b"k", b"v", str(base + i), 0) for i in range(4)]
    assert failed_indexes([str(base + 2), str(base + 1)], records) == [1, 2]
    assert failed_indexes([base + 3, records[0]], records) == [0, 3]  # ints and records too
    with pytest.raises(InvalidResponse):
        failed_indexes([str(base + 9)], records)
    with pytest.raises(InvalidResponse):  # a Kafka record has no sequence number
        failed_indexes(["0"], make_batch([b"1"]).records)
