"""The lease table on moto's DynamoDB: conditional writes fence off a worker that lost its lease."""

import asyncio
import time
import uuid

import pytest
from aiobotocore.session import get_session

from worker.sources.kinesis.balance import Asks, Seen, plan
from worker.sources.kinesis.holder import LeaseHolder
from worker.sources.kinesis.leases import SHARD_END, Lease, LeaseLost, LeaseTable


async def table(dynamodb, worker_id: str, name: str):
    session = get_session()
    client = await session.create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
    ).__aenter__()
    leases = LeaseTable(client, name, worker_id)
    await leases.ensure()
    return client, leases


async def test_a_worker_whose_lease_was_taken_over_cannot_checkpoint(dynamodb):
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    try:
        await a.add_shard("shardId-000", ())
        await b.add_shard("shardId-000", ())  # a second add is a no-op, not an error
        (free,) = await a.all()
        mine = await a.take(free)
        mine = await a.checkpoint(mine, "100")
        mine = await a.renew(mine)
        (seen_by_b,) = await b.all()
        assert seen_by_b.owner == "worker-a" and seen_by_b.checkpoint == "100"
        stolen = await b.take(seen_by_b)  # say worker-a stopped renewing
        with pytest.raises(LeaseLost):
            await a.checkpoint(mine, "200")  # the old owner is fenced off
        with pytest.raises(LeaseLost):
            await a.renew(mine)
        stolen = await b.checkpoint(stolen, "200")
        (after,) = await a.all()
        assert (after.owner, after.checkpoint) == ("worker-b", "200")
        with pytest.raises(LeaseLost):
            await a.take(mine)  # a stale view cannot take it back either
        await b.checkpoint(stolen, SHARD_END)
        await b.release(stolen)
        (released,) = await a.all()
        assert released.owner is None and released.ended
    finally:
        await ca.__aexit__(None, None, None)
        await cb.__aexit__(None, None, None)


async def test_parents_and_many_shards_survive_paging(dynamodb):
    name = f"leases-{uuid.uuid4().hex[:6]}"
    client, leases = await table(dynamodb, "w", name)
    try:
        for i in range(120):
            await leases.add_shard(f"shardId-{i:03d}", (f"shardId-{i - 1:03d}",) if i else ())
        all_leases = await leases.all()
        assert len(all_leases) == 120
        assert all_leases[5].parents == ("shardId-004",)
    finally:
        await client.__aexit__(None, None, None)


async def test_a_renewal_and_a_checkpoint_in_flight_at_once_both_land_on_the_holders_copy(
    dynamodb,
):
    """Both writes of one lease start together; the holder sends them one at a time and
    keeps the table's answer to each, so neither puts back a stale counter or checkpoint."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    client, leases = await table(dynamodb, "worker-a", name)
    try:
        await leases.add_shard("shardId-000", ())
        (free,) = await leases.all()
        holder = LeaseHolder(leases, await leases.take(free), time.monotonic(), 10)
        for i in range(5):
            await asyncio.gather(holder.renew(), holder.checkpoint(str(100 + i)), holder.renew())
        (stored,) = await leases.all()
        assert stored == holder.lease
        assert (stored.owner, stored.counter, stored.checkpoint) == ("worker-a", 11, "104")
    finally:
        await client.__aexit__(None, None, None)


async def test_a_holder_goes_on_from_the_table_when_its_own_write_moved_the_counter(dynamodb):
    """A renewal the table applied but whose answer never came (a timeout) leaves the
    holder one counter behind: the next write is refused, the refusal shows the lease is
    still ours, and the holder goes on from the table's copy instead of dropping it."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    client, leases = await table(dynamodb, "worker-a", name)
    try:
        await leases.add_shard("shardId-000", ())
        (free,) = await leases.all()
        holder = LeaseHolder(leases, await leases.take(free), time.monotonic(), 10)
        await leases.renew(holder.lease)  # applied; the holder never saw the answer
        await holder.checkpoint("42")
        await holder.renew()
        (stored,) = await leases.all()
        assert (stored.counter, stored.checkpoint) == (3, "42") and holder.lease == stored
        assert holder.lost is None
    finally:
        await client.__aexit__(None, None, None)


async def test_a_holder_whose_lease_was_taken_or_given_up_writes_nothing_more(dynamodb):
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    try:
        await a.add_shard("shardId-000", ())
        await a.add_shard("shardId-001", ())
        first, second = await a.all()
        taken = LeaseHolder(a, await a.take(first), time.monotonic(), 10)
        lapsed = LeaseHolder(a, await a.take(second), time.monotonic(), 10)
        await b.take((await b.all())[0])
        with pytest.raises(LeaseLost):
            await taken.checkpoint("7")  # refused by the table: worker-b has it
        assert taken.lost is not None
        lapsed.give_up("not renewed in time")
        with pytest.raises(LeaseLost):
            await lapsed.checkpoint("7")  # refused here: the table is not even asked
        rows = {lease.shard_id: lease for lease in await a.all()}
        assert rows["shardId-000"].owner == "worker-b" and rows["shardId-000"].checkpoint is None
        assert rows["shardId-001"].owner == "worker-a" and rows["shardId-001"].checkpoint is None
    finally:
        await ca.__aexit__(None, None, None)
        await cb.__aexit__(None, None, None)


