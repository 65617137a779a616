"""Lease-table faults on real parts (kinesis-local, moto): renewals that fail, and lease
writes whose calls and answers interleave. Every fault is injected with a botocore event
hook on the worker's own session (`tests/kinesis/hooks.py`); nothing else is faked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.integration.kafka_helpers import LONG
from tests.kinesis.hooks import LeaseCalls, hold, unreachable, write_kind
from tests.kinesis.test_kinesis_source import lease_rows, make_stream, wait_active
from worker.config import WorkerConfig
from worker.runtime.worker import Worker
from worker.sources.kinesis.leases import SHARD_END, Lease, LeaseLost, LeaseTable
from worker.sources.kinesis.source import KinesisSource


def lease_config(kinesis: Emulator, dynamodb: Emulator, stream: str, table: str,
                 lease_duration_s: float, batch_size: int = 100) -> WorkerConfig:  # fmt: skip
    return WorkerConfig.model_validate({
        "source": {"kind": "kinesis", "stream_name": stream, "region": "us-east-1",
                   "endpoint_url": kinesis.url, "lease_endpoint_url": dynamodb.url,
                   "lease_table": table, "lease_duration_s": lease_duration_s},
        "batching": {"batch_size": batch_size, "maximum_batching_window_ms": 50},
        "metrics": {"enabled": False},
    })  # fmt: skip


@dataclass
class Handled:
    worker: str
    shard: str
    position: int
    key: str
    seq: int
    started: float
    ended: float


def recorder(name: str, into: list[Handled], pause_s: float = 0.0) -> Callable:
    async def handle(batch) -> None:
        started = time.monotonic()
        if pause_s:
            await asyncio.sleep(pause_s)
        ended = time.monotonic()
        for r in batch.records:
            body = r.json()
            into.append(Handled(name, r.shard_id, r.position, body["key"], body["seq"],
                                started, ended))  # fmt: skip

    return handle


async def until(predicate: Callable[[], object], timeout_s: float, what: str,
                *running: asyncio.Task) -> None:  # fmt: skip
    """Wait for `predicate` (a function or a coroutine function); a worker task that ends
    meanwhile fails the wait at once, with its result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        for task in running:
            assert not task.done(), f"a worker ended while waiting for {what}: {task}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def the_lease(dynamodb: Emulator, table: str) -> Lease:
    (lease,) = await lease_rows(dynamodb, table)
    return lease


