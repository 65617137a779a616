"""A commit the source refuses for some partitions: only the others count as committed."""

import asyncio

from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"


async def test_a_partition_whose_commit_was_refused_still_owes_it_and_commits_it_on_revoke():
    """The source refused the commit of t-1 (ownership gone for a moment: a rebalance, a
    lease renewal racing a checkpoint) and checkpointed t-0. Marking t-1 committed anyway
    would show progress that never reached the source (its committed position and count)
    and drop the commit its revoke still owes, so its finished work would be redone."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 2)
    entered, gate = asyncio.Event(), asyncio.Event()

    async def handler(batch):
        if batch.partition == "t-1":
            entered.set()
            await gate.wait()

    async with running_worker(handler, broker, [TOPIC], {"batching": {"batch_size": 10}}) as w:
        broker.produce(TOPIC, b"x", partition=1)
        await entered.wait()
        owned = w.source.positions.pop((TOPIC, 1))  # the refusal, injected at the source
        gate.set()  # t-1 finishes its batch; its commit is refused
        for i in range(40):
            broker.produce(TOPIC, b"%d" % i, partition=0)
        await wait_until(lambda: broker.committed("test", TOPIC, 0) == 40)  # a later round
        refused = w.partition((TOPIC, 1))
        assert refused is not None and refused.committed is None
        assert refused.stats().committed_records == 0
        assert broker.committed("test", TOPIC, 1) is None

        w.source.positions[(TOPIC, 1)] = owned  # still ours after all: the revoke commits
        await w.source.revoke([(TOPIC, 1)])
        assert broker.committed("test", TOPIC, 1) == 1