def test_a_lease_the_table_names_as_mine_that_i_do_not_hold_is_taken_back_first():
    mine = Lease("s0", "w1", 4, "100")
    held = Lease("s1", "w1", 9, None)
    other = Lease("s2", "w2", 3, None)
    takes = plan([mine, held, other], "w1", {}, now=0.0, duration_s=10.0, holding={"s1"})
    assert [(lease.shard_id, why) for lease, why in takes] == [("s0", "reclaim")]
    assert plan([mine, held, other], "w1", {}, 0.0, 10.0, holding={"s0", "s1"}) == []


def test_a_shard_still_being_drained_here_is_not_taken_again_when_its_lease_expires():
    """Its lease was lost to a worker that then died; until the drain of the old lane is
    over, taking it back would run two lanes of one shard in this worker at once."""
    lost = Lease("s0", "w2", 4, "100")
    seen = {"s0": Seen(4, 0.0)}
    assert plan([lost], "w1", seen, now=20.0, duration_s=10.0, holding={"s0"}) == []
    assert [why for _, why in plan([lost], "w1", seen, 20.0, 10.0, holding=set())] == ["expired"]


async def test_a_lease_asked_for_stays_its_owners_until_handed_over_in_one_write(dynamodb):
    """The ask leaves owner and counter as they were (the owner renews and checkpoints on),
    a second ask is refused, and the hand-over makes the asker owner in one write; a
    forced take calls a pending ask off."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    cc, c = await table(dynamodb, "worker-c", name)
    try:
        await a.add_shard("shardId-000", ())
        await a.add_shard("shardId-001", ())
        first, second = await a.all()
        holder = LeaseHolder(a, await a.take(first), time.monotonic(), 10)
        (seen_by_b, _) = await b.all()
        asked = await b.ask(seen_by_b)
        assert (asked.owner, asked.counter, asked.pending) == ("worker-a", 1, "worker-b")
        with pytest.raises(LeaseLost):
            await c.ask(asked)  # one request at a time
        await holder.renew()
        await holder.checkpoint("55")
        assert holder.lease.pending == "worker-b"  # the owner learns of it from its answers
        await holder.hand_over()
        (handed, _) = await b.all()
        assert (handed.owner, handed.counter, handed.pending) == ("worker-b", 3, None)
        assert handed.checkpoint == "55" and holder.lost is not None
        other = await a.take(second)
        await c.ask(other)
        forced = await c.take(other)  # the owner did not hand over in time
        assert (forced.owner, forced.pending) == ("worker-c", None)
    finally:
        for client in (ca, cb, cc):
            await client.__aexit__(None, None, None)


def test_a_steal_is_asked_for_counted_as_on_its_way_and_forced_only_when_overdue():
    leases = [Lease(f"s{i}", "w1", 5, None) for i in range(4)]
    asks = Asks(timeout_s=30.0)
    takes = plan(leases, "w2", {}, now=0.0, duration_s=10.0, holding=set(), asks=asks)
    assert [(lease.shard_id, why) for lease, why in takes] == [("s0", "ask")]
    asks.asked("s0", 0.0)
    leases[0] = Lease("s0", "w1", 6, None, pending="w2")  # renewed on while it drains
    takes = plan(leases, "w2", {}, now=1.0, duration_s=10.0, holding=set(), asks=asks)
    assert [(lease.shard_id, why) for lease, why in takes] == [("s1", "ask")]  # fair share: 2
    leases[1] = Lease("s1", "w1", 6, None, pending="w2")
    assert plan(leases, "w2", {}, now=2.0, duration_s=10.0, holding=set(), asks=asks) == []
    takes = plan(leases, "w2", {}, now=31.0, duration_s=10.0, holding=set(), asks=asks)
    assert [(lease.shard_id, why) for lease, why in takes] == [("s0", "force")]
    leases[0] = Lease("s0", "w2", 7, None)  # handed over
    takes = plan(leases, "w2", {}, now=31.5, duration_s=10.0, holding=set(), asks=asks)
    assert [(lease.shard_id, why) for lease, why in takes] == [("s0", "handed")]


async def test_no_request_for_a_lease_outlives_its_owner_release_and_takes_clear_it(dynamodb):
    """A request is made of one owner. The first version's release left it on the free
    lease, so whoever took that lease next without clearing it (a worker of an older
    version, say) owned a lease with a stale request: it would hand the shard to a worker
    that had asked somebody else, perhaps long dead, and the asker counted it as on its
    way and forced it. Now a release clears the request in the same write, as every take
    (free, expired, forced) does."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    cc, c = await table(dynamodb, "worker-c", name)
    try:
        await a.add_shard("shardId-000", ())
        (free,) = await a.all()
        owned = await a.take(free)
        await b.ask(owned)
        (asked,) = await a.all()
        released = await a.release(asked)
        assert (released.owner, released.pending) == (None, None)
        owned = await a.take(released)
        await b.ask(owned)
        (asked,) = await c.all()
        expired = await c.take(asked)  # say worker-a stopped renewing
        assert (expired.owner, expired.pending) == ("worker-c", None)
    finally:
        for client in (ca, cb, cc):
            await client.__aexit__(None, None, None)