async def put(kinesis: Emulator, stream: str, count: int, first_seq: int, keys: int = 10) -> None:
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        entries = [{"Data": orjson.dumps({"key": f"d{i % keys}", "seq": first_seq + i // keys}),
                    "PartitionKey": f"d{i % keys}"} for i in range(count)]  # fmt: skip
        for start in range(0, count, 500):
            await client.put_records(StreamName=stream, Records=entries[start : start + 500])


async def stop(*workers: tuple[Worker, asyncio.Task]) -> list[int]:
    for worker, _ in workers:
        worker.request_exit()
    return [await asyncio.wait_for(task, 60) for _, task in workers]


async def test_renewals_that_fail_for_a_while_are_retried_and_the_lease_stays_put(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """Three renewals in a row fail as an unreachable lease table makes them fail
    (EndpointConnectionError from a botocore hook, raised to the caller as botocore does
    once its own retries are spent). The first version's coordinator died of the first:
    the lease stopped being renewed, and a second worker took it while the first went on
    reading it. Now the renewal is retried with backoff, the counter keeps moving, and
    the idle second worker never gets the lease."""
    stream = await make_stream(kinesis, shards=1, records=100, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3)
    failing = {"left": 0}

    async def before(kind: str, shard: str) -> None:
        if kind == "renew" and failing["left"] > 0:
            failing["left"] -= 1
            raise unreachable()

    session = get_session()
    LeaseCalls(session, before=before)
    handled: list[Handled] = []
    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=recorder("a", handled))
    b = Worker(cfg, handler=recorder("b", handled))
    ta = asyncio.create_task(a.serve())
    tb = None
    try:
        await until(lambda: len(handled) >= 100, 30, "the first records", ta)
        tb = asyncio.create_task(b.serve())
        await until(lambda: b.health.readiness()[0], 30, "the second worker", ta, tb)
        failing["left"] = 3
        await until(lambda: failing["left"] == 0, 10, "three failed renewals", ta, tb)
        counter = (await the_lease(dynamodb, table)).counter

        async def renewed_on() -> bool:
            lease = await the_lease(dynamodb, table)
            return lease.owner == a.source.worker_id and lease.counter >= counter + 4

        await until(renewed_on, 20, "four more renewals by the owner", ta, tb)
        await put(kinesis, stream, 100, first_seq=10)
        await until(lambda: len(handled) >= 200, 30, "the records written after", ta, tb)
    finally:
        await stop((a, ta), *([(b, tb)] if tb else []))
    assert {h.worker for h in handled} == {"a"}
    assert len({h.position for h in handled}) == len(handled) == 200
    assert caplog.text.count("event=lease_renewal_failed") == 3
    assert "event=lease_lost" not in caplog.text and "event=lease_lapsed" not in caplog.text


@pytest.mark.parametrize(
    "failing", [pytest.param("renewals", marks=LONG), "every lease-table call"]
)
async def test_a_worker_that_cannot_renew_stops_the_shard_and_exits_1_before_another_takes_it(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture, failing: str
):
    """From some point on, the first worker's renewals (or all its lease-table calls) fail
    for ever (EndpointConnectionError from a botocore hook). The first version's
    coordinator died, the worker stayed ready and read on, and once the lease expired a
    second worker read the same shard at the same time. Now the first worker gives the
    lease up before it can expire: it stops the shard, turns not ready and exits 1, and
    the second one takes over after its last handled batch, losing nothing."""
    stream = await make_stream(kinesis, shards=1, records=1000, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=6, batch_size=10)
    cut = asyncio.Event()

    def fail(params, model, **_) -> None:  # botocore's before-parameter-build hook
        if not cut.is_set():
            return
        if failing != "renewals" or (model.name == "UpdateItem" and write_kind(params) == "renew"):
            raise unreachable()

    session = get_session()
    session.register("before-parameter-build.dynamodb", fail)
    handled: list[Handled] = []
    a = Worker(cfg, source=KinesisSource(cfg.source, session),
               handler=recorder("a", handled, pause_s=0.1))  # fmt: skip
    b = Worker(cfg, handler=recorder("b", handled, pause_s=0.1))
    ta = asyncio.create_task(a.serve())
    tb = None
    try:

        async def checkpointed() -> bool:
            return len(handled) >= 50 and (await the_lease(dynamodb, table)).checkpoint is not None

        await until(checkpointed, 30, "a first checkpoint", ta)
        tb = asyncio.create_task(b.serve())
        await until(lambda: b.health.readiness()[0], 30, "the second worker", ta, tb)
        cut.set()
        code = await asyncio.wait_for(ta, 30)
        crashed = a.tasks.crashed
        await until(lambda: len({h.position for h in handled}) >= 1000, 60, "every record", tb)
    finally:
        if not ta.done():
            await stop((a, ta))
        if tb is not None:
            await stop((b, tb))
    assert code == 1
    assert crashed is not None and crashed.startswith("task kinesis lease shardId-")
    assert "LeaseLapsed" in crashed and a.health.readiness() == (False, crashed)
    assert "event=lease_lapsed" in caplog.text
    by_a = [h for h in handled if h.worker == "a"]
    by_b = [h for h in handled if h.worker == "b"]
    assert by_a and by_b, "the fault came too late to test anything"
    assert max(h.ended for h in by_a) < min(h.started for h in by_b)  # never both at once
    for rows in (by_a, by_b):
        assert [h.position for h in rows] == sorted(h.position for h in rows)
    assert len({h.position for h in handled}) == 1000  # nothing lost


async def test_a_checkpoint_answered_after_a_renewal_leaves_the_lease_owned_and_read(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """Records trickle in, so checkpoints are written all the time. A botocore hook holds
    back the table's answer to the first checkpoint sent less than a second before a
    renewal is due (after the table applied it) until a renewal has been answered, or
    for a second past the renewal's due time. The first version then stored the
    checkpoint's stale copy of the lease over the renewal's, the next renewal failed,
    and the lone worker dropped the shard the table still said it owned and never read
    it again. Now the lease's writes go one at a time and each stores the table's
    answer: the renewal waits for the checkpoint, and the shard is read on."""
    stream = await make_stream(kinesis, shards=1, records=10, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=9)
    interval_s = 9 / 3
    renewed = asyncio.Event()
    held = asyncio.Event()
    sent = {"renewal": 0.0}
    renewals_after = {"ok": 0}

    async def before(kind: str, shard: str) -> None:
        if kind == "renew":
            sent["renewal"] = time.monotonic()

    async def after(kind: str, shard: str, status: int) -> None:
        if kind == "renew" and status == 200:
            renewed.set()
            renewals_after["ok"] += held.is_set()
            return
        due_in = sent["renewal"] + interval_s - time.monotonic()
        if kind == "checkpoint" and sent["renewal"] and 0.1 < due_in < 1.0 and not held.is_set():
            renewed.clear()
            await hold(renewed, due_in + 1.0)  # shorter than a lease write may take
            held.set()

    session = get_session()
    LeaseCalls(session, before=before, after=after)
    handled: list[Handled] = []
    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=recorder("a", handled))
    ta = asyncio.create_task(a.serve())

    async def trickle() -> None:
        for i in range(1, 80):
            await put(kinesis, stream, 10, first_seq=i)
            await asyncio.sleep(0.1)

    writer = asyncio.create_task(trickle())
    try:
        await until(held.is_set, 30, "a checkpoint answered late", ta)
        await until(lambda: renewals_after["ok"] >= 2, 20, "two renewals after it", ta)
        await writer
        await until(lambda: len(handled) >= 800, 30, "every record written", ta)
    finally:
        writer.cancel()
        await stop((a, ta))
    assert len({h.position for h in handled}) == len(handled) == 800
    assert "event=lease_lost" not in caplog.text


async def test_a_renewal_overlapping_a_closed_shards_last_checkpoint_still_ends_the_shard(
    kinesis: Emulator, dynamodb: Emulator
):
    """A closed parent shard's only batch is handled while a renewal of its lease is held
    back by a botocore hook (before it is sent) until the batch's checkpoint is answered,
    at most 1 s. The first version's renewal then answered with its copy of the lease
    from before the checkpoint, put it back, and the shard never reached SHARD_END: its
    children never started. Now the checkpoint waits for the renewal, the shard ends and
    the children's records are handled after the parent's, in order per key."""
    stream = await make_stream(kinesis, shards=1, records=20, keys=10)
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        (parent,) = (await client.list_shards(StreamName=stream))["Shards"]
        hashes = parent["HashKeyRange"]
        middle = (int(hashes["StartingHashKey"]) + int(hashes["EndingHashKey"])) // 2
        await client.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"],
                                 NewStartingHashKey=str(middle))  # fmt: skip
        await wait_active(client, stream)
    await put(kinesis, stream, 40, first_seq=2)
    parent_id = parent["ShardId"]
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=6)
    batch_started, renewal_held, checkpointed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def before(kind: str, shard: str) -> None:
        first = batch_started.is_set() and not renewal_held.is_set()
        if kind == "renew" and shard == parent_id and first:
            renewal_held.set()
            await hold(checkpointed, 1.0)

    async def after(kind: str, shard: str, status: int) -> None:
        if kind == "checkpoint" and shard == parent_id and status == 200:
            checkpointed.set()

    session = get_session()
    LeaseCalls(session, before=before, after=after)
    handled: list[Handled] = []
    record = recorder("a", handled)

    async def handler(batch) -> None:
        if batch.records[0].shard_id == parent_id and not batch_started.is_set():
            batch_started.set()
            await asyncio.wait_for(renewal_held.wait(), 10)  # a renewal is on its way
        await record(batch)

    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    ta = asyncio.create_task(a.serve())

    async def parent_ended() -> bool:
        leases = {lease.shard_id: lease for lease in await lease_rows(dynamodb, table)}
        return parent_id in leases and leases[parent_id].checkpoint == SHARD_END

    try:
        await until(lambda: len(handled) >= 20, 30, "the parent's records", ta)
        await until(parent_ended, 30, "the parent to end", ta)
        await until(lambda: len(handled) >= 60, 30, "the children's records", ta)
    finally:
        await stop((a, ta))
    assert renewal_held.is_set()
    per_key: dict[str, list[int]] = {}
    for h in handled:
        per_key.setdefault(h.key, []).append(h.seq)
    assert all(seqs == list(range(6)) for seqs in per_key.values()), per_key


