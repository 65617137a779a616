"""The worker on a DynamoDB stream (moto's server), leases and checkpoints in DynamoDB too."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

from scripts.emulators import Emulator
from tests.kinesis.dynamodb_tables import apply, change_of, config, history, make_table
from tests.kinesis.test_kinesis_source import checkpoints
from worker.runtime.worker import Worker


async def test_2000_item_changes_are_handled_once_in_order_per_item_and_checkpointed(
    dynamodb: Emulator,
):
    table, leases = await make_table(dynamodb), f"leases-{uuid.uuid4().hex[:6]}"
    expected = history(items=200, changes=2000)
    await apply(dynamodb, table, expected)
    handled: dict[str, list[tuple[str, int]]] = defaultdict(list)
    last: dict[str, int] = {}

    async def handler(batch) -> None:
        for r in batch.records:
            device, event, version = change_of(r)
            handled[device].append((event, version))
        last[batch.partition] = batch.records[-1].position

    worker = Worker(config(dynamodb, table, leases), handler=handler)
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
