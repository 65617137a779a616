"""Calls the user's handler with one batch, bounded by `handler.timeout_s`.

Coroutine functions run on the event loop; plain functions run in a thread
pool so that they never block the loop (aiokafka's heartbeats run on it), or
with `concurrency = "process"` in a pool of handler processes. A timed-out
coroutine is cancelled (by its lane's `CallTimer`: one loop timer for all of a
lane's calls, as arming one per call was most of an invoke's fixed cost). A
timed-out handler process is killed and replaced, so the call really ends. A
timed-out thread cannot be stopped: the batch fails and the thread runs on, and
the partition's next call waits until it has returned (`overruns`), so two
calls of one partition never overlap.
`running_s` / `returned` tell a partition's release whether anything of it still
runs (a thread, or a cancelled call's process not yet gone).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from worker.config import HandlerConfig
from worker.handling.call_limit import CallLimit
from worker.handling.call_timer import CallTimer
from worker.handling.handler import (
    HandlerLoadError,
    call_sync,
    is_coroutine_callable,
    materialise,
    not_awaitable,
)
from worker.handling.overruns import Overruns
from worker.handling.process_pool import CallTimedOut, ProcessPool
from worker.observe.metrics import Metrics
from worker.outputs.outbox import MAX_OUTPUT_BYTES, Outbox, Output
from worker.records import Batch

log = logging.getLogger("worker.invoker")


@dataclass(slots=True)
class Outcome:
    """How one invocation ended; `result` is what the handler returned."""

    ok: bool
    duration_s: float
    result: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    #: What the call queued with `batch.send` (outputs on), kept only if it succeeded.
    outputs: list[Output] | None = None

    def describe(self) -> str:
        if self.timed_out:
            return f"timed out after {self.duration_s:.3f}s"
        return f"{type(self.error).__name__}: {self.message()}"

    def message(self) -> str:
        """str() of the handler's error. The error is the handler's object: a `__str__` (or
        an attribute lookup) that raises must fail its batch, not the partition's task."""
        try:
            return str(self.error)
        except Exception as exc:
            return f"<str() of the error raised {type(exc).__name__}>"

    def traceback_text(self) -> str:
        if self.error is None:
            return ""
        try:
            return "".join(traceback.format_exception(self.error))
        except Exception as exc:  # a hostile error object, as in `message`
            return f"<the traceback could not be formatted: {type(exc).__name__}>"


@dataclass(frozen=True, slots=True)
class _Raised:
    """A BaseException that is not an Exception, raised by a handler in a thread, carried
    back as the call's value. Set on the future, it is thrown into the awaiting task by
    asyncio, and a GeneratorExit thrown into a coroutine closes its whole chain of awaits
    and surfaces in the outermost frame: it skipped every `except` of the invoker and the
    failure policy and ended the lane, and the worker with exit status 1. `_result`
    raises it in its own frame, where `_call` catches it like any handler error."""

    error: BaseException


def _in_thread(fn: Callable[..., Any], batch: Batch) -> Any:
    """The handler's call in a pool thread (see `_Raised`)."""
    try:
        return call_sync(fn, batch)
    except Exception:
        raise
    except BaseException as exc:
        return _Raised(exc)


def _own_records(batch: Batch) -> Batch:
    """The batch with a list of records of its own, for the handler.

    The failure policy bisects, retries and dead-letters the very list it invoked the
    handler with; a handler that popped, cleared or sorted `batch.records` in place (or a
    thread past its timeout doing so later) changed what the policy then retried and gave
    up: records it removed were committed, neither handled nor dead-lettered, and an empty
    list ended the lane. A list copy is one C-level pass per batch.
    """
    return Batch(list(batch.records), batch.source, batch.partition, batch.window, batch.outbox)


