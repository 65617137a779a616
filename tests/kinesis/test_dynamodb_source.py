"""The worker on a DynamoDB stream (moto's server), leases and checkpoints in DynamoDB too."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import defaultdict

import orjson
import pytest

from scripts.emulators import Emulator
from tests.kinesis.dynamodb_tables import (
    apply,
    change_of,
    client,
    config,
    history,
    make_table,
    streams_client,
)
from tests.kinesis.test_kinesis_source import checkpoints
from worker.runtime.worker import Worker


@pytest.mark.parametrize("lanes", [1, 4])
async def test_2000_item_changes_are_handled_once_in_order_per_item_and_checkpointed(
    dynamodb: Emulator, lanes: int
):
    """With 4 key lanes, an item's changes share a lane (the key is its primary key)."""
    table, leases = await make_table(dynamodb), f"leases-{uuid.uuid4().hex[:6]}"
    expected = history(items=200, changes=2000)
    await apply(dynamodb, table, expected)
    handled: dict[str, list[tuple[str, int]]] = defaultdict(list)
    last: dict[str, int] = {}

    async def handler(batch) -> None:
        for r in batch.records:
            device, event, version = change_of(r)
            handled[device].append((event, version))
        last[batch.partition] = max(last.get(batch.partition, 0), batch.records[-1].position)

    cfg = config(dynamodb, table, leases, handler={"parallelization_factor": lanes})
    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + 90
    try:
        while True:
            total = sum(map(len, handled.values()))
            done = {s: str(p) for s, p in last.items()}
            if total >= 2000 and done and await checkpoints(dynamodb, leases) == done:
                break
            assert time.monotonic() < deadline, f"{total} handled, checkpoints behind"
            await asyncio.sleep(0.2)
    finally:
        worker.request_exit()
        await task
    assert dict(handled) == expected  # each change once, in order per item


async def wait_checkpointed(dynamodb: Emulator, leases: str, done, timeout_s: float = 60) -> None:
    """Until the lease table holds `done()`'s positions (shard -> last position)."""
    deadline = time.monotonic() + timeout_s
    while True:
        wanted = {s: str(p) for s, p in done().items()}
        if wanted and await checkpoints(dynamodb, leases) == wanted:
            return
        assert time.monotonic() < deadline, f"checkpoints {await checkpoints(dynamodb, leases)}"
        await asyncio.sleep(0.2)


async def run_to_the_end(worker: Worker, dynamodb: Emulator, leases: str, ends) -> None:
    """Run the worker until every shard is checkpointed at `ends`, then stop it."""
    task = asyncio.create_task(worker.serve())
    try:
        await wait_checkpointed(dynamodb, leases, lambda: ends)
    finally:
        worker.request_exit()
        await task


