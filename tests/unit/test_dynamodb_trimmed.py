"""A checkpoint older than the stream's retention (DynamoDB Streams keeps 24 hours).

GetShardIterator after it fails with TrimmedDataAccessException, which is no error that
passes: the reader stopped the worker, and every restart stopped again on the same
checkpoint, while the records after it expired too. The records past the checkpoint are
gone either way; the reader now says so, counts it, and reads on from the oldest left.
"""

from __future__ import annotations

import asyncio

from botocore.exceptions import ClientError

from worker.observe.metrics import Metrics
from worker.sources.kinesis.api import Page
from worker.sources.kinesis.metrics import KinesisMetrics
from worker.sources.kinesis.reader import ShardReader


class Record:
    def __init__(self, n: int) -> None:
        self.sequence_number = str(n)
        self.size = 10


def trimmed(op: str) -> ClientError:
    error = {"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"},
             "ResponseMetadata": {"HTTPStatusCode": 400}}  # fmt: skip
    return ClientError(error, op)


class RetainedDay:
    """A shard whose records up to 500 have expired; 501..503 are left, then it ends."""

    name = "dynamodb"
    service = "dynamodbstreams"
    min_call_interval_s = 0.0
    max_page_records = 10_000
    stream = "devices"

    def __init__(self, fail_first_read: bool = False) -> None:
        self.asked: list[tuple[str | None, bool]] = []
        self.fail_first_read = fail_first_read

    starts_at_tip = False

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        self.asked.append((after, oldest))
        if not oldest and after is not None and int(after) < 500:
            raise trimmed("GetShardIterator")
        return "oldest" if oldest else f"after-{after}"

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        if self.fail_first_read:
            self.fail_first_read = False
            raise trimmed("GetRecords")
        return Page([Record(n) for n in (501, 502, 503)], None, 0.0)


async def read_all(api: RetainedDay, after: str) -> tuple[list[str], float]:
    metrics = KinesisMetrics(Metrics())
    reader = ShardReader(api, "shard-1", after, lambda: None, metrics)
    reader.start(lambda coro, name: asyncio.create_task(coro, name=name))
    await asyncio.wait_for(reader._task, 10)
    got = [r.sequence_number for r in reader.take()]
    return got, metrics.get_records.labels("dynamodb", "shard-1", "trimmed").value


async def test_a_checkpoint_past_retention_reads_on_from_the_oldest_record_counted(caplog):
    api = RetainedDay()
    got, counted = await read_all(api, "100")
    assert got == ["501", "502", "503"]
    assert api.asked == [("100", False), ("100", True)]
    assert counted == 1
    assert "event=records_trimmed shard=shard-1 after=100" in caplog.text


async def test_an_iterator_trimmed_before_its_read_is_made_again_the_same_way():
    api = RetainedDay(fail_first_read=True)
    got, counted = await read_all(api, "100")
    assert got == ["501", "502", "503"]
    assert api.asked == [("100", False), ("100", True), ("100", False), ("100", True)]
    assert counted == 2
