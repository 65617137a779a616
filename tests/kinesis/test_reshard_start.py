"""`starting_position = "latest"` and a reshard after the mapping started, on kinesis-local
(leases in moto): a child shard's lease has no checkpoint, and it is taken only once its
parent reached SHARD_END. Read from the tip then, every record written to the child between
its creation and its take was skipped for good (measured before the fix: see the commit). A
child created after the mapping started is read from its oldest record (KCL and Lambda read
a child from its start after the parent).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.kinesis.dynamodb_tables import client as dynamodb_client
from tests.kinesis.dynamodb_tables import config as ddb_config
from tests.kinesis.dynamodb_tables import make_table
from tests.kinesis.test_kinesis_source import lease_rows, make_stream, wait_active
from tests.kinesis.test_kinesis_workers import handled, start, write_config
from tests.kinesis.test_latest_start import put_items, stream_positions
from worker.config import WorkerConfig
from worker.runtime.worker import Worker
from worker.sources.kinesis.api import parents_of
from worker.sources.kinesis.leases import LeaseTable

Positions = dict[str, set[int]]  # shard -> positions


def latest_config(kinesis: Emulator, dynamodb: Emulator, stream: str, table: str) -> WorkerConfig:
    return WorkerConfig.model_validate({
        "source": {"kind": "kinesis", "stream_name": stream, "region": "us-east-1",
                   "endpoint_url": kinesis.url, "lease_endpoint_url": dynamodb.url,
                   "lease_table": table, "lease_duration_s": 3, "starting_position": "latest"},
        "batching": {"batch_size": 100, "maximum_batching_window_ms": 50},
        "metrics": {"enabled": False},
    })  # fmt: skip


class Writer:
    """Puts 20 records a round over 20 keys, recording where each one landed."""

    def __init__(self, client, stream: str) -> None:
        self.client, self.stream = client, stream
        self.written: Positions = defaultdict(set)
        self.rounds = 0

    async def put(self, tag: str) -> None:
        entries = [{"Data": orjson.dumps({"key": f"{tag}{i}", "seq": self.rounds}),
                    "PartitionKey": f"k{i}"} for i in range(20)]  # fmt: skip
        answer = await self.client.put_records(StreamName=self.stream, Records=entries)
        assert answer.get("FailedRecordCount", 0) == 0
        for r in answer["Records"]:
            self.written[r["ShardId"]].add(int(r["SequenceNumber"]))
        self.rounds += 1

    async def until(self, done, tag: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not await done():
            assert time.monotonic() < deadline, f"timed out writing {tag}"
            await self.put(tag)
            await asyncio.sleep(0.1)


async def reshard(client, stream: str, how: str) -> tuple[set[str], set[str]]:
    """Split the one shard, or merge the two: the parents and the children."""
    shards = (await client.list_shards(StreamName=stream))["Shards"]
    if how.startswith("split"):
        (parent,) = shards
        keys = parent["HashKeyRange"]
        middle = (int(keys["StartingHashKey"]) + int(keys["EndingHashKey"])) // 2
        await client.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"],
                                 NewStartingHashKey=str(middle))  # fmt: skip
    else:
        await client.merge_shards(StreamName=stream, ShardToMerge=shards[0]["ShardId"],
                                  AdjacentShardToMerge=shards[1]["ShardId"])  # fmt: skip
    await wait_active(client, stream)
    parents = {s["ShardId"] for s in shards}
    children = {s["ShardId"] for s in (await client.list_shards(StreamName=stream))["Shards"]
                if set(parents_of(s)) & parents}  # fmt: skip
    assert len(children) == (1 if how == "merge" else 2)
    return parents, children


async def old_rows(dynamodb: Emulator, table: str, children: list[str], parent: str) -> None:
    """The children's leases as a worker from before `start` makes them (without it)."""
    async with dynamodb_client(dynamodb) as ddb:
        for child in children:
            await ddb.put_item(TableName=table, Item={
                "shard_id": {"S": child}, "counter": {"N": "0"},
                "parents": {"L": [{"S": parent}]}})  # fmt: skip


