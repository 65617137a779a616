"""A `latest` start is pinned in the lease before any record of it is handed out (Kinesis and
DynamoDB Streams share the reader).

A LATEST iterator is a place only its reader knows: a worker killed before its first
checkpoint left none, and the next owner started at the tip again, past every record
written since (280 of 280 on kinesis-local, 125 of 125 on moto's DynamoDB Streams:
tests/kinesis/test_latest_start). The reader now holds the first page with records until
the lease names its first record as the start, and a reader of a pinned lease reads AT it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from worker.backoff import Backoff
from worker.sources.dynamodb.api import DynamoDBStreamsApi
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.kinesis.api import KinesisApi, Page
from worker.sources.kinesis.config import KinesisSourceConfig
from worker.sources.kinesis.leases import LeaseLost, _lease
from worker.sources.kinesis.reader import ShardReader


class Record:
    def __init__(self, n: int) -> None:
        self.sequence_number = str(n)
        self.size = 10


def expired() -> ClientError:
    error = {"Error": {"Code": "ExpiredIteratorException", "Message": "expired"},
             "ResponseMetadata": {"HTTPStatusCode": 400}}  # fmt: skip
    return ClientError(error, "GetRecords")


class Tip:
    """A shard read from its tip: an empty page, then records 7..9, then it ends. `expire`:
    the first GetRecords fails with an expired iterator."""

    name = "kinesis"
    service = "kinesis"
    min_call_interval_s = 0.0
    max_page_records = 10_000
    stream = "telemetry"
    starts_at_tip = True

    def __init__(self, expire: bool = False) -> None:
        self.asked: list[tuple[str | None, str | None]] = []
        self.pages = [Page([], "it-2", 0.0), Page([Record(n) for n in (7, 8, 9)], None, 0.0)]
        self.expire = expire

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        self.asked.append((after, at))
        return "it-1"

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        if self.expire:
            self.expire = False
            raise expired()
        return self.pages.pop(0)


def started(reader: ShardReader) -> asyncio.Task[Any]:
    reader.start(lambda coro, name: asyncio.create_task(coro, name=name))
    assert reader._task is not None
    return reader._task


async def test_the_first_page_with_records_waits_for_its_start_to_be_pinned():
    api, pins, asked, answer = Tip(), [], asyncio.Event(), asyncio.Event()

    async def pin(sequence: str) -> None:
        pins.append(sequence)
        asked.set()
        await answer.wait()  # the lease table has not answered yet

    arrived = asyncio.Event()
    reader = ShardReader(api, "shard-1", None, arrived.set, None, pin=pin)
    task = started(reader)
    await asyncio.wait_for(asked.wait(), 5)
    assert pins == ["7"]  # the first record of the first page that carries any
    # The reader waits in the pin: nothing of the page is queued, nor last_read moved.
    assert not arrived.is_set() and reader.take() == [] and reader.last_read is None
    answer.set()
    await asyncio.wait_for(arrived.wait(), 5)
    await asyncio.wait_for(task, 5)
    assert pins == ["7"]  # once


async def test_pinned_records_are_handed_out_and_an_iterator_made_again_starts_at_the_pin():
    api, pins = Tip(expire=True), []

    async def pin(sequence: str) -> None:
        pins.append(sequence)

    reader = ShardReader(api, "shard-1", None, lambda: None, None, pin=pin)
    await asyncio.wait_for(started(reader), 5)
    assert [r.sequence_number for r in reader.take()] == ["7", "8", "9"]
    assert reader.ended and reader.last_read == "9"
    assert api.asked == [(None, None), (None, None)]  # nothing read yet: the tip, twice


async def test_a_reader_of_a_pinned_start_reads_at_it_until_it_has_read_past_it():
    api = Tip(expire=True)
    reader = ShardReader(api, "shard-1", None, lambda: None, None, at="7")
    await asyncio.wait_for(started(reader), 5)
    assert [r.sequence_number for r in reader.take()] == ["7", "8", "9"]
    assert api.asked == [(None, "7"), (None, "7")]  # AT the pin, never the tip again


async def test_a_lease_lost_before_the_pin_hands_out_nothing_and_does_not_end_the_shard():
    api = Tip()

    async def pin(sequence: str) -> None:
        raise LeaseLost("taken by another worker")

    reader = ShardReader(api, "shard-1", None, lambda: None, None, pin=pin)
    await asyncio.wait_for(started(reader), 5)  # ends quietly: the keeper stops the shard
    assert reader.take() == [] and not reader.ended and reader.last_read is None


async def test_a_pin_that_fails_for_a_reason_that_passes_is_retried(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr("worker.sources.kinesis.reader.READ_BACKOFF", Backoff(1, 1))
    api, failures, pins = Tip(), [EndpointConnectionError(endpoint_url="http://x")], []

    async def pin(sequence: str) -> None:
        pins.append(sequence)
        if failures:
            raise failures.pop()

    reader = ShardReader(api, "shard-1", None, lambda: None, None, pin=pin)
    await asyncio.wait_for(started(reader), 5)
    assert pins == ["7", "7"]
    assert [r.sequence_number for r in reader.take()] == ["7", "8", "9"]


class Client:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def get_shard_iterator(self, **kwargs: Any) -> dict[str, str]:
        self.calls.append(kwargs)
        return {"ShardIterator": "it"}


@pytest.mark.parametrize("kind", ["kinesis", "dynamodb"])
async def test_both_apis_read_at_a_pin_and_after_a_checkpoint_which_wins(kind: str):
    if kind == "kinesis":
        api: Any = KinesisApi(KinesisSourceConfig(stream_name="s", starting_position="latest"))
        seq = "StartingSequenceNumber"
    else:
        api = DynamoDBStreamsApi(DynamoDBSourceConfig(
            table_name="devices", starting_position="latest",
            stream_arn="arn:aws:dynamodb:us-east-1:1:table/devices/stream/x"))  # fmt: skip
        seq = "SequenceNumber"
    client = Client()
    await api.open(client)
    assert api.starts_at_tip
    await api.iterator("sh", None, at="7")
    await api.iterator("sh", "9", at="7")
    await api.iterator("sh", None)
    types = [(c["ShardIteratorType"], c.get(seq)) for c in client.calls]
    assert types == [("AT_SEQUENCE_NUMBER", "7"), ("AFTER_SEQUENCE_NUMBER", "9"), ("LATEST", None)]


def test_a_row_written_before_pins_reads_as_unpinned_and_a_pinned_one_keeps_its_pin():
    row = {"shard_id": {"S": "sh"}, "counter": {"N": "3"}, "owner": {"S": "w"}}
    assert _lease(row).start_at is None and _lease(row).checkpoint is None
    assert _lease({**row, "start_at": {"S": "7"}}).start_at == "7"
