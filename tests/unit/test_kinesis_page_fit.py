"""A shard reader asks each GetRecords for as many records as its part of the memory
budget holds a page of (`worker.sources.kinesis.page_fit`): before, every call asked for
the service's cap (10,000 records, 10 MB on Kinesis), and the pages the readers held sat
outside the budget at any shard count (tests/kinesis/test_kinesis_page_fit measures it on
kinesis-local)."""

from __future__ import annotations

import asyncio

from worker.sources.kinesis.api import Page
from worker.sources.kinesis.page_fit import (
    FIRST_RECORD_BYTES,
    MIN_PAGE_RECORDS,
    PAGES_HELD,
    PageFit,
)
from worker.sources.kinesis.reader import ShardReader


class Record:
    def __init__(self, n: int, size: int) -> None:
        self.sequence_number = str(n)
        self.size = size


class Backlog:
    """A shard with a backlog of 1,000-byte records: each page is as long as asked, until
    `pages` pages were read; it then ends. Records the `Limit` of each call."""

    name = "kinesis"
    service = "kinesis"
    min_call_interval_s = 0.0
    max_page_records = 10_000
    stream = "telemetry"
    starts_at_tip = False

    def __init__(self, pages: int) -> None:
        self.limits: list[int] = []
        self._left = pages
        self._next = 0

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        return "it"

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        self.limits.append(limit)
        self._left -= 1
        records = [Record(self._next + i, 1000) for i in range(limit)]
        self._next += limit
        return Page(records, "it" if self._left else None, 0.0)


def test_with_no_share_a_page_is_the_services_cap():
    assert PageFit(10_000, 320).limit == 10_000


def test_a_page_is_the_share_over_the_pages_held_in_records_of_the_last_pages_weight():
    fit = PageFit(10_000, 320)
    held = fit.fit(3 * 200_000)
    assert fit.limit == 200_000 // FIRST_RECORD_BYTES  # before any page: the first guess
    assert held == PAGES_HELD * fit.limit * FIRST_RECORD_BYTES <= 3 * 200_000
    fit.read(500, 500 * 1680)  # a page of 1,680-byte records: 2,000 bytes each with overhead
    assert fit.record_bytes == 2000 and fit.limit == 100
    fit.read(0, 0)  # an empty page says nothing of the records' size
    assert fit.record_bytes == 2000


def test_the_limit_stays_within_the_floor_and_the_cap_and_says_what_it_holds():
    small = PageFit(1_000, 320)
    held = small.fit(3_000)  # far too little for one record a page
    assert small.limit == MIN_PAGE_RECORDS
    assert held == PAGES_HELD * MIN_PAGE_RECORDS * FIRST_RECORD_BYTES  # over the share: said
    large = PageFit(1_000, 320)
    large.fit(10**9)
    assert large.limit == 1_000  # DynamoDB Streams' cap


async def test_the_reader_asks_each_call_for_the_fitted_limit_and_follows_the_records_size():
    api = Backlog(pages=2)  # two pages: both fit the reader's queue, so it ends unblocked
    reader = ShardReader(api, "shard-1", None, lambda: None, None, overhead_bytes=320)
    reader.page_fit.fit(PAGES_HELD * 300_000)
    reader.start(lambda coro, name: asyncio.create_task(coro, name=name))
    assert reader._task is not None
    await asyncio.wait_for(reader._task, 5)
    # 300,000 bytes a page: 292 records by the first guess, then 227 of 1,320 bytes each.
    assert api.limits == [300_000 // FIRST_RECORD_BYTES, 300_000 // 1320]
    assert len(reader.take()) == sum(api.limits) and reader.drained
