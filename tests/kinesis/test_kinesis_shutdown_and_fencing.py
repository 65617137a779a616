"""Edges of lease ownership on real parts (kinesis-local, moto): a worker shutting down,
a hand-off cut by SIGTERM, and an owner fenced off by another worker's take. Faults are
injected with botocore event hooks on the worker's own session (`tests/kinesis/hooks.py`)
and by lease-table writes the test makes as another worker; nothing else is faked."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import pytest
from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.kinesis.hooks import LeaseCalls, hold
from tests.kinesis.test_kinesis_lease_faults import (
    Handled,
    lease_config,
    recorder,
    stop,
    the_lease,
    until,
)
from tests.kinesis.test_kinesis_source import lease_rows, make_stream
from worker.config import WorkerConfig
from worker.runtime.worker import Worker
from worker.sources.kinesis.leases import LeaseLost, LeaseTable
from worker.sources.kinesis.source import KinesisSource


def with_runtime(cfg: WorkerConfig, **runtime: object) -> WorkerConfig:
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update=runtime)})


def gated(handle: Callable, which: Callable[[int], bool], entered: asyncio.Event,
          gate: asyncio.Event, abandoned: asyncio.Event) -> Callable:  # fmt: skip
    """`handle`, but the batches `which(n)` picks (n counts from 1) wait for `gate` (at
    most 30 s) before they are handled; one cancelled while it waits sets `abandoned`."""
    count = {"n": 0}

    async def handler(batch) -> None:
        count["n"] += 1
        if which(count["n"]):
            entered.set()
            try:
                await asyncio.wait_for(gate.wait(), 30)
            except asyncio.CancelledError:
                abandoned.set()
                raise
        await handle(batch)

    return handler


async def as_another_worker(dynamodb: Emulator, table: str, who: str, write: str) -> None:
    """Write the lease (`take` or `ask`) as worker `who`, reading it again when a renewal
    of its owner moved the counter between the read and the write (at most 5 tries)."""
    async with get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
    ) as client:
        other = LeaseTable(client, table, who)
        for attempt in range(5):
            try:
                await getattr(other, write)(await the_lease(dynamodb, table))
                return
            except LeaseLost:
                if attempt == 4:
                    raise


async def shard_ids(kinesis: Emulator, stream: str) -> list[str]:
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        return [s["ShardId"] for s in (await client.list_shards(StreamName=stream))["Shards"]]


async def test_a_worker_shutting_down_takes_no_lease_while_it_releases_its_own(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """The worker owns one shard and is inside a batch of it when it is told to stop; the
    other shard's lease belongs to another worker (the test), which gives it up while the
    first one drains. The first version went on running lease rounds during the drain and
    took that free lease (a lease it then handed back at once; an expired or forced take
    in its place fences off the worker that has it, whose work is redone). Now the worker
    stops taking before it releases: no take is sent once the shutdown began."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=2, records=40, keys=10)
    first, second = await shard_ids(kinesis, stream)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3, batch_size=10)
    shutting, taken = asyncio.Event(), asyncio.Event()

    async def before(kind: str, shard: str) -> None:
        if kind == "take" and shutting.is_set():
            taken.set()

    session = get_session()
    LeaseCalls(session, before=before)
    entered, gate, abandoned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[Handled] = []
    handler = gated(recorder("a", handled), lambda n: n == 1, entered, gate, abandoned)
    async with get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
    ) as client:
        other = LeaseTable(client, table, "other")
        await other.ensure()
        for shard_id in (first, second):
            await other.add_shard(shard_id, ())
        held = {"lease": await other.take((await other.all())[1])}

        stop_renewing = asyncio.Event()

        async def renew_for_ever() -> None:
            # Stopped between renewals, never cancelled inside one: a renew cut after
            # DynamoDB applied it left `held` one counter behind, and the release below
            # failed with LeaseLost (seen in CI).
            while not stop_renewing.is_set():
                try:
                    await asyncio.wait_for(stop_renewing.wait(), 0.5)
                except TimeoutError:
                    held["lease"] = await other.renew(held["lease"])

        renewer = asyncio.create_task(renew_for_ever())
        a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
        ta = asyncio.create_task(a.serve())
        try:
            await until(entered.is_set, 30, "a batch in flight", ta)
            shutting.set()
            a.request_exit()
            await until(lambda: "event=shutdown_started" in caplog.text, 10, "the shutdown")
            stop_renewing.set()
            await renewer
            await other.release(held["lease"])  # free for anyone, while the worker drains
            took = await hold(taken, 2.5)  # at least two lease rounds (one a second)
        finally:
            renewer.cancel()
            gate.set()
            await stop((a, ta))
    assert not took, "a lease was taken during the shutdown"
    rows = {lease.shard_id: lease for lease in await lease_rows(dynamodb, table)}
    assert rows[first].owner is None and rows[second].owner is None
    assert not abandoned.is_set() and {h.shard for h in handled} == {first}