async def test_a_shard_being_drained_does_not_keep_the_other_leases_from_being_renewed(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """Another worker (the test) asks for one shard's lease while its handler is inside
    a batch that does not end until the test says so, so the hand-off drains that shard,
    waiting for the batch (up to rebalance_timeout_s = 15). The first version awaited
    a drain inside its one renewal loop: meanwhile the worker's other lease went
    unrenewed and expired. Now each lease has its own keeper: the other lease is renewed
    all along."""
    caplog.set_level(logging.INFO, logger="worker.source.kinesis")
    stream = await make_stream(kinesis, shards=2, records=200, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    base = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3)
    runtime = base.runtime.model_copy(update={"rebalance_timeout_s": 15})
    cfg = base.model_copy(update={"runtime": runtime})
    wedged_shard: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    handled: list[Handled] = []
    record = recorder("a", handled)

    async def handler(batch) -> None:
        shard = batch.records[0].shard_id
        if not wedged_shard and any(h.shard == shard for h in handled):
            wedged_shard.append(shard)  # its first batch is committed; the next one wedges
        if wedged_shard == [shard]:
            entered.set()
            await asyncio.wait_for(gate.wait(), 30)
        await record(batch)

    a = Worker(cfg, handler=handler)
    ta = asyncio.create_task(a.serve())
    try:
        await until(entered.is_set, 30, "a wedged batch", ta)
        async with get_session().create_client(
            "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
        ) as client:
            asker = LeaseTable(client, table, "asker")
            for _ in range(5):  # a renewal may move the counter between the read and the ask
                leases = {lease.shard_id: lease for lease in await asker.all()}
                with contextlib.suppress(LeaseLost):
                    await asker.ask(leases[wedged_shard[0]])
                    break
        (other,) = set(leases) - set(wedged_shard)
        await until(lambda: "event=lease_handoff_started" in caplog.text, 10, "the drain", ta)
        counter = leases[other].counter

        async def other_renewed() -> bool:
            rows = {lease.shard_id: lease for lease in await lease_rows(dynamodb, table)}
            return rows[other].owner == a.source.worker_id and rows[other].counter >= counter + 4

        await until(other_renewed, 8, "the other lease to be renewed during the drain", ta)
        assert not gate.is_set() and a.partition(wedged_shard[0]) is None  # still draining
    finally:
        gate.set()
        await stop((a, ta))


async def test_a_hand_off_the_owner_does_not_answer_is_taken_by_force_after_the_timeout(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """The owner of both leases is the test itself: it renews them every second but never
    hands one over (an owner of an older version that does not know the protocol, or a
    stuck one). The joining worker asks for one, waits `handoff_timeout_s`, takes it by
    force and reads it; the owner's next renewal of that lease is refused."""
    caplog.set_level(logging.INFO, logger="worker.source.kinesis")
    stream = await make_stream(kinesis, shards=2, records=100, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    base = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3)
    cfg = base.model_copy(update={"source": base.source.model_copy(
        update={"handoff_timeout_s": 4.0})})  # fmt: skip
    async with get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
    ) as client:
        old = LeaseTable(client, table, "old-owner")
        await old.ensure()
        async with get_session().create_client(
            "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
        ) as kinesis_client:
            shards = (await kinesis_client.list_shards(StreamName=stream))["Shards"]
        for shard in shards:
            await old.add_shard(shard["ShardId"], ())
        held = {lease.shard_id: await old.take(lease) for lease in await old.all()}
        refused: list[str] = []

        async def renew_for_ever() -> None:
            while True:
                await asyncio.sleep(1.0)
                for shard_id, lease in list(held.items()):
                    try:
                        held[shard_id] = await old.renew(lease)
                    except LeaseLost:
                        refused.append(shard_id)
                        del held[shard_id]

        renewer = asyncio.create_task(renew_for_ever())
        handled: list[Handled] = []
        b = Worker(cfg, handler=recorder("b", handled))
        tb = asyncio.create_task(b.serve())
        try:
            await until(lambda: "event=lease_handoff_asked" in caplog.text, 20, "an ask", tb)
            asked_at = time.monotonic()
            await until(lambda: refused, 20, "the forced take to fence the old owner", tb)
            waited_s = time.monotonic() - asked_at
            (taken,) = refused
            await until(lambda: {h.shard for h in handled} == {taken}, 20, "its records", tb)
        finally:
            renewer.cancel()
            await stop((b, tb))
    assert "reason=force" in caplog.text
    assert waited_s >= 4.0 - 1.5  # not before the timeout (less a round and a renewal)
    assert len(held) == 1  # the other lease stayed with its owner
