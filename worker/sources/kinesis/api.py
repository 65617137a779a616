"""What differs between the streams read as leased shards: the calls and the record shape.

Kinesis and DynamoDB Streams share everything else (leases, checkpoints,
hand-offs, parent-before-child, the reader's pacing and retries), so the
machinery in this package talks to a `ShardApi` and never names either. Each
API raises the client's own errors; the callers decide what is retried
(`transient`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from worker.sources.kinesis.config import KinesisSourceConfig
from worker.sources.kinesis.record import KinesisRecord


@dataclass(frozen=True, slots=True)
class Page:
    """One GetRecords answer: its records in order, the iterator to read on with (None at
    the shard's end), and how far behind the stream's tip the reader is, if it can tell."""

    records: list[Any]
    next_iterator: str | None
    behind_ms: float | None


class ShardApi(Protocol):
    #: The source's name: metric labels and log lines.
    name: str
    #: The botocore service whose client the API is given.
    service: str
    #: Shortest time between two GetRecords calls on one shard (the service's read limit).
    min_call_interval_s: float

    @property
    def stream(self) -> str:
        """The stream's name as logs and errors show it."""
        ...

    async def open(self, client: Any) -> None:
        """Take the client; resolve what the config left to the service (a table's stream)."""
        ...

    def shards(self) -> AsyncIterator[tuple[str, tuple[str, ...]]]:
        """Every shard of the stream with its parents, paged as the service pages them."""
        ...

    @property
    def starts_at_tip(self) -> bool:
        """The starting position is the stream's tip (`latest`): a place that moves, known
        only to the iterator that found it, so a start there must be pinned (`reader`)."""
        ...

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        """A shard iterator after sequence number `after`, else at sequence number `at` (a
        pinned start), else at the starting position; `oldest`: at the oldest record the
        stream still holds, whatever they say."""
        ...

    #: The most records one GetRecords may return (the service's own `Limit` cap).
    max_page_records: int

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        """Up to `limit` records from `iterator` (at most `max_page_records`)."""
        ...


class KinesisApi:
    name = "kinesis"
    service = "kinesis"
    min_call_interval_s = 0.2  # GetRecords: 5 calls per second per shard
    max_page_records = 10_000  # and 10 MB a call

    def __init__(self, config: KinesisSourceConfig) -> None:
        self._config = config
        self._client: Any = None

    @property
    def stream(self) -> str:
        return self._config.stream

    @property
    def starts_at_tip(self) -> bool:
        return self._config.starting_position == "latest"

    async def open(self, client: Any) -> None:
        self._client = client

    async def shards(self) -> AsyncIterator[tuple[str, tuple[str, ...]]]:
        kwargs: dict[str, Any] = {"StreamName": self.stream}
        while True:
            page = await self._client.list_shards(**kwargs)
            for shard in page["Shards"]:
                yield shard["ShardId"], parents_of(shard)
            if not page.get("NextToken"):
                return
            kwargs = {"NextToken": page["NextToken"]}

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        c = self._config
        kwargs: dict[str, Any] = {"StreamName": self.stream, "ShardId": shard_id}
        if oldest:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        elif after:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        elif at:
            kwargs.update(ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=at)
        elif c.starting_position == "latest":
            kwargs["ShardIteratorType"] = "LATEST"
        elif c.starting_position == "at_timestamp":
            at = datetime.fromtimestamp(c.starting_position_timestamp, UTC)
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=at)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return (await self._client.get_shard_iterator(**kwargs))["ShardIterator"]  # type: ignore[no-any-return]

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        raw = await self._client.get_records(ShardIterator=iterator, Limit=limit)
        stream = self.stream
        records = [KinesisRecord.from_api(stream, shard_id, r) for r in raw["Records"]]
        return Page(records, raw.get("NextShardIterator"), raw.get("MillisBehindLatest"))


def parents_of(shard: dict[str, Any]) -> tuple[str, ...]:
    """A shard's parent and adjacent parent (after a merge), as both services name them."""
    return tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)