async def test_sigterm_in_the_middle_of_a_hand_off_still_checkpoints_what_was_handled(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """Another worker (the test) asks for the lease while the owner is inside a batch;
    the owner starts the hand-off, the batch finishes, and the hand-off's checkpoint is
    answered slowly (a botocore hook holds it 1.5 s before it is sent; lease 6 s) while the worker
    is told to stop. The first version's shutdown found nothing left to release (the
    hand-off had taken the shard out), cancelled the hand-off with the worker's tasks
    and released the lease without that checkpoint: the batch was handled again by the
    next owner. Now the shutdown lets the hand-off under way finish: the checkpoint is
    the last record handled, and the lease goes to the asker."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=1, records=40, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=6, batch_size=10)
    handing, checkpoint_held = asyncio.Event(), asyncio.Event()

    async def before(kind: str, shard: str) -> None:
        if kind == "checkpoint" and handing.is_set() and not checkpoint_held.is_set():
            checkpoint_held.set()
            await hold(asyncio.Event(), 1.5)  # a slow lease table (a write may take 2 s)

    session = get_session()
    LeaseCalls(session, before=before)
    entered, gate, abandoned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[Handled] = []
    handler = gated(recorder("a", handled), lambda n: n == 2, entered, gate, abandoned)
    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    ta = asyncio.create_task(a.serve())
    try:
        await until(entered.is_set, 30, "the second batch in flight", ta)
        await as_another_worker(dynamodb, table, "asker", "ask")
        await until(lambda: "event=lease_handoff_started" in caplog.text, 10, "the hand-off", ta)
        handing.set()
        gate.set()
        await until(checkpoint_held.is_set, 10, "the hand-off's checkpoint", ta)
        a.request_exit()
        assert await asyncio.wait_for(ta, 60) == 0
    finally:
        gate.set()
        if not ta.done():
            await stop((a, ta))
    lease = await the_lease(dynamodb, table)
    assert len(handled) == 20 and not abandoned.is_set()
    assert lease.checkpoint == str(max(h.position for h in handled))
    assert (lease.owner, lease.pending) == ("asker", None)


@pytest.mark.parametrize("found_by", ["renewal", "checkpoint"])
async def test_an_owner_fenced_off_by_a_take_abandons_its_batch_at_once_and_commits_nothing(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture, found_by: str
):
    """Another worker (the test) takes the lease by force while the owner is inside a
    batch of the shard. The owner finds out from its next renewal (lease 3 s: within a
    second), or from a checkpoint the table refuses (lease 30 s, so no renewal comes for
    ten seconds: a botocore hook holds the first checkpoint back until the take is done).
    The first version noticed only at a renewal and then drained the shard as if it were
    still its own, letting the batch run on for up to rebalance_timeout_s beside the new
    owner. Now a fenced owner abandons the batch at once, starts no other and sends no
    more checkpoints of the shard."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=1, records=40, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    duration_s = 3 if found_by == "renewal" else 30
    base = lease_config(kinesis, dynamodb, stream, table, duration_s, batch_size=10)
    cfg = with_runtime(base, rebalance_timeout_s=20)
    first_checkpoint, taken, fenced = asyncio.Event(), asyncio.Event(), asyncio.Event()
    after_fence: list[str] = []

    async def before(kind: str, shard: str) -> None:
        if fenced.is_set():
            after_fence.append(kind)
        if kind == "checkpoint" and found_by == "checkpoint" and not first_checkpoint.is_set():
            first_checkpoint.set()
            await hold(taken, 10)

    session = get_session()
    LeaseCalls(session, before=before)
    entered, gate, abandoned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[Handled] = []
    handler = gated(recorder("a", handled), lambda n: n == 2, entered, gate, abandoned)
    a = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    ta = asyncio.create_task(a.serve())
    try:
        await until(entered.is_set, 30, "the second batch in flight", ta)
        if found_by == "checkpoint":
            await until(first_checkpoint.is_set, 10, "the first checkpoint", ta)
        await as_another_worker(dynamodb, table, "thief", "take")
        taken.set()
        await until(lambda: "event=lease_lost" in caplog.text, 5, "the loss to be seen", ta)
        fenced.set()
        gave_up = await hold(abandoned, 2.0)
        shard = handled[0].shard
        partition_gone = a.partition(shard) is None
        sent_later = await hold(asyncio.Event(), 1.0) or list(after_fence)
    finally:
        gate.set()
        await stop((a, ta))
    assert gave_up, "the batch of a lost lease ran on"
    assert partition_gone and sent_later == []
    assert len(handled) == 10  # the first batch only: nothing started after the loss
    assert (await the_lease(dynamodb, table)).owner == "thief"


async def test_a_lease_asked_for_by_a_worker_that_died_is_released_not_handed_to_it(
    kinesis: Emulator, dynamodb: Emulator, caplog: pytest.LogCaptureFixture
):
    """A worker (the test) asks for the lease and dies at once: it never confirms its
    request again. The owner drains the shard, whose batch in flight runs on for longer
    than the lease (3.5 s, lease 3 s). The first version handed the lease to the dead
    asker, and the shard stood still until that lease expired (a lease duration and a
    round more). Now the owner, having seen no confirmation for a lease duration,
    releases the lease after its last checkpoint instead, and takes it back (it is the
    only worker) within a lease round: every record is handled, once."""
    caplog.set_level(logging.INFO, logger="worker")
    stream = await make_stream(kinesis, shards=1, records=40, keys=10)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    cfg = lease_config(kinesis, dynamodb, stream, table, lease_duration_s=3, batch_size=10)
    entered, gate, abandoned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[Handled] = []
    handler = gated(recorder("a", handled), lambda n: n == 2, entered, gate, abandoned)
    a = Worker(cfg, handler=handler)
    ta = asyncio.create_task(a.serve())
    try:
        await until(entered.is_set, 30, "the second batch in flight", ta)
        await as_another_worker(dynamodb, table, "dead-asker", "ask")
        await until(lambda: "event=lease_handoff_started" in caplog.text, 10, "the hand-off", ta)
        await hold(asyncio.Event(), 3.5)  # a batch longer than the lease
        gate.set()
        opened_at = time.monotonic()
        await until(lambda: len(handled) >= 40, 20, "every record", ta)
        stalled_s = time.monotonic() - opened_at
    finally:
        gate.set()
        await stop((a, ta))
    assert stalled_s < 2.5, stalled_s  # a lease round or two, not a lease duration more
    assert "event=lease_handed_off" not in caplog.text and "reason=expired" not in caplog.text
    assert sorted(h.position for h in handled) == sorted({h.position for h in handled})
    assert "event=lease_handoff_dropped" in caplog.text
