"""`starting_position = "latest"`, shards with no checkpoint, on the real emulators
(kinesis-local for Kinesis, moto for DynamoDB Streams and the lease table): a worker killed
(kill -9) while the first batch it read of each shard is inside the handler, so before any
checkpoint of a handled record. A LATEST iterator is a place only in that worker's memory:
unless the start was made durable, the next owner finds no checkpoint, starts at the tip
again, and every record written since the first start is skipped for good.

"After the start" is measured from the first record the first worker handed out (the first
record of its first page): every record at or after it must be handled by the next owner.
Records written before the first worker's first page never reached the handler: they are
before the start, by the definition the Kafka fix uses (the start is its first durable
checkpoint), and are not to be read.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.integration.kafka_helpers import eventually
from tests.kinesis import test_dynamodb_workers as ddb_workers
from tests.kinesis.dynamodb_tables import client as dynamodb_client
from tests.kinesis.dynamodb_tables import make_table
from tests.kinesis.test_kinesis_source import lease_rows, make_stream
from tests.kinesis.test_kinesis_workers import handled, start, write_config

Written = dict[str, set[int]]  # shard -> positions written


def held(record_dir: Path, pid: int) -> dict[str, int]:
    """Per shard, the first position of the first batch held inside the handler."""
    path, out = record_dir / f"entered.{pid}", {}
    for line in path.read_text().splitlines() if path.exists() else []:
        _, shard, first, _ = line.split()
        out.setdefault(shard, int(first))
    return out


def owned_by(rows: list, pid: int) -> bool:
    return bool(rows) and all(r.owner and f"-{pid}-" in r.owner for r in rows)


async def put(kinesis: Emulator, stream: str, count: int, tag: str) -> Written:
    """`count` records over 40 partition keys (both shards); their positions by shard."""
    out: Written = defaultdict(set)
    entries = [{"Data": orjson.dumps({"key": f"{tag}{i % 40}", "seq": i}),
                "PartitionKey": f"d{i % 40}"} for i in range(count)]  # fmt: skip
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        for at in range(0, count, 500):
            result = await client.put_records(StreamName=stream, Records=entries[at : at + 500])
            assert result.get("FailedRecordCount", 0) == 0
            for r in result["Records"]:
                out[r["ShardId"]].add(int(r["SequenceNumber"]))
    return out


async def put_until(kinesis: Emulator, stream: str, done: Callable[[Written], bool],
                    tag: str, timeout_s: float = 60) -> Written:  # fmt: skip
    """Put 40 records a round (at most five rounds a second) until `done(written so far)`."""
    written: Written = defaultdict(set)
    deadline = time.monotonic() + timeout_s
    while not done(written):
        assert time.monotonic() < deadline, "timed out putting records"
        for shard, positions in (await put(kinesis, stream, 40, tag)).items():
            written[shard] |= positions
        await asyncio.sleep(0.2)
    return written


def test_latest_a_worker_killed_with_its_first_batches_inside_the_handler_loses_none(
    kinesis: Emulator, dynamodb: Emulator, tmp_path: Path
):
    stream = asyncio.run(make_stream(kinesis, shards=2, records=40))  # before any start
    table = f"leases-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "w.toml", kinesis, dynamodb, stream, table,
                          starting_position="latest")  # fmt: skip
    first = start(config, tmp_path, RECORD_HOLD_AFTER="0")
    try:
        # Written until a batch of each shard is inside the handler, then more after it.
        def both_held(_: Written) -> bool:
            return len(held(tmp_path, first.pid)) == 2

        written = asyncio.run(put_until(kinesis, stream, both_held, "a"))
        for shard, positions in asyncio.run(put(kinesis, stream, 200, "b")).items():
            written[shard] |= positions
        rows = asyncio.run(lease_rows(dynamodb, table))
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    starts = held(tmp_path, first.pid)
    assert not handled(tmp_path, first.pid), "the first batches were to be held"
    assert all(r.checkpoint is None for r in rows), "nothing was handled: nothing to commit"
    after_start = {s: {p for p in written[s] if p >= starts[s]} for s in starts}
    second = start(config, tmp_path)
    try:
        eventually(lambda: owned_by(asyncio.run(lease_rows(dynamodb, table)), second.pid), 30,
                   "the killed worker's leases to expire and move")  # fmt: skip

        def tail_read(tail: Written) -> bool:  # shards are read in order: all before it, too
            run2 = handled(tmp_path, second.pid)
            return len(tail) == 2 and all(tail[s] & set(run2[s]) for s in tail)

        asyncio.run(put_until(kinesis, stream, tail_read, "t"))
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    run2 = handled(tmp_path, second.pid)
    lost = {s: len(after_start[s] - set(run2[s])) for s in starts}
    print(f"written after the start {sum(map(len, after_start.values()))}, lost {lost}")
    assert lost == dict.fromkeys(starts, 0), f"records written after the start, lost: {lost}"
    assert {s: min(run2[s]) for s in starts} == starts  # and nothing from before it
    anchors = {r.shard_id: r.start_at for r in rows}
    assert anchors == {s: str(p) for s, p in starts.items()}  # the start, made durable


async def put_items(dynamodb: Emulator, table: str, tag: str, count: int = 25) -> None:
    """`count` new items (one BatchWriteItem: moto needs one write at a time)."""
    requests = [{"PutRequest": {"Item": {"device_id": {"S": f"{tag}-{uuid.uuid4().hex[:8]}"},
                                         "version": {"N": "0"}}}}
                for _ in range(count)]  # fmt: skip
    async with dynamodb_client(dynamodb) as ddb:
        answer = await ddb.batch_write_item(RequestItems={table: requests})
        assert not answer.get("UnprocessedItems")


async def stream_positions(dynamodb: Emulator, table: str) -> list[int]:
    """Every record of the table's stream (moto: one shard), from its trim horizon."""
    async with dynamodb_client(dynamodb) as ddb:
        arn = (await ddb.describe_table(TableName=table))["Table"]["LatestStreamArn"]
    async with get_session().create_client(
        "dynamodbstreams", region_name="us-east-1", endpoint_url=dynamodb.url
    ) as streams:
        (shard,) = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"]
        it = (
            await streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        out: list[int] = []
        while True:
            page = await streams.get_records(ShardIterator=it, Limit=1000)
            if not page["Records"]:
                return out
            out += [int(r["dynamodb"]["SequenceNumber"]) for r in page["Records"]]
            it = page["NextShardIterator"]


def test_dynamodb_latest_a_worker_killed_with_its_first_batch_inside_the_handler_loses_none(
    dynamodb: Emulator, tmp_path: Path
):
    table = asyncio.run(make_table(dynamodb))
    asyncio.run(put_items(dynamodb, table, "before"))  # before any start
    leases = f"leases-{uuid.uuid4().hex[:6]}"
    config = ddb_workers.write_config(tmp_path / "w.toml", dynamodb, table, leases,
                                      starting_position="latest")  # fmt: skip
    first = ddb_workers.start(config, tmp_path, RECORD_HOLD_AFTER="0")
    entered = tmp_path / f"entered.{first.pid}"
    try:
        deadline = time.monotonic() + 60
        while not entered.exists():  # written until a batch is inside the handler
            assert time.monotonic() < deadline, "no batch reached the handler"
            asyncio.run(put_items(dynamodb, table, "a"))
            time.sleep(0.2)
        for _ in range(4):
            asyncio.run(put_items(dynamodb, table, "b"))  # more, after the start
        rows = asyncio.run(lease_rows(dynamodb, leases))
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    _, shard, start_at, _ = entered.read_text().splitlines()[0].split()
    after_start = {p for p in asyncio.run(stream_positions(dynamodb, table)) if p >= int(start_at)}
    assert not ddb_workers.handled(tmp_path, first.pid), "the first batch was to be held"
    assert [r.checkpoint for r in rows] == [None], "nothing was handled: nothing to commit"
    second = ddb_workers.start(config, tmp_path)
    try:
        eventually(lambda: owned_by(asyncio.run(lease_rows(dynamodb, leases)), second.pid), 30,
                   "the killed worker's lease to expire and move")  # fmt: skip

        def tail_read() -> bool:  # the shard is read in order: all before it, too
            rows = ddb_workers.handled(tmp_path, second.pid)[shard]
            return any(device.startswith("t-") for _, device, _, _ in rows)

        deadline = time.monotonic() + 60
        while not tail_read():
            assert time.monotonic() < deadline, "the second worker read nothing"
            asyncio.run(put_items(dynamodb, table, "t"))
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    run2 = {p for p, *_ in ddb_workers.handled(tmp_path, second.pid)[shard]}
    lost = len(after_start - run2)
    print(f"written after the start {len(after_start)}, lost {lost}")
    assert lost == 0, f"{lost} records written after the start lost"
    assert min(run2) == int(start_at)  # and nothing from before it
    assert [r.start_at for r in rows] == [start_at]  # the start, made durable