@pytest.mark.parametrize("how", ["split", "merge", "split-old-rows"])
async def test_latest_a_reshard_after_the_start_loses_none_of_the_childrens_records(
    kinesis: Emulator, dynamodb: Emulator, how: str
):
    """split-old-rows: the children's leases are made by an older worker (no `start`),
    before the split (kinesis-local names shards in order): a sync marks them."""
    stream = await make_stream(kinesis, shards=2 if how == "merge" else 1, records=0)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    handled: Positions = defaultdict(set)

    async def handler(batch) -> None:
        for r in batch.records:
            handled[r.shard_id].add(r.position)

    worker = Worker(latest_config(kinesis, dynamodb, stream, table), handler=handler)
    task = asyncio.create_task(worker.serve())
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        writer = Writer(client, stream)
        try:
            first = {s["ShardId"] for s in (await client.list_shards(StreamName=stream))["Shards"]}

            async def parents_read() -> bool:
                assert not task.done(), task
                return all(handled[p] for p in first)

            await writer.until(parents_read, "before", 30)  # the mapping started: reading
            if how == "split-old-rows":
                (parent,) = first
                await old_rows(dynamodb, table, [f"shardId-{n:012d}" for n in (1, 2)], parent)
            parents, children = await reshard(client, stream, how)

            async def children_taken() -> bool:  # records flow to them all the while
                rows = {r.shard_id: r for r in await lease_rows(dynamodb, table)}
                return all(c in rows and rows[c].owner for c in children)

            await writer.until(children_taken, "gap", 60)
            # The take comes before the reader's iterator: written until each child's
            # reader has read something written after the take, then all of it read.
            gap_end = {c: max(writer.written[c]) for c in children}

            async def tail_read() -> bool:
                assert not task.done(), task
                return all(max(handled[c], default=0) > gap_end[c] for c in children)

            await writer.until(tail_read, "tail", 60)
            deadline = time.monotonic() + 60
            while not all(max(writer.written[c]) in handled[c] for c in children):
                assert time.monotonic() < deadline, "the tail was not read"
                await asyncio.sleep(0.1)
        finally:
            worker.request_exit()
            await task
    written = sum(len(writer.written[c]) for c in children)
    lost = {c: len(writer.written[c] - handled[c]) for c in sorted(children)}
    print(f"{how}: written to the children {written}, lost {lost}")
    assert lost == dict.fromkeys(sorted(children), 0), f"children's records lost: {lost}"
    rows = {r.shard_id: r for r in await lease_rows(dynamodb, table)}
    assert all(rows[p].checkpoint == "SHARD_END" for p in parents)
    # Decided when each lease was made: the parents were there at the start, the children not.
    assert {s: r.start for s, r in rows.items()} == {
        **dict.fromkeys(parents, "configured"), **dict.fromkeys(children, "oldest")}  # fmt: skip


async def test_dynamodb_latest_a_shard_made_after_the_start_is_read_from_its_oldest_record(
    dynamodb: Emulator,
):
    """moto's DynamoDB Streams cannot roll a shard over, so the rollover is the lease table's:
    the mapping has read (and ended) a shard before, and the stream's shard has no lease yet,
    as a new shard after a rollover. Its records written before the worker came are read."""
    table = await make_table(dynamodb)
    await put_items(dynamodb, table, "before")
    leases = f"leases-{uuid.uuid4().hex[:6]}"
    async with dynamodb_client(dynamodb) as ddb:  # the shard before the rollover, ended
        earlier = LeaseTable(ddb, leases, "earlier-worker")
        await earlier.ensure()
        await earlier.add_shard("shardId-rolled-over", ())
        (row,) = await earlier.all()
        await earlier.release(await earlier.checkpoint(await earlier.take(row), "SHARD_END"))
    cfg = ddb_config(dynamodb, table, leases)
    cfg = cfg.model_copy(update={"source": cfg.source.model_copy(
        update={"starting_position": "latest"})})  # fmt: skip
    handled: set[int] = set()

    async def handler(batch) -> None:
        handled.update(r.position for r in batch.records)

    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        deadline = time.monotonic() + 60
        while True:  # written until the reader reads what comes after its start
            assert time.monotonic() < deadline, "the worker read nothing written after it came"
            assert not task.done(), task
            written = await stream_positions(dynamodb, table)
            if handled and max(handled) == max(written):
                break
            await put_items(dynamodb, table, "t", count=5)
            await asyncio.sleep(0.5)
    finally:
        worker.request_exit()
        await task
    lost = len(set(written) - handled)
    print(f"dynamodb: written to the new shard {len(written)}, lost {lost}")
    assert lost == 0, f"{lost} of {len(written)} records of the new shard lost"
    starts = {r.shard_id: r.start for r in await lease_rows(dynamodb, leases)}
    assert starts.pop("shardId-rolled-over") == "configured"
    assert list(starts.values()) == ["oldest"]


