"""The worker on Kinesis (kinesis-local) with leases and checkpoints in DynamoDB (moto)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from worker.config import WorkerConfig
from worker.observe.watchdog import EXIT_STALLED
from worker.runtime.worker import Worker
from worker.sources.kinesis.leases import Lease, LeaseTable

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"


async def make_stream(kinesis: Emulator, shards: int, records: int, keys: int = 40) -> str:
    stream = f"telemetry-{uuid.uuid4().hex[:6]}"
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        await client.create_stream(StreamName=stream, ShardCount=shards)
        await wait_active(client, stream)
        seq: dict[int, int] = defaultdict(int)
        entries = []
        for i in range(records):
            k = i % keys
            entries.append({"Data": orjson.dumps({"key": f"d{k}", "seq": seq[k]}),
                            "PartitionKey": f"d{k}"})  # fmt: skip
            seq[k] += 1
        for start in range(0, len(entries), 500):
            result = await client.put_records(
                StreamName=stream, Records=entries[start : start + 500]
            )
            assert result.get("FailedRecordCount", 0) == 0
    return stream


def config(
    kinesis: Emulator, dynamodb: Emulator, stream: str, table: str, **handler: object
) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "source": {
                "kind": "kinesis",
                "stream_name": stream,
                "region": "us-east-1",
                "endpoint_url": kinesis.url,
                "lease_endpoint_url": dynamodb.url,
                "lease_table": table,
                "lease_duration_s": 3,
            },
            "batching": {"batch_size": 100, "maximum_batching_window_ms": 50},
            "handler": handler,
            "metrics": {"enabled": False},
        }
    )


async def wait_active(client, stream: str) -> None:
    for _ in range(100):
        summary = await client.describe_stream_summary(StreamName=stream)
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("stream did not become ACTIVE")


async def lease_rows(dynamodb: Emulator, table: str) -> list[Lease]:
    """The lease table as it is now; empty if no worker has created it yet."""
    async with get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
    ) as client:
        try:
            return await LeaseTable(client, table, "reader").all()
        except client.exceptions.ResourceNotFoundException:
            return []


async def checkpoints(dynamodb: Emulator, table: str) -> dict[str, str | None]:
    return {lease.shard_id: lease.checkpoint for lease in await lease_rows(dynamodb, table)}


async def test_4000_records_over_4_shards_are_handled_once_in_order_and_checkpointed(
    kinesis: Emulator, dynamodb: Emulator
):
    stream = await make_stream(kinesis, shards=4, records=4000)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    handled: dict[str, list[tuple[int, str, int]]] = defaultdict(list)

    async def handler(batch) -> None:
        for r in batch.records:
            reading = r.json()
            handled[r.shard_id].append((r.position, reading["key"], reading["seq"]))

    worker = Worker(config(kinesis, dynamodb, stream, table), handler=handler)
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + 90
    try:
        while True:
            total = sum(map(len, handled.values()))
            last = {s: str(rows[-1][0]) for s, rows in handled.items() if rows}
            if total >= 4000 and await checkpoints(dynamodb, table) == last and len(last) == 4:
                break
            assert time.monotonic() < deadline, f"{total} handled, checkpoints behind"
            await asyncio.sleep(0.2)
    finally:
        worker.request_exit()
        await task
    assert sum(map(len, handled.values())) == 4000  # each once
    per_key: dict[str, list[int]] = defaultdict(list)
    for rows in handled.values():
        positions = [p for p, _, _ in rows]
        assert positions == sorted(positions)  # per-shard order
        for _, key, seq in rows:
            per_key[key].append(seq)
    assert all(seqs == list(range(len(seqs))) for seqs in per_key.values())


async def test_a_lambda_kinesis_handler_gets_the_documented_event_and_partial_failures_work(
    kinesis: Emulator, dynamodb: Emulator
):
    stream = await make_stream(kinesis, shards=1, records=30)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    events: list[dict] = []

    def lambda_handler(event, context):  # written for AWS: base64 data, sequence numbers
        events.append(event)
        failures = []
        for record in event["Records"]:
            body = orjson.loads(__import__("base64").b64decode(record["kinesis"]["data"]))
            if body["seq"] == 0 and len(events) == 1:  # fails once
                failures.append({"itemIdentifier": record["kinesis"]["sequenceNumber"]})
        return {"batchItemFailures": failures}

    worker = Worker(
        config(kinesis, dynamodb, stream, table, style="lambda"), handler=lambda_handler
    )
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + 60
    try:
        while sum(len(e["Records"]) for e in events) < 30 + 1 or not (
            set((await checkpoints(dynamodb, table)).values()) - {None}
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        worker.request_exit()
        await task
    record = events[0]["Records"][0]
    assert set(record) == {"kinesis", "eventSource", "eventVersion", "eventID", "eventName",
                           "invokeIdentityArn", "awsRegion", "eventSourceARN"}  # fmt: skip
    assert set(record["kinesis"]) == {"kinesisSchemaVersion", "partitionKey", "sequenceNumber",
                                      "data", "approximateArrivalTimestamp"}  # fmt: skip
    assert record["eventSource"] == "aws:kinesis" and record["eventName"] == "aws:kinesis:record"
    assert record["eventID"] == f"shardId-000000000000:{record['kinesis']['sequenceNumber']}"
    assert isinstance(record["kinesis"]["approximateArrivalTimestamp"], float)
    first_seq = next(r for r in events[0]["Records"] if r["kinesis"]["partitionKey"] == "d0")
    retried = events[1]["Records"][0]["kinesis"]["sequenceNumber"]
    assert retried == first_seq["kinesis"]["sequenceNumber"]  # Lambda's rule: from it on


async def test_the_same_handler_module_runs_unchanged_on_kafka_and_on_kinesis(
    kinesis: Emulator, dynamodb: Emulator, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # tests/integration/recording_handler.py is the Kafka suite's handler, used as it is.
    monkeypatch.setenv("RECORD_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(INTEGRATION))
    stream = await make_stream(kinesis, shards=2, records=200)
    cfg = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}",
                 target="recording_handler:handle")  # fmt: skip
    worker = Worker(cfg)
    task = asyncio.create_task(worker.serve())

    def lines() -> list[str]:
        return [ln for p in tmp_path.glob("handled.*") for ln in p.read_text().splitlines()]

    deadline = time.monotonic() + 60
    try:
        while len(lines()) < 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        worker.request_exit()
        await task
    keys = {line.split()[2] for line in lines()}
    assert len(lines()) == 200 and keys == {f"d{k}" for k in range(40)}


async def test_a_worker_whose_lease_is_taken_over_stops_and_the_new_owner_resumes(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    stream = await make_stream(kinesis, shards=1, records=300)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    gate = asyncio.Event()
    first_run: list[int] = []

    async def slow(batch) -> None:
        first_run.extend(r.position for r in batch.records)
        if len(first_run) > 100:  # the first batch is done and committed; the next wedges
            await gate.wait()  # while its lease is taken over

    a = Worker(config(kinesis, dynamodb, stream, table), handler=slow)
    task = asyncio.create_task(a.serve())
    try:
        deadline = time.monotonic() + 30
        while len(first_run) < 100 or not any((await checkpoints(dynamodb, table)).values()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        good = await checkpoints(dynamodb, table)
        (shard_id,) = good
        shard_gauge = {"source": "kinesis", "partition": shard_id}
        sample = a.metrics.registry.get_sample_value
        assert sample("worker_behind_latest_seconds", shard_gauge) is not None
        async with get_session().create_client(
            "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
        ) as client:
            thief = LeaseTable(client, table, "worker-b")
            (lease,) = await thief.all()
            await thief.take(lease)  # worker B takes the shard over
        gate.set()  # A finishes its batch and tries to commit: it must be refused
        deadline = time.monotonic() + 30
        while "event=lease_lost" not in caplog.text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await checkpoints(dynamodb, table) == good  # A wrote nothing after losing it
        assert a.partition_stats() == []  # and stopped the shard
        assert sample("worker_behind_latest_seconds", shard_gauge) is None  # gone with it
    finally:
        a.request_exit()
        await task
    # A new worker (B's lease expires, as if B had died) continues from the last good checkpoint.
    second_run: list[int] = []

    async def fast(batch) -> None:
        second_run.extend(r.position for r in batch.records)

    (checkpoint,) = good.values()
    after = sorted({p for p in first_run if p > int(checkpoint)})
    assert after, "A had handled (but could not commit) records past the checkpoint"
    b = Worker(config(kinesis, dynamodb, stream, table), handler=fast)
    task = asyncio.create_task(b.serve())
    try:
        deadline = time.monotonic() + 60
        while len(second_run) < len(after):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        b.request_exit()
        await task
    # B redoes exactly what A could not commit, from right after the last good checkpoint.
    assert second_run == after


async def test_the_commit_watchdog_trips_on_a_wedged_shard(kinesis: Emulator, dynamodb: Emulator):
    """Kinesis counts no record lag; the first version reset the watchdog whenever the lag
    was falsy, so a shard whose handler wedged was never reported. The partition's own
    unfinished records (and the time behind the tip) say that records wait."""
    stream = await make_stream(kinesis, shards=1, records=50)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    entered = asyncio.Event()

    async def wedged(batch) -> None:
        entered.set()
        await asyncio.Event().wait()  # well inside its timeout, for ever

    base = config(kinesis, dynamodb, stream, table, timeout_s=3600)
    runtime = base.runtime.model_copy(update={"stall_timeout_s": 1.5, "shutdown_timeout_s": 0.2})
    w = Worker(base.model_copy(update={"runtime": runtime}), handler=wedged)
    code = await asyncio.wait_for(w.serve(), timeout=60)
    assert entered.is_set()
    assert code == EXIT_STALLED
    assert w.watchdog.stalled is not None and "shardId-" in w.watchdog.stalled
