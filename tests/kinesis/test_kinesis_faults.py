"""What no emulator does: throttling, expired iterators and failed reads (injected); and
resharding."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, EndpointConnectionError

from scripts.emulators import Emulator
from tests.kinesis.test_kinesis_source import config, make_stream, wait_active
from worker.runtime.worker import Worker
from worker.sources.kinesis.source import KinesisSource

ROOT = Path(__file__).resolve().parents[2]


async def run_until(worker: Worker, done, timeout_s: float) -> None:
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            assert time.monotonic() < deadline, "timed out"
            assert not task.done(), task
            await asyncio.sleep(0.1)
    finally:
        worker.request_exit()
        await task


async def test_throttling_and_expired_iterators_are_ridden_out_without_loss_or_duplicates(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    stream = await make_stream(kinesis, shards=2, records=600)
    session = get_session()
    calls = {"calls": 0}
    faults = {2: "ProvisionedThroughputExceededException", 3: "LimitExceededException",
              5: "ExpiredIteratorException"}  # fmt: skip

    def inject(model, params, **kwargs):  # botocore's before-call hook
        calls["calls"] += 1
        code = faults.get(calls["calls"])
        if code:
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, "GetRecords")

    session.register("before-call.kinesis.GetRecords", inject)
    cfg = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}")
    seen: list[str] = []

    async def handler(batch) -> None:
        seen.extend(r.sequence_number for r in batch.records)

    worker = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    count_calls(worker, 2)
    await run_until(worker, lambda: len(seen) >= 600, 60)
    assert len(seen) == len(set(seen)) == 600  # nothing lost, nothing twice
    assert calls["calls"] > 5
    assert "event=throttled" in caplog.text
    assert calls_by(worker, "throttled") == 2 and calls_by(worker, "expired_iterator") == 1
    assert calls_by(worker, "ok") > 0


RESULTS = ("ok", "throttled", "expired_iterator", "error", "failed")


def count_calls(worker: Worker, shards: int) -> None:
    """Make worker_get_records_calls_total's series of every shard and result now, and keep
    them: a shard's series leave the registry when it leaves (at the latest, the stop),
    and the counts are read after that."""
    family = worker.source._m.get_records  # type: ignore[attr-defined]
    worker.kept_calls = {  # type: ignore[attr-defined]
        (n, result): family.labels("kinesis", f"shardId-{n:012d}", result)
        for n in range(shards)
        for result in RESULTS
    }


def calls_by(worker: Worker, result: str) -> float:
    """worker_get_records_calls_total of one result, over every shard."""
    kept = worker.kept_calls  # type: ignore[attr-defined]
    return sum(c.value for (_, r), c in kept.items() if r == result)


def client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": "injected"},
                "ResponseMetadata": {"HTTPStatusCode": status}}  # fmt: skip
    return ClientError(response, "GetRecords")


async def test_get_records_failures_that_may_pass_are_retried_without_loss_or_duplicates(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """InternalFailure (500), ServiceUnavailable (503) and a dropped connection
    (EndpointConnectionError) on the 2nd, 3rd and 5th GetRecords, raised by a botocore
    hook. The first version's reader died of the first, silently: the lease was still
    renewed, the worker stayed ready and the shard was never read again."""
    stream = await make_stream(kinesis, shards=2, records=600)
    session = get_session()
    calls = {"calls": 0}
    faults = {2: client_error("InternalFailure", 500), 3: client_error("ServiceUnavailable", 503),
              5: EndpointConnectionError(endpoint_url=kinesis.url)}  # fmt: skip

    def inject(model, params, **kwargs):  # botocore's before-call hook
        calls["calls"] += 1
        if (fault := faults.get(calls["calls"])) is not None:
            raise fault

    session.register("before-call.kinesis.GetRecords", inject)
    cfg = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}")
    seen: list[str] = []

    async def handler(batch) -> None:
        seen.extend(r.sequence_number for r in batch.records)

    worker = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    count_calls(worker, 2)
    await run_until(worker, lambda: len(seen) >= 600, 60)
    assert len(seen) == len(set(seen)) == 600  # nothing lost, nothing twice
    assert calls_by(worker, "error") == 3 and calls_by(worker, "ok") > 0
    assert caplog.text.count("event=read_retried") == 3


async def test_a_get_records_error_that_will_not_pass_makes_the_worker_not_ready_and_exit_1(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """AccessDeniedException on every GetRecords after the first (a policy changed under a
    running worker), raised by a botocore hook. The first version's reader died silently
    and the worker stayed ready for ever, renewing a lease it no longer read."""
    stream = await make_stream(kinesis, shards=1, records=50)
    session = get_session()
    calls = {"calls": 0}

    def deny(model, params, **kwargs):  # botocore's before-call hook
        calls["calls"] += 1
        if calls["calls"] > 1:
            raise client_error("AccessDeniedException", 400)

    session.register("before-call.kinesis.GetRecords", deny)
    cfg = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}")

    async def handler(batch) -> None:
        return None

    worker = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    count_calls(worker, 1)
    code = await asyncio.wait_for(worker.serve(), 30)
    crashed = worker.tasks.crashed
    assert code == 1
    assert crashed is not None and crashed.startswith("task kinesis reader shardId-")
    assert "AccessDeniedException" in crashed and worker.health.readiness() == (False, crashed)
    assert "event=read_failed" in caplog.text and calls_by(worker, "failed") == 1


async def test_split_and_merge_while_records_flow_keeps_per_key_order(
    kinesis: Emulator, dynamodb: Emulator
):
    stream = await make_stream(kinesis, shards=3, records=300, keys=30)
    cfg = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}")
    order: dict[str, list[int]] = defaultdict(list)

    async def handler(batch) -> None:
        for r in batch.records:
            body = r.json()
            order[body["key"]].append(body["seq"])

    async def reshard_then_write_more() -> None:
        async with get_session().create_client(
            "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
        ) as client:
            shards = (await client.list_shards(StreamName=stream))["Shards"]
            first = shards[0]["HashKeyRange"]
            middle = (int(first["StartingHashKey"]) + int(first["EndingHashKey"])) // 2
            await client.split_shard(StreamName=stream, ShardToSplit=shards[0]["ShardId"],
                                     NewStartingHashKey=str(middle))  # fmt: skip
            await wait_active(client, stream)
            await client.merge_shards(StreamName=stream, ShardToMerge=shards[1]["ShardId"],
                                      AdjacentShardToMerge=shards[2]["ShardId"])  # fmt: skip
            await wait_active(client, stream)
            entries = [
                {"Data": orjson.dumps({"key": f"d{i % 30}", "seq": 10 + i // 30}),
                 "PartitionKey": f"d{i % 30}"}
                for i in range(300)
            ]  # fmt: skip
            for start in range(0, 300, 100):
                await client.put_records(StreamName=stream, Records=entries[start : start + 100])

    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        deadline = time.monotonic() + 30
        while sum(map(len, order.values())) < 100:  # the parents are being read
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await reshard_then_write_more()
        deadline = time.monotonic() + 90
        while sum(map(len, order.values())) < 600:
            assert time.monotonic() < deadline, f"{sum(map(len, order.values()))} of 600"
            await asyncio.sleep(0.2)
    finally:
        worker.request_exit()
        await task
    for key, seqs in order.items():
        assert seqs == list(range(20)), f"{key}: {seqs}"  # children only after parents ended


async def test_records_given_up_go_to_a_kinesis_stream_as_envelopes(
    kinesis: Emulator, monkeypatch: pytest.MonkeyPatch
):
    """From a non-Kinesis source, the destination finds Kinesis by AWS's standard settings."""
    from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

    dlq = await make_stream(kinesis, shards=1, records=0)
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(10):
        broker.produce("t", b'{"i": %d}' % i, key=b"dev-%d" % i, partition=0)

    async def handler(batch) -> None:
        if any(r.offset == 7 for r in batch.records):
            raise ValueError("bad reading")

    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = {"errors": {"maximum_retry_attempts": 0, "on_failure": f"kinesis://{dlq}"}}
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=30)
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        (shard,) = (await client.list_shards(StreamName=dlq))["Shards"]
        iterator = (await client.get_shard_iterator(
            StreamName=dlq, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ))["ShardIterator"]  # fmt: skip
        (record,) = (await client.get_records(ShardIterator=iterator))["Records"]
    envelope = orjson.loads(record["Data"])
    assert record["PartitionKey"] == "dev-7"
    assert envelope["condition"] == "RetryAttemptsExhausted" and envelope["position"] == "7"
    assert envelope["error"] == {"type": "ValueError", "message": "bad reading"}
    assert __import__("base64").b64decode(envelope["data"]) == b'{"i": 7}'


def test_a_missing_stream_stops_the_start_with_one_error_line(
    kinesis: Emulator, dynamodb: Emulator, tmp_path
):
    """Start-up failures of the Kinesis source are one `error:` line (exit 1), no traceback."""
    import subprocess
    import sys

    (tmp_path / "w.toml").write_text(
        f'[source]\nkind = "kinesis"\nstream_name = "no-such-stream"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesis.url}"\nlease_endpoint_url = "{dynamodb.url}"\n'
        "[metrics]\nenabled = false\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(tmp_path / "w.toml")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-stream" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
