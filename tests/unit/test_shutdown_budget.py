"""The shutdown budget keeps time for closing the source after the final commit.

In a broker outage the final commit waits out all it is given. On librdkafka the close
then began after the budget, and the backstop ended the worker before
`shutdown_complete` (seen in the outage test under load)."""

import asyncio
import time

from worker.runtime.deadline import Deadline
from worker.runtime.worker import CLOSE_RESERVE_S
from worker.testing import MemoryBroker, running_worker

TOPIC = "t"
BUDGET_S = 2.0


def test_keeping_takes_the_reserve_off_but_never_more_than_half_of_what_is_left():
    now = [100.0]
    deadline = Deadline(10.0, lambda: now[0])
    assert deadline.keeping(1.0).left() == 9.0
    now[0] = 109.0  # 1 s left: half of it is kept
    assert deadline.keeping(1.0).left() == 0.5
    now[0] = 120.0  # spent: nothing to keep, nothing given
    assert deadline.keeping(1.0).left() == 0.0


async def test_the_source_is_stopped_with_the_reserve_left_while_the_final_commit_hangs():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    handled = asyncio.Event()

    async def handler(batch) -> None:
        handled.set()

    settings = {"batching": {"batch_size": 5}, "runtime": {"shutdown_timeout_s": BUDGET_S}}
    stopped_at: list[float] = []
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        source = w.source
        stop = source.stop

        async def hanging_commit(offsets) -> None:  # the coordinator is gone
            await asyncio.Event().wait()

        async def timed_stop() -> None:
            stopped_at.append(time.monotonic())
            await stop()

        source.commit = hanging_commit
        source.stop = timed_stop
        for i in range(5):
            broker.produce(TOPIC, b"%d" % i, key=b"k", partition=0)
        await handled.wait()
        started = time.monotonic()
        w.request_exit()
    (at,) = stopped_at
    assert at - started <= BUDGET_S - CLOSE_RESERVE_S + 0.4, f"stopped at {at - started:.2f}s"
    assert broker.committed("test", TOPIC, 0) is None  # nothing claimed that was not sent