async def last_positions(dynamodb: Emulator, table: str) -> dict[str, int]:
    """Each shard's last sequence number, read from the stream itself."""
    async with streams_client(dynamodb) as s:
        arn = (await s.list_streams(TableName=table))["Streams"][0]["StreamArn"]
        out = {}
        for shard in (await s.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"]:
            it = (
                await s.get_shard_iterator(
                    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )
            )["ShardIterator"]
            while it:
                page = await s.get_records(ShardIterator=it)
                if not page["Records"]:
                    break
                out[shard["ShardId"]] = int(page["Records"][-1]["dynamodb"]["SequenceNumber"])
                it = page.get("NextShardIterator")
        return out


async def test_an_unchanged_lambda_dynamodb_handler_runs_and_its_failures_go_to_the_destination(
    dynamodb: Emulator, tmp_path
):
    """handlers/device_registry.py, written as for AWS, reports the changes it cannot read in
    batchItemFailures; after the retries they are in the on-failure file with the DynamoDB
    record as Lambda gave it, and the stream is checkpointed to its end."""
    table, leases = await make_table(dynamodb), f"leases-{uuid.uuid4().hex[:6]}"
    await apply(dynamodb, table, history(items=50, changes=200))
    async with client(dynamodb) as ddb:  # three devices get a firmware it cannot read
        for device in ("dev-007", "dev-021", "dev-042"):
            item = {"device_id": {"S": device}, "version": {"N": "99"}, "firmware": {"S": "bad"}}
            await ddb.put_item(TableName=table, Item=item)
    dlq = tmp_path / "dlq.jsonl"
    cfg = config(
        dynamodb, table, leases,
        handler={"target": "handlers.device_registry:lambda_handler", "style": "lambda"},
        errors={"maximum_retry_attempts": 1, "on_failure": f"file://{dlq}",
                "retry_backoff_ms": [10, 10]},
    )  # fmt: skip
    ends = await last_positions(dynamodb, table)
    await run_to_the_end(Worker(cfg), dynamodb, leases, ends)
    dead = [r for line in dlq.read_text().splitlines() for r in orjson.loads(line)["records"]]
    changes = [orjson.loads(base64.b64decode(r["value"])) for r in dead]
    bad = {c["dynamodb"]["Keys"]["device_id"]["S"] for c in changes
           if c["dynamodb"]["NewImage"]["firmware"]["S"] == "bad"}  # fmt: skip
    assert bad == {"dev-007", "dev-021", "dev-042"}
    for change, r in zip(changes, dead, strict=True):
        assert change["eventSource"] == "aws:dynamodb" and change["eventSourceARN"].startswith(
            "arn:aws:dynamodb:"
        )
        assert change["dynamodb"]["SequenceNumber"] == str(r["offset"])


async def test_a_filter_on_event_name_and_a_new_image_attribute_keeps_exactly_the_matches(
    dynamodb: Emulator,
):
    table, leases = await make_table(dynamodb), f"leases-{uuid.uuid4().hex[:6]}"
    expected = history(items=40, changes=400)
    await apply(dynamodb, table, expected)
    pattern = {"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"firmware": {"S": ["1.2"]}}}}
    kept: list[tuple[str, str, int]] = []

    async def handler(batch) -> None:
        kept.extend(change_of(r) for r in batch.records)

    cfg = config(dynamodb, table, leases, filter={"patterns": [orjson.dumps(pattern).decode()]},
                 metrics={"enabled": True, "listen": "127.0.0.1:0"})  # fmt: skip
    ends = await last_positions(dynamodb, table)
    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        await wait_checkpointed(dynamodb, leases, lambda: ends)
        (shard,) = ends
        filtered = worker.metrics.records_filtered.labels("dynamodb", shard).value
    finally:
        worker.request_exit()
        await task
    matching = sorted((d, e, v) for d, steps in expected.items() for e, v in steps
                      if e == "MODIFY" and v == 2)  # firmware "1.2"  # fmt: skip
    assert sorted(kept) == matching and len(matching) == 40
    assert filtered == 400 - len(matching)  # the rest: committed and counted, never invoked


async def test_tumbling_windows_count_every_change_once_on_a_dynamodb_stream(dynamodb: Emulator):
    """Lambda's tumbling windows by the changes' creation times: each window's final state
    counts its changes by eventName; over all windows every change counts once."""
    table, leases = await make_table(dynamodb), f"leases-{uuid.uuid4().hex[:6]}"
    expected = history(items=20, changes=200)
    await apply(dynamodb, table, expected)
    finals: list[dict[str, int]] = []

    def lambda_handler(event, context):  # as written for AWS's DynamoDB tumbling windows
        state = dict(event["state"] or {})
        for record in event["Records"]:
            state[record["eventName"]] = state.get(record["eventName"], 0) + 1
        if event["isFinalInvokeForWindow"]:
            finals.append(state)
        return {"state": state}

    cfg = config(dynamodb, table, leases, handler={"style": "lambda"},
                 batching={"tumbling_window_s": 1, "batch_size": 50})  # fmt: skip
    ends = await last_positions(dynamodb, table)
    await run_to_the_end(Worker(cfg, handler=lambda_handler), dynamodb, leases, ends)
    totals: dict[str, int] = defaultdict(int)
    for state in finals:
        for event, n in state.items():
            totals[event] += n
    want: dict[str, int] = defaultdict(int)
    for steps in expected.values():
        for event, _ in steps:
            want[event] += 1
    assert dict(totals) == dict(want)
