"""The shard readers' pages count against the memory budget, on kinesis-local: with a
backlog, each GetRecords asks for the records a reader's part of the budget holds a page
of, where it asked for 10,000 (up to 10 MB) at any budget.

Measured here before the fit (two shards of 1,000 records of 1 KB, a 4 MiB budget): the
first page of each shard was its whole backlog, about 1 MB, against a page part of
466 KB while one shard is owned and 233 KB once both are. The pages are seen at the
botocore boundary (an `after-call` hook on the worker's own session); the emulator
answers as it would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.kinesis.test_kinesis_source import config, wait_active
from worker.config import WorkerConfig
from worker.runtime.backpressure import PREFETCH_SHARE
from worker.runtime.worker import Worker
from worker.sources.kinesis.page_fit import PAGES_HELD
from worker.sources.kinesis.source import KinesisSource

SHARDS, PER_SHARD, SIZE = 2, 1000, 1024
BUDGET = 4 * 1024 * 1024


async def make_backlog(kinesis: Emulator) -> str:
    stream = f"pages-{uuid.uuid4().hex[:6]}"
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        await client.create_stream(StreamName=stream, ShardCount=SHARDS)
        await wait_active(client, stream)
        entries = [{"Data": b"%08d" % i + b"x" * (SIZE - 8), "PartitionKey": f"d{i % 40}"}
                   for i in range(SHARDS * PER_SHARD)]  # fmt: skip
        for at in range(0, len(entries), 500):
            result = await client.put_records(StreamName=stream, Records=entries[at : at + 500])
            assert result.get("FailedRecordCount", 0) == 0
    return stream


async def test_each_page_of_a_backlog_fits_the_readers_part_of_the_budget(
    kinesis: Emulator, dynamodb: Emulator
):
    stream = await make_backlog(kinesis)
    base = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}")
    cfg = WorkerConfig.model_validate(
        {**base.model_dump(), "runtime": {"memory_budget_bytes": BUDGET}}
    )
    pages: list[tuple[int, int]] = []  # (records, payload bytes) of each GetRecords

    def after(parsed: dict, **_: object) -> None:
        records = parsed.get("Records", [])
        if records:
            pages.append((len(records), sum(len(r["Data"]) for r in records)))

    session = get_session()
    session.register("after-call.kinesis.GetRecords", after)
    handled: dict[str, set[int]] = defaultdict(set)
    everything = asyncio.Event()

    async def handler(batch) -> None:
        for r in batch.records:
            handled[r.shard_id].add(int(r.value[:8]))
        if sum(map(len, handled.values())) == SHARDS * PER_SHARD:
            everything.set()

    worker = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        await asyncio.wait_for(everything.wait(), 90)
    finally:
        worker.request_exit()
        await task
    # A reader's part is the share over the shards owned when it reads: the whole share
    # while the first lease is the only one taken (a page may be read then, before the
    # second take: seen under load), half of it once both are.
    one_shard_part = int(BUDGET * PREFETCH_SHARE) // PAGES_HELD
    assert len(pages) > 2 * SHARDS  # the backlog took several pages a shard
    assert max(nbytes for _, nbytes in pages) <= one_shard_part, pages
    assert min(nbytes for _, nbytes in pages) <= one_shard_part // SHARDS, pages
    assert sum(map(len, handled.values())) == SHARDS * PER_SHARD  # nothing lost