def _cancelled_by_us() -> bool:
    """True if this task was asked to stop (a partition stopping, shutdown), so a
    CancelledError must travel on; False if the handler raised one of its own."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class Invoker:
    def __init__(
        self,
        fn: Callable[..., Any],
        config: HandlerConfig,
        processes: ProcessPool | None = None,
        metrics: Metrics | None = None,
        limit: CallLimit | None = None,
        outputs: frozenset[str] = frozenset(),
        output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        self._fn = fn
        self._output_bytes = output_bytes
        #: `outputs.topics`: each call gets an outbox for them (empty: `send` is off).
        self._outputs = outputs
        #: `handler.max_concurrency`'s slots, shared by every lane (None: no cap).
        self._limit = limit
        self._timeout_s = config.timeout_s
        self.is_async = is_coroutine_callable(fn)
        self._processes = processes
        self._timers: dict[asyncio.Task[Any], CallTimer] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._overruns: Overruns | None = None
        if processes is not None:
            if self.is_async:
                raise HandlerLoadError(
                    "handler.concurrency = 'process' needs a plain (not async) handler function"
                )
            # A process past its timeout is killed before its call ends: no spare needed.
            self._overruns = Overruns(processes.size, 0, metrics)
        elif not self.is_async:
            # As many spare threads as slots: overrunning threads leave the slots alone.
            threads = config.threads
            self._pool = ThreadPoolExecutor(2 * threads, thread_name_prefix="handler")
            self._overruns = Overruns(threads, threads, metrics)
            if config.concurrency == "async":
                log.info("handler is a plain function: running it in a thread pool")

    @property
    def overruns(self) -> Overruns | None:
        """Calls past their timeout (thread and process modes), for tests and status."""
        return self._overruns

    def running_s(self, partition: str, threads_only: bool = False) -> float | None:
        """How long the oldest call of `partition` still running has run (None: none).
        Coroutines are cancelled with their task, so only pool calls can be running."""
        return None if self._overruns is None else self._overruns.running_s(partition, threads_only)

    async def returned(self, partition: str) -> None:
        """Return once no call of `partition` runs any more."""
        if self._overruns is not None:
            await self._overruns.returned(partition)

    async def invoke(self, batch: Batch) -> Outcome:
        if not self._outputs:
            return await self._invoke(batch if self._processes is not None else _own_records(batch))
        outbox = Outbox(self._outputs, self._output_bytes)
        outcome = await self._invoke(
            Batch(list(batch.records), batch.source, batch.partition, batch.window, outbox)
        )
        outbox.close()
        return replace(outcome, outputs=outbox.items)  # the failure policy keeps or discards

    async def _invoke(self, batch: Batch) -> Outcome:
        if self._overruns is not None:
            return await self._call_in_pool(batch)
        limit = self._limit
        if limit is None:
            return await self._call(time.perf_counter(), self._call_async(batch))
        await limit.acquire()  # before the clock starts: a queue is not the handler's time
        try:
            return await self._call(time.perf_counter(), self._call_async(batch))
        finally:
            limit.release()  # a coroutine's call has ended with it (cancelled on timeout)

    async def _call_in_pool(self, batch: Batch) -> Outcome:
        overruns = self._overruns
        assert overruns is not None
        limit = self._limit
        await overruns.wait(batch.partition)
        # Slots before the clock starts: a queue is not the handler's time. The global one
        # first, always, so two calls never each hold the slot the other waits for.
        if limit is not None:
            await limit.acquire()
        try:
            await overruns.take_slot()
        except BaseException:
            if limit is not None:
                limit.release()
            raise
        start, since = time.perf_counter(), time.monotonic()
        try:
            if self._processes is not None:
                call = self._processes.submit(batch, self._timeout_s)
            else:
                assert self._pool is not None
                call = self._pool.submit(_in_thread, self._fn, batch)
        except Exception as exc:  # the pool is shut down, or could not be replaced
            overruns.give_back()
            if limit is not None:
                limit.release()
            return Outcome(False, time.perf_counter() - start, error=exc)
        if limit is not None:
            limit.release_when_done(call)  # a thread past its timeout still holds it
        outcome = None
        try:
            outcome = await self._call(start, self._result(call, batch.partition))
            return outcome
        finally:
            reason = "timeout" if outcome is not None and outcome.timed_out else "cancelled"
            if self._processes is not None and outcome is None:
                call.cancel()  # we were cancelled: pebble stops the child (no-op if finished)
            if self._processes is not None and call.cancelled():  # its child is being killed
                overruns.ending(batch.partition, self._processes.gone(call, batch.partition), since)
            overruns.settle(batch.source, batch.partition, call, reason, since)

    async def _call_async(self, batch: Batch) -> Any:
        result = not_awaitable(await self._fn(batch), "`await` it")
        return materialise(result)

    async def _result(self, call: concurrent.futures.Future[Any], partition: str) -> Any:
        processes = self._processes
        if processes is None:
            value = await asyncio.wrap_future(call)
            if isinstance(value, _Raised):
                raise value.error
            return value
        return await processes.wait(call, partition)  # cancelled: pebble kills the child

    async def _call(self, start: float, awaitable: Any) -> Outcome:
        timer = self._timer() if self._processes is None else None  # processes: pebble's
        try:
            if timer is not None:
                timer.start()
            result = await awaitable
        except asyncio.CancelledError as exc:
            if timer is not None and timer.timed_out():
                error = TimeoutError()
                return Outcome(False, time.perf_counter() - start, error=error, timed_out=True)
            if _cancelled_by_us():
                raise
            return Outcome(False, time.perf_counter() - start, error=exc)
        except BaseException as exc:
            # The handler's SystemExit, KeyboardInterrupt or other BaseException fails its
            # batch: `sys.exit(0)` in a handler is not the worker's exit. A TimeoutError the
            # handler raised itself is an ordinary error.
            expired = timer is not None and timer.timed_out()
            timed_out = expired or isinstance(exc, CallTimedOut)
            return Outcome(False, time.perf_counter() - start, error=exc, timed_out=timed_out)
        finally:
            if timer is not None:
                timer.stop()
        return Outcome(True, time.perf_counter() - start, result=result)

    def _timer(self) -> CallTimer:
        """The calling task's timer (one per lane, for all its calls)."""
        task = asyncio.current_task()
        assert task is not None
        timer = self._timers.get(task)
        if timer is None:
            timer = self._timers[task] = CallTimer(task, self._timeout_s)
            task.add_done_callback(self._drop_timer)
        return timer

    def _drop_timer(self, task: asyncio.Task[Any]) -> None:
        timer = self._timers.pop(task, None)
        if timer is not None:
            timer.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.close()