async def test_a_refused_write_names_who_owns_the_lease_now_without_a_second_read(dynamodb):
    """moto answers a failed condition with the item (ReturnValuesOnConditionCheckFailure
    = ALL_OLD), so a fenced owner learns the new owner from the refusal itself."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    try:
        await a.add_shard("shardId-000", ())
        (free,) = await a.all()
        mine = await a.take(free)
        await b.take(mine)
        with pytest.raises(LeaseLost) as refused:
            await a.checkpoint(mine, "7")
        assert refused.value.current is not None
        assert (refused.value.current.owner, refused.value.current.counter) == ("worker-b", 2)
    finally:
        await ca.__aexit__(None, None, None)
        await cb.__aexit__(None, None, None)


async def test_a_start_is_pinned_only_under_the_current_lease_and_reads_back(dynamodb):
    """`latest`: the pin (`start_at`) is a write of the lease like a checkpoint: a worker
    whose lease was taken cannot move its new owner's start; a row without it reads None."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    try:
        await a.add_shard("shardId-000", ())
        (free,) = await a.all()
        assert free.start_at is None
        mine = await a.take(free)
        stolen = await b.take(mine)  # say worker-a stopped renewing
        with pytest.raises(LeaseLost):
            await a.start_at(mine, "41")
        stolen = await b.start_at(stolen, "42")
        (row,) = await a.all()
        assert (row.owner, row.start_at, row.checkpoint) == ("worker-b", "42", None)
        await b.checkpoint(stolen, "45")  # the last done: it wins over the pin from now on
        (row,) = await a.all()
        assert (row.start_at, row.checkpoint) == ("42", "45")
    finally:
        await ca.__aexit__(None, None, None)
        await cb.__aexit__(None, None, None)


async def test_where_a_shard_starts_is_decided_once_when_its_lease_is_made(dynamodb):
    """`start`: the first create wins (a second worker's create, whatever it decided, is a
    no-op), and no later write of the lease moves it; a row without it reads None."""
    name = f"leases-{uuid.uuid4().hex[:6]}"
    ca, a = await table(dynamodb, "worker-a", name)
    cb, b = await table(dynamodb, "worker-b", name)
    try:
        await a.add_shard("shardId-000", ())
        await b.add_shard("shardId-000", (), oldest=True)  # lost the race: no-op
        await b.add_shard("shardId-001", ("shardId-000",), oldest=True)
        rows = {r.shard_id: r for r in await a.all()}
        assert {s: r.start for s, r in rows.items()} == {
            "shardId-000": "configured", "shardId-001": "oldest"}  # fmt: skip
        mine = await a.take(rows["shardId-001"])
        mine = await a.renew(await a.start_at(mine, "7"))
        mine = await a.checkpoint(mine, "9")
        await a.release(mine)
        row = {r.shard_id: r for r in await b.all()}["shardId-001"]
        assert (row.start, row.parents, row.checkpoint) == ("oldest", ("shardId-000",), "9")
        await ca.put_item(TableName=name, Item={"shard_id": {"S": "old"}, "counter": {"N": "0"}})
        assert {r.shard_id: r for r in await a.all()}["old"].start is None
    finally:
        await ca.__aexit__(None, None, None)
        await cb.__aexit__(None, None, None)


async def test_a_row_made_without_a_start_is_marked_only_while_never_taken_and_unmarked(dynamodb):
    name = f"leases-{uuid.uuid4().hex[:6]}"
    client, leases = await table(dynamodb, "w", name)
    try:
        for shard in ("old", "taken"):  # as an older worker made them: no `start`
            await client.put_item(TableName=name, Item={
                "shard_id": {"S": shard}, "counter": {"N": "0"}, "parents": {"L": []}})  # fmt: skip
        rows = {r.shard_id: r for r in await leases.all()}
        marked = await leases.mark_oldest(rows["old"])
        assert (marked.start, marked.counter, marked.owner) == ("oldest", 0, None)
        with pytest.raises(LeaseLost):
            await leases.mark_oldest(rows["old"])  # marked already
        await leases.take(rows["taken"])
        with pytest.raises(LeaseLost):
            await leases.mark_oldest(rows["taken"])  # taken meanwhile: read as it was
        rows = {r.shard_id: r for r in await leases.all()}
        assert (rows["old"].start, rows["taken"].start) == ("oldest", None)
    finally:
        await client.__aexit__(None, None, None)
