"""The backpressure controller's incremental accounting against the true sum, under random
feeds, cuts, failures with retries, filters, key lanes, revokes and re-assigns of the same
partitions, and re-deliveries after a seek back: after every budget check the total equals
the sum of the partitions' buffers (each equal to its lanes' own), nothing is negative, the
waiting order holds exactly the partitions holding bytes, and nothing released is kept."""

import asyncio
import random

import pytest

from worker.testing import MemoryBroker, running_worker, wait_until

TOPIC = "t"
OVERHEAD = 320


def check(w, errors):
    bp = w.backpressure
    owned = w.assignments.partitions()
    draining = list(w.assignments._draining.values())
    everyone = {id(p): p for p in owned + draining}.values()
    for p in everyone:
        true = sum(lane.batcher.bytes + lane.batcher.records * OVERHEAD for lane in p._lanes)
        if true != p.buffered_bytes:
            errors.append(("partition", p.label, true, p.buffered_bytes))
        if p.buffered_bytes < 0:
            errors.append(("negative", p.label, p.buffered_bytes))
    total = sum(p.buffered_bytes for p in everyone)
    if total != bp._held:
        errors.append(("total", total, bp._held))
    if bp._held < 0:
        errors.append(("negative total", bp._held))
    waiting = {p for p in bp._waiting}
    expect = {p for p in everyone if p.buffered_bytes}
    if waiting != expect:
        errors.append(
            ("waiting", sorted(p.label for p in waiting), sorted(p.label for p in expect))
        )
    stale = [p.label for p in list(bp._waiting) + list(bp._held_back) if p not in set(everyone)]
    if stale:
        errors.append(("stale", stale))


@pytest.mark.parametrize("seed", range(4))
async def test_random(seed):
    rnd = random.Random(seed)
    broker = MemoryBroker()
    nparts = 4
    broker.create_topic(TOPIC, nparts)
    lanes = rnd.choice([1, 3])
    produced = {p: 0 for p in range(nparts)}

    async def handler(batch):
        await asyncio.sleep(rnd.random() * 0.01)
        if rnd.random() < 0.05:
            raise RuntimeError("boom")

    settings = {
        "batching": {
            "batch_size": rnd.choice([5, 50, 500]),
            "maximum_batching_window_ms": rnd.choice([0, 20, 300_000]),
            "maximum_batch_bytes": rnd.choice([3000, 6_291_456]),
        },
        "handler": {"parallelization_factor": lanes},
        "errors": {"maximum_retry_attempts": 2, "retry_backoff_ms": [1, 2]},
        "runtime": {
            "memory_budget_bytes": 1024 * 1024,
            "max_buffered_records": rnd.choice([100, 1000, 100_000]),
            "max_buffered_bytes": rnd.choice([64 * 1024, 8 * 1024 * 1024]),
        },
    }
    if rnd.random() < 0.3:
        settings["filter"] = {"patterns": ['{"data": {"keep": [true]}}']}
    errors = []
    over = []
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        await wait_until(lambda: w.assignments.assigned_once)
        w.source.max_records = rnd.choice([10, 100, 1000])
        orig = w.backpressure.apply_budget

        def apply(touched, owned):
            orig(touched, owned)
            over.append(w.backpressure._over)
            check(w, errors)

        w.backpressure.apply_budget = apply
        for _step in range(60):
            op = rnd.random()
            if op < 0.6:
                p = rnd.randrange(nparts)
                for _ in range(rnd.randrange(1, 300)):
                    broker.produce(
                        TOPIC,
                        b"x" * rnd.randrange(0, 3000),
                        key=b"k%d" % rnd.randrange(9),
                        partition=p,
                    )
                    produced[p] += 1
            elif op < 0.75:
                tps = [(TOPIC, p) for p in rnd.sample(range(nparts), rnd.randrange(1, nparts + 1))]
                await w.source.revoke(tps)
                check(w, errors)
                await w.source.assign(tps)
            elif op < 0.85:
                tp = (TOPIC, rnd.randrange(nparts))
                if tp in w.source.positions:
                    w.source.positions[tp] = max(0, w.source.positions[tp] - rnd.randrange(1, 200))
            await asyncio.sleep(rnd.random() * 0.02)
            check(w, errors)
        w.source.max_records = 10_000
        if settings["batching"]["maximum_batching_window_ms"] < 1000:
            await wait_until(
                lambda: all(
                    (broker.committed("test", TOPIC, p) or 0) == produced[p] for p in range(nparts)
                ),
                timeout_s=30,
            )
            await wait_until(lambda: w.backpressure._held == 0 and not w.source.paused, timeout_s=5)
        check(w, errors)
    assert over  # the checks ran
    assert errors[:5] == []
