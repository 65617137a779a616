"""The DynamoDB Streams calls behind the shared shard machinery (`kinesis.api.ShardApi`).

DescribeStream pages shards by `ExclusiveStartShardId`; GetRecords returns at
most 1,000 records (1 MB) a call, and a shard serves about 5 reads a second
shared by at most two readers, so one reader here keeps to 4. A shard ends when
GetRecords gives no `NextShardIterator`; DynamoDB closes shards and opens
children routinely (about every four hours), so the lineage the lease machinery
keeps (parents before children) is the normal path here.

DynamoDB Streams has no MillisBehindLatest: the time behind is how long ago the
last record read was created, and zero once a read comes back empty.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from worker.sources.base import SourceStartError
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.dynamodb.record import DynamoDBRecord
from worker.sources.kinesis.api import Page, parents_of


class DynamoDBStreamsApi:
    name = "dynamodb"
    service = "dynamodbstreams"
    min_call_interval_s = 0.25
    max_page_records = 1_000  # and 1 MB a call

    def __init__(self, config: DynamoDBSourceConfig) -> None:
        self._config = config
        self._client: Any = None
        self.stream_arn = config.stream_arn

    @property
    def stream(self) -> str:
        return self._config.table

    async def open(self, client: Any) -> None:
        self._client = client
        if self.stream_arn is None:
            self.stream_arn = await self._latest_stream()

    async def _latest_stream(self) -> str:
        """The table's newest stream (stream labels are creation times, so they sort)."""
        table, streams = self._config.table, []
        kwargs: dict[str, Any] = {"TableName": table}
        while True:
            page = await self._client.list_streams(**kwargs)
            streams += page.get("Streams", [])
            if not page.get("LastEvaluatedStreamArn"):
                break
            kwargs["ExclusiveStartStreamArn"] = page["LastEvaluatedStreamArn"]
        if not streams:
            raise SourceStartError(
                f"dynamodb: table {table} has no stream (enable one: StreamSpecification "
                "StreamEnabled=true, StreamViewType=NEW_AND_OLD_IMAGES), or it does not exist"
            )
        return max(streams, key=lambda s: s.get("StreamLabel", ""))["StreamArn"]  # type: ignore[no-any-return]

    async def shards(self) -> AsyncIterator[tuple[str, tuple[str, ...]]]:
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            described = (await self._client.describe_stream(**kwargs))["StreamDescription"]
            for shard in described.get("Shards", []):
                yield shard["ShardId"], parents_of(shard)
            last = described.get("LastEvaluatedShardId")
            if not last:
                return
            kwargs["ExclusiveStartShardId"] = last

    @property
    def starts_at_tip(self) -> bool:
        return self._config.starting_position == "latest"

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
        if oldest:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        elif after:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
        elif at:
            kwargs.update(ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=at)
        elif self._config.starting_position == "latest":
            kwargs["ShardIteratorType"] = "LATEST"
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return (await self._client.get_shard_iterator(**kwargs))["ShardIterator"]  # type: ignore[no-any-return]

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        raw = await self._client.get_records(ShardIterator=iterator, Limit=limit)
        table, arn = self.stream, self.stream_arn or ""
        records = [DynamoDBRecord.from_api(table, shard_id, r, arn) for r in raw["Records"]]
        behind_ms = 0.0
        if records:
            behind_ms = max(time.time() * 1000 - records[-1].timestamp_ms, 0.0)
        return Page(records, raw.get("NextShardIterator"), behind_ms)
