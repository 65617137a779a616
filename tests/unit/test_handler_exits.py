"""A handler's SystemExit, KeyboardInterrupt or other BaseException is a failed invocation.

`sys.exit(0)` in a handler used to end the whole worker with status 0 (in every
concurrency mode), and KeyboardInterrupt with 130: the handler's exit is not the
worker's. Only the worker's own cancellation (a timeout, a partition stopping) may
leave the invoker as CancelledError.
"""

import asyncio
import sys

import pytest

from tests.unit.test_failure_policy import RecordingDestination
from worker.config import HandlerConfig
from worker.handling.invoker import Invoker
from worker.testing import MemoryBroker, fully_committed, make_batch, running_worker, wait_until


class HandlerBaseError(BaseException):
    """Not an Exception: what a careless `raise` of a BaseException subclass gives."""


def exits(batch):
    sys.exit(0)


def exits_with_2(batch):
    sys.exit(2)


def interrupts(batch):
    raise KeyboardInterrupt


def raises_base(batch):
    raise HandlerBaseError("not an Exception")


def generator_exit(batch):
    """Set on a thread's future, asyncio throws it into the awaiting task, where it closes
    every coroutine between and surfaces in the lane's outermost frame: the lane died."""
    raise GeneratorExit


HANDLERS = {"exits": exits, "exits_with_2": exits_with_2, "interrupts": interrupts,
            "raises_base": raises_base, "generator_exit": generator_exit}  # fmt: skip


def as_async(fn):
    async def handler(batch):
        return fn(batch)

    return handler


@pytest.mark.parametrize("concurrency", ["async", "thread", "process"])
@pytest.mark.parametrize("name", sorted(HANDLERS))
async def test_a_handler_that_exits_fails_its_batch_and_the_worker_runs_on(concurrency, name):
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(3):
        broker.produce("t", b"%d" % i, partition=0)
    dlq = RecordingDestination()
    settings = {
        "errors": {"maximum_retry_attempts": 0, "bisect_batch_on_function_error": False},
        "handler": {"concurrency": concurrency, "processes": 1,
                    "target": f"tests.unit.test_handler_exits:{name}"},
    }  # fmt: skip
    fn = HANDLERS[name]
    handler = as_async(fn) if concurrency == "async" else fn
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]) or w.exit_code != 0)
        assert w.exit_code == 0 and w.tasks.crashed is None
    assert [r.offset for e in dlq.events for r in e.records] == [0, 1, 2]
    expected = {"exits": "SystemExit", "exits_with_2": "SystemExit",
                "interrupts": "KeyboardInterrupt", "raises_base": "HandlerBaseError",
                "generator_exit": "GeneratorExit"}  # fmt: skip
    assert dlq.events[0].error_type == expected[name]


async def test_a_cancelled_error_the_handler_raises_itself_is_a_failed_invocation():
    async def handler(batch):
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # someone else's cancellation, not the worker's

    outcome = await Invoker(handler, HandlerConfig()).invoke(make_batch([b"1"]))
    assert not outcome.ok and not outcome.timed_out
    assert type(outcome.error).__name__ == "CancelledError"


async def test_cancelling_the_invoking_task_still_cancels_it():
    started = asyncio.Event()

    async def handler(batch):
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(Invoker(handler, HandlerConfig()).invoke(make_batch([b"1"])))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


def test_worker_invoke_reports_a_handler_exit_as_its_error():
    from worker.config import WorkerConfig
    from worker.lambda_compat.local import invoke_once, sample_event

    config = WorkerConfig.model_validate(
        {"source": {"kind": "memory"}, "handler": {"target": "tests.unit.test_handler_exits:exits"}}
    )
    result = invoke_once(config, sample_event("kafka", "{}", None))
    assert isinstance(result.error, SystemExit)
