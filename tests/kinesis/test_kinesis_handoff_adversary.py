"""Adversarial checks of the graceful lease hand-off (kinesis-local, moto): askers that
shut down, final checkpoints that fail during a hand-off. Faults are injected with
botocore event hooks (`tests/kinesis/hooks.py`) and by lease writes the test makes as
another worker; nothing of the emulators is faked."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.kinesis.hooks import LeaseCalls, hold, unreachable
from tests.kinesis.test_kinesis_lease_faults import (
    Handled,
    lease_config,
    put,
    recorder,
    stop,
    the_lease,
    until,
)
from tests.kinesis.test_kinesis_shutdown_and_fencing import as_another_worker, gated
from tests.kinesis.test_kinesis_source import lease_rows, make_stream
from worker.runtime.worker import Worker
from worker.sources.kinesis.leases import LeaseLost, LeaseTable
from worker.sources.kinesis.source import KinesisSource


@pytest.mark.xfail(
    strict=False,
    reason="known, open: a worker's shutdown does not withdraw "
    "its own hand-off requests, so the shard waits a lease duration",
)
async def test_an_asker_that_shut_down_cleanly_is_not_handed_the_lease(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """Worker A owns both shards and is inside a batch of each; worker B starts, asks A
    for one lease (for balance), and is told to stop right after its request is written.
    B shuts down cleanly (exit 0, shutdown_complete) while A drains. A then hands the
    lease over to B, which is gone: it never withdrew its request, and its last
    confirmation is younger than lease_duration_s. The shard then belongs to a worker
    that no longer exists and stands still until the lease expires (a lease duration and
    a round more: 10-15 s with the defaults), although B's shutdown was graceful and
    could have called the request off. Expected: no lease names B once B has exited."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=2, records=20, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3, batch_size=10)
    slow, gate = asyncio.Event(), asyncio.Event()
    entered: set[str] = set()
    handled: list[Handled] = []
    record = recorder("a", handled)

    async def handler(batch) -> None:
        if slow.is_set():
            entered.add(batch.records[0].shard_id)
            await asyncio.wait_for(gate.wait(), 30)
        await record(batch)

    a = Worker(cfg, handler=handler)
    ta = asyncio.create_task(a.serve())
    asked = asyncio.Event()

    async def after(kind: str, shard: str, status: int) -> None:
        if kind == "ask" and status == 200:
            asked.set()

    session = get_session()
    LeaseCalls(session, after=after)
    b = Worker(cfg, source=KinesisSource(cfg.source, session), handler=recorder("b", handled))
    tb: asyncio.Task | None = None
    owners_after_b: set[str | None] = set()
    try:
        await until(lambda: len(handled) >= 20, 30, "the first records", ta)
        slow.set()
        await put(kinesis, stream, 40, first_seq=100)
        await until(lambda: len(entered) == 2, 30, "a batch in flight on each shard", ta)
        tb = asyncio.create_task(b.serve())
        await until(asked.is_set, 20, "B's request", ta, tb)
        b.request_exit()
        assert await asyncio.wait_for(tb, 30) == 0
        b_id = b.source.worker_id
        gate.set()  # A's drain ends now, after B is gone
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            owners_after_b |= {lease.owner for lease in await lease_rows(dynamodb, table)}
            await asyncio.sleep(0.1)
    finally:
        gate.set()
        if tb is not None and not tb.done():
            await stop((b, tb))
        await stop((a, ta))
    assert b_id not in owners_after_b, (
        f"the lease was handed to {b_id}, which had already shut down"
    )


