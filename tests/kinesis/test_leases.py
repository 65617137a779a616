"""The lease table on moto's DynamoDB: conditional writes fence off a worker that lost its lease."""

import uuid

import pytest
from aiobotocore.session import get_session

from worker.sources.kinesis.leases import SHARD_END, LeaseLost, LeaseTable


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
