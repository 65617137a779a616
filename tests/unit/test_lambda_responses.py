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
