"""Random schedules on the memory source: produce, revoke, assign, failing commits, failing
handlers, shutdown with a revoke racing it. The contract, checked at every commit call and
at the end:

- nothing is committed before it was handled (committed <= handled prefix);
- nothing is lost: once faults stop, everything is handled and committed;
- per key order: a record is handled only after every earlier record of its key was.

Faults are injected at the boundaries: the source's `commit_error`, the handler raising.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.destinations.base import DestinationError
from worker.runtime.worker import Worker
from worker.sources.memory import MemorySource
from worker.testing import MemoryBroker, memory_config, wait_until

TOPIC = "t"
PARTITIONS = 3
KEYS = [b"k%d" % i for i in range(7)]


class CheckedSource(MemorySource):
    """Checks every checkpoint against what the handler finished, before it is stored."""

    def __init__(self, broker, handled, violations) -> None:
        super().__init__(broker, [TOPIC])
        self._handled = handled
        self._violations = violations

    async def commit(self, positions):
        if self.commit_error is None:
            for (_, part), last in positions.items():
                missing = [o for o in range(last + 1) if (part, o) not in self._handled]
                if missing and (_, part) in self.positions:
                    self._violations.append(f"commit p{part}@{last} before handling {missing[:5]}")
        await super().commit(positions)


def all_committed(broker: MemoryBroker) -> bool:
    return all(
        (broker.committed("test", TOPIC, p) or 0) == broker.end_offset(TOPIC, p)
        for p in range(PARTITIONS)
    )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("produce"), st.integers(1, 40)),
        st.tuples(st.just("revoke"), st.sets(st.integers(0, PARTITIONS - 1), min_size=1)),
        st.tuples(st.just("assign"), st.sets(st.integers(0, PARTITIONS - 1), min_size=1)),
        st.tuples(st.just("commits_fail"), st.booleans()),
        st.tuples(st.just("handler_fails"), st.sampled_from([0.0, 0.3, 1.0])),
        st.tuples(st.just("run"), st.integers(0, 30)),
        st.tuples(st.just("destination_fails"), st.booleans()),
    ),
    min_size=3,
    max_size=25,
)


class RecordingDestination:
    """Dead-lettered records count as resolved; `down` makes sends fail as an outage."""

    name = "recording"

    def __init__(self, resolve) -> None:
        self._resolve = resolve
        self.down = False

    async def start(self) -> None:
        return None

    async def send(self, event) -> None:
        if self.down:
            raise DestinationError("down")
        self._resolve(event.records)

    async def stop(self) -> None:
        return None


async def scenario(
    schedule, pf: int, batch_size: int, seed: int, revoke_at_exit: bool, retries: int = -1
) -> None:
    rng = random.Random(seed)
    broker = MemoryBroker()
    broker.create_topic(TOPIC, PARTITIONS)
    handled: set[tuple[int, int]] = set()
    violations: list[str] = []
    seq: dict[bytes, int] = defaultdict(int)
    done_seq: dict[bytes, set[int]] = defaultdict(set)
    fail = {"p": 0.0}

    def resolve(records) -> None:
        for r in records:
            n = int(r.value)
            earlier = [m for m in range(n) if m not in done_seq[r.key]]
            if earlier:
                violations.append(f"key {r.key!r} seq {n} handled before {earlier[:5]}")
            done_seq[r.key].add(n)
            handled.add((r.partition, r.offset))

    async def handler(batch):
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() / 1000)
        if fail["p"] and rng.random() < fail["p"]:
            raise RuntimeError("injected")
        resolve(batch.records)

    destination = RecordingDestination(resolve)

    source = CheckedSource(broker, handled, violations)
    source.max_records = 25
    config = memory_config(
        {
            "batching": {"batch_size": batch_size},
            "handler": {"parallelization_factor": pf},
            "source": {"commit_interval_ms": 0},
            "runtime": {"rebalance_timeout_s": 0.05, "shutdown_timeout_s": 0.05,
                        "max_buffered_records": 30},
            "errors": {"retry_backoff_ms": [1, 5], "maximum_retry_attempts": retries},
        }
    )  # fmt: skip
    w = Worker(config, source=source, handler=handler, destination=destination)
    task = asyncio.create_task(w.serve())
    await wait_until(lambda: w.assignments.assigned_once)
    for op, arg in schedule:
        if op == "produce":
            for _ in range(arg):
                key = rng.choice(KEYS)
                broker.produce(TOPIC, b"%d" % seq[key], key=key)
                seq[key] += 1
        elif op == "revoke":
            await source.revoke([(TOPIC, p) for p in sorted(arg)])
        elif op == "assign":
            await source.assign([(TOPIC, p) for p in sorted(arg)])
        elif op == "commits_fail":
            source.commit_error = ConnectionError("down") if arg else None
        elif op == "destination_fails":
            destination.down = arg
        elif op == "handler_fails":
            fail["p"] = arg
        else:
            await asyncio.sleep(arg / 1000)
        assert not task.done(), f"worker ended: {task}"
    fail["p"] = 0.0
    source.commit_error = None
    destination.down = False
    missing = [(TOPIC, p) for p in range(PARTITIONS) if (TOPIC, p) not in source.positions]
    if missing:
        await source.assign(missing)
    try:
        await wait_until(lambda: all_committed(broker), timeout_s=10)
    finally:
        if revoke_at_exit:
            w.request_exit()
            await source.revoke(source.all_partitions())
        w.request_exit()
        await asyncio.wait_for(task, 10)
    assert not violations, violations[:5]
    for p in range(PARTITIONS):
        want = {(p, o) for o in range(broker.end_offset(TOPIC, p))}
        assert want <= handled, sorted(want - handled)[:5]
    assert w.tasks.crashed is None


@settings(
    max_examples=int(os.environ.get("ADV_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    schedule=ops,
    pf=st.sampled_from([1, 3]),
    batch_size=st.sampled_from([1, 4, 10]),
    seed=st.integers(0, 2**16),
    revoke_at_exit=st.booleans(),
    retries=st.sampled_from([-1, 0, 2]),
)
def test_random_schedules_commit_only_handled_records_and_lose_nothing(
    schedule, pf, batch_size, seed, revoke_at_exit, retries
):
    asyncio.run(scenario(schedule, pf, batch_size, seed, revoke_at_exit, retries))
