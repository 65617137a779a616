import asyncio
import threading

from worker.config import HandlerConfig
from worker.handling.invoker import Invoker
from worker.testing import make_batch

BATCH = make_batch([b"1"])


async def test_async_handler_runs_on_the_loop_and_returns_its_result():
    async def handler(batch):
        return len(batch.records)

    outcome = await Invoker(handler, HandlerConfig()).invoke(BATCH)
    assert outcome.ok and outcome.result == 1


async def test_plain_function_runs_in_a_thread_not_on_the_loop():
    seen = {}

    def handler(batch):
        seen["thread"] = threading.current_thread().name

    invoker = Invoker(handler, HandlerConfig())
    outcome = await invoker.invoke(BATCH)
    invoker.close()
    assert outcome.ok and seen["thread"].startswith("handler")


async def test_error_fails_the_invocation_with_the_exception():
    def handler(batch):
        raise ValueError("bad reading")

    outcome = await Invoker(handler, HandlerConfig()).invoke(BATCH)
    assert not outcome.ok and not outcome.timed_out
    assert outcome.describe() == "ValueError: bad reading"
    assert "bad reading" in outcome.traceback_text()


async def test_timeout_fails_the_invocation_and_cancels_a_coroutine():
    cancelled = asyncio.Event()

    async def handler(batch):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outcome = await Invoker(handler, HandlerConfig(timeout_s=0.05)).invoke(BATCH)
    assert not outcome.ok and outcome.timed_out
    assert cancelled.is_set()


async def test_a_timeout_error_raised_by_the_handler_is_an_ordinary_error():
    async def handler(batch):
        raise TimeoutError("database did not answer")

    outcome = await Invoker(handler, HandlerConfig(timeout_s=5)).invoke(BATCH)
    assert not outcome.ok and not outcome.timed_out


async def test_an_object_with_an_async_call_method_is_awaited():
    class Handler:
        async def __call__(self, batch):
            return "awaited"

    invoker = Invoker(Handler(), HandlerConfig())
    assert invoker.is_async
    assert (await invoker.invoke(BATCH)).result == "awaited"


async def test_a_plain_function_returning_a_coroutine_fails_instead_of_passing_unrun():
    async def inner(batch):
        return None

    def handler(batch):
        return inner(batch)

    invoker = Invoker(handler, HandlerConfig())
    outcome = await invoker.invoke(BATCH)
    invoker.close()
    assert not outcome.ok and "async def" in str(outcome.error)