async def split(client, stream: str, shard: dict) -> set[str]:
    """Split `shard` in the middle of its hash keys: its children."""
    keys = shard["HashKeyRange"]
    middle = (int(keys["StartingHashKey"]) + int(keys["EndingHashKey"])) // 2
    await client.split_shard(StreamName=stream, ShardToSplit=shard["ShardId"],
                             NewStartingHashKey=str(middle))  # fmt: skip
    await wait_active(client, stream)
    shards = (await client.list_shards(StreamName=stream))["Shards"]
    return {s["ShardId"] for s in shards if s.get("ParentShardId") == shard["ShardId"]}


async def test_latest_two_workers_starting_at_once_replay_no_earlier_reshard_and_lose_no_later(
    kinesis: Emulator, dynamodb: Emulator, tmp_path: Path
):
    """The stream was split before the mapping started ("yesterday"), records written to its
    open children since; two worker processes then do their first shard sync at once. The
    children there at the start keep `latest` (none of yesterday's records is replayed),
    and the grandchildren of a split after the start lose none of theirs."""
    stream = await make_stream(kinesis, shards=1, records=40)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        (root,) = (await client.list_shards(StreamName=stream))["Shards"]
        children = await split(client, stream, root)
        yesterday = Writer(client, stream)
        for _ in range(3):
            await yesterday.put("yesterday")
        config = write_config(tmp_path / "w.toml", kinesis, dynamodb, stream, table,
                              starting_position="latest")  # fmt: skip
        workers = [start(config, tmp_path), start(config, tmp_path)]
        writer = Writer(client, stream)
        try:

            async def running(shards: set[str]) -> bool:
                assert all(w.poll() is None for w in workers)
                return all(handled(tmp_path).get(s) for s in shards)

            await writer.until(lambda: running(children), "after", 60)
            rows = {r.shard_id: r for r in await lease_rows(dynamodb, table)}
            assert {s: r.start for s, r in rows.items()} == dict.fromkeys(
                {root["ShardId"], *children}, "configured")  # fmt: skip
            first_child = (await client.list_shards(StreamName=stream))["Shards"][1]
            grandchildren = await split(client, stream, first_child)

            async def taken() -> bool:
                rows = {r.shard_id: r for r in await lease_rows(dynamodb, table)}
                return all(g in rows and rows[g].owner for g in grandchildren)

            await writer.until(taken, "gap", 60)
            gap_end = {g: max(writer.written[g]) for g in grandchildren}

            async def tail_read() -> bool:
                return all(max(handled(tmp_path).get(g, [0])) > gap_end[g] for g in grandchildren)

            await writer.until(tail_read, "tail", 60)
            deadline = time.monotonic() + 60
            while not all(max(writer.written[g]) in handled(tmp_path).get(g, [])
                          for g in grandchildren):  # fmt: skip
                assert time.monotonic() < deadline, "the tail was not read"
                await asyncio.sleep(0.2)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            codes = [w.wait(60) for w in workers]
    assert codes == [0, 0]
    done = {s: set(p) for s, p in handled(tmp_path).items()}
    replayed = sum(len(yesterday.written[c] & done.get(c, set())) for c in children)
    lost = {g: len(writer.written[g] - done.get(g, set())) for g in sorted(grandchildren)}
    print(f"two workers: yesterday's records replayed {replayed}, grandchildren's lost {lost}")
    assert replayed == 0 and lost == dict.fromkeys(sorted(grandchildren), 0)
    rows = {r.shard_id: r for r in await lease_rows(dynamodb, table)}
    assert {g: rows[g].start for g in grandchildren} == dict.fromkeys(grandchildren, "oldest")
