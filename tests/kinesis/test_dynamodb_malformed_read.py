"""A GetRecords record the DynamoDB source cannot place (no SequenceNumber), made by a
botocore after-call hook on moto's answer: the worker exits 1, not ready, with a line
naming the shard and the record's eventID, and handles and checkpoints none of the page."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.kinesis.dynamodb_tables import apply, config, history, make_table
from tests.kinesis.test_kinesis_source import checkpoints
from worker.runtime.worker import Worker
from worker.sources.dynamodb.source import DynamoDBSource


async def test_a_record_without_a_sequence_number_stops_the_worker_naming_it(
    dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    table, leases = await make_table(dynamodb), f"leases-{uuid.uuid4().hex[:6]}"
    await apply(dynamodb, table, history(items=4, changes=8))
    session = get_session()
    broken: list[str] = []

    def drop_sequence_number(parsed, **kwargs):  # botocore's after-call hook
        records = parsed.get("Records") or []
        if len(records) >= 3 and not broken:
            broken.append(records[2]["eventID"])
            del records[2]["dynamodb"]["SequenceNumber"]

    session.register("after-call.dynamodbstreams.GetRecords", drop_sequence_number)
    cfg = config(dynamodb, table, leases)
    handled: list[int] = []

    async def handler(batch) -> None:
        handled.extend(r.position for r in batch.records)

    worker = Worker(cfg, source=DynamoDBSource(cfg.source, session), handler=handler)
    code = await asyncio.wait_for(worker.serve(), 60)
    crashed = worker.tasks.crashed
    assert code == 1 and broken
    assert crashed is not None and "MalformedRecord" in crashed and broken[0] in crashed
    assert worker.health.readiness() == (False, crashed)
    assert handled == []  # nothing of the page
    assert not any((await checkpoints(dynamodb, leases)).values())