async def test_a_hand_off_whose_final_checkpoint_fails_hands_over_at_the_last_good_one(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """Measuring the claim "a hand-off hands the lease over even when its final
    checkpoint failed (duplicates only)": an asker (the test, confirming its request
    every half second) asks while the owner is inside its second batch; once the hand-off
    started, every checkpoint fails as an unreachable table makes it fail. The lease goes
    to the asker at a checkpoint that is never past handled work; what was handled past
    it (the drained batch) is what the next owner redoes."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=1, records=40, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3, batch_size=10)
    handing = asyncio.Event()
    failed: list[str] = []

    async def before(kind: str, shard: str) -> None:
        if kind == "checkpoint" and handing.is_set():
            failed.append(kind)
            raise unreachable()

    session = get_session()
    LeaseCalls(session, before=before)
    entered, gate, abandoned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[Handled] = []
    handler = gated(recorder("a", handled), lambda n: n == 2, entered, gate, abandoned)
    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    ta = asyncio.create_task(a.serve())

    async def confirm() -> None:
        async with get_session().create_client(
            "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
        ) as client:
            asker = LeaseTable(client, table, "asker")
            while True:
                await asyncio.sleep(0.5)
                try:
                    await asker.still_asking(await the_lease(dynamodb, table))
                except LeaseLost:
                    return

    confirming = None
    try:
        await until(entered.is_set, 30, "the second batch in flight", ta)
        await as_another_worker(dynamodb, table, "asker", "ask")
        confirming = asyncio.create_task(confirm())
        await until(lambda: "event=lease_handoff_started" in caplog.text, 10, "the hand-off", ta)
        handing.set()
        gate.set()
        await until(lambda: "event=lease_handed_off" in caplog.text, 15, "the hand-over", ta)
    finally:
        gate.set()
        if confirming is not None:
            confirming.cancel()
        await stop((a, ta))
    lease = await the_lease(dynamodb, table)
    positions = sorted(h.position for h in handled)
    redone = [p for p in positions if lease.checkpoint is None or p > int(lease.checkpoint)]
    print(
        f"checkpoint={lease.checkpoint} handled={len(handled)} redone_by_next={len(redone)} "
        f"failed_checkpoints={len(failed)}"
    )
    assert (lease.owner, lease.pending) == ("asker", None)
    assert failed and "event=final_commit_failed" in caplog.text
    assert lease.checkpoint is not None and int(lease.checkpoint) <= positions[-1]
    assert len(redone) == 10  # the drained batch, and only it


async def test_a_hand_off_does_not_hand_over_while_an_abandoned_thread_is_inside_a_batch(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """A plain (thread) handler is inside its second batch for 4 s when an asker (the
    test, confirming its request) asks; rebalance_timeout_s is 1 s. The drain abandons
    the batch at its deadline, but a thread cannot be stopped: it runs on. The hand-off
    then hands the lease over at once, so the new owner may start the shard from the
    last checkpoint while the old owner's thread is still inside a batch of it: two
    workers inside batches of one shard at once (the README promises that within one
    worker a partition waits for its overrunning thread). Expected: the lease is not
    handed over (nor released) while a call of the shard is still running; the worker
    may fail stop (exit 3) instead, leaving the lease to expire."""
    import threading

    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=1, records=40, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    base = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3, batch_size=10)
    from tests.kinesis.test_kinesis_shutdown_and_fencing import with_runtime

    cfg = with_runtime(base, rebalance_timeout_s=1)
    inside, entered, returned = threading.Event(), threading.Event(), threading.Event()
    count = {"n": 0}

    def handler(batch) -> None:
        count["n"] += 1
        if count["n"] == 2:
            inside.set()
            entered.set()
            try:
                time.sleep(4)
            finally:
                inside.clear()
                returned.set()

    a = Worker(cfg, handler=handler)
    ta = asyncio.create_task(a.serve())

    async def confirm() -> None:
        async with get_session().create_client(
            "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
        ) as client:
            asker = LeaseTable(client, table, "asker")
            while True:
                await asyncio.sleep(0.5)
                try:
                    await asker.still_asking(await the_lease(dynamodb, table))
                except LeaseLost:
                    return

    confirming = None
    overlap = None
    try:
        await until(entered.is_set, 30, "the second batch in flight", ta)
        await as_another_worker(dynamodb, table, "asker", "ask")
        confirming = asyncio.create_task(confirm())

        # Until the thread has returned, the lease must stay with its owner (held, or
        # left to expire by a worker that failed stop).
        overlap = False
        deadline = time.monotonic() + 15
        while not returned.is_set():
            assert time.monotonic() < deadline, "the thread never returned"
            lease = await the_lease(dynamodb, table)
            overlap = overlap or (lease.owner != a.source.worker_id and inside.is_set())
            await asyncio.sleep(0.05)
        assert not ta.done() or ta.result() == 3  # held, or failed stop
    finally:
        if confirming is not None:
            confirming.cancel()
        await asyncio.to_thread(lambda: time.sleep(0) or None)
        await stop((a, ta))
    assert not overlap, "the lease left its owner while its thread was inside a batch of it"


@pytest.mark.xfail(
    strict=False,
    reason="known, open: a lost answer to a hand-over that "
    "landed is logged and counted as a lost lease (nothing unsafe)",
)
async def test_a_hand_over_whose_answer_is_lost_is_reported_as_handed_off(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """The hand-over write is applied by the table but its answer is lost (a hook raises
    the connection error after the call). The retry is refused (the asker owns it now);
    the owner logs lease_handoff_failed and then lease_lost (counted as a loss, its
    batches 'abandoned'), although the hand-off did exactly what it should."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=1, records=20, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3, batch_size=10)
    dropped: list[str] = []

    async def after(kind: str, shard: str, status: int) -> None:
        if kind == "hand_over" and status == 200 and not dropped:
            dropped.append(kind)
            raise unreachable()

    session = get_session()
    LeaseCalls(session, after=after)
    handled: list[Handled] = []
    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=recorder("a", handled))
    ta = asyncio.create_task(a.serve())
    try:
        await until(lambda: len(handled) >= 20, 30, "the records", ta)
        await as_another_worker(dynamodb, table, "asker", "ask")

        async def handed() -> bool:
            return (await the_lease(dynamodb, table)).owner == "asker"

        await until(handed, 15, "the hand-over", ta)
        await hold(asyncio.Event(), 1.5)
    finally:
        await stop((a, ta))
    assert dropped
    assert "event=lease_lost" not in caplog.text, "a completed hand-off reported as a loss"
