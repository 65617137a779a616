"""`concurrency = "process"`: plain handlers run in a pool of worker processes.

For CPU-bound handlers, which a thread pool cannot spread over cores. A batch
crosses to a child as the source packs it (`RecordTraits.pack`: a few flat
columns that pickle at C speed, not one client object per record), and the
child rebuilds the source's own records with `RecordTraits.unpack`, so a
handler sees there exactly what it would see in the worker (Kafka's
timestamp type, Kinesis's shard id). The child builds its handler with the
`ChildSpec` the runtime gives (a module-level factory and its arguments,
pickled by reference), so this module knows nothing of Lambda or of any
source. The parent loads the handler first, so an import error fails the
start with a clear message.

The pool is pebble's, which can end one child: a call past `handler.timeout_s`
has its child killed (SIGTERM, then SIGKILL) and replaced, and its future ends
only once the child is gone, so a timed-out call never runs on beside the
retry. A child that dies (segfault, os._exit, OOM kill) fails only the batch it
held; the error says so and pebble starts a new child. Whatever the handler
raises (SystemExit too) travels back as a value, so an error from the future
itself is always the pool's: a timeout, a dead child, a broken pool (replaced).
It travels pickled by the child and unpickled by `result`: an error or result
that does not survive the trip (an exception whose `__init__` wants other
arguments than its `args`, a lambda) used to reach pebble, which declared the
whole pool broken, failing every other partition's call in it; now it fails
its own batch as a `HandlerResultNotPortable`.

A call cancelled while it runs (its partition was revoked past the deadline, or is
stopping) has its child stopped by pebble too, a moment later: pebble's manager
thread terminates it (SIGKILL after 3 s) and only then notifies waiters of the
cancelled future. `gone` turns that into a future the invoker hands to `Overruns`,
so the partition is released only once the child that held its batch has exited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from pebble import ProcessExpired
from pebble import ProcessPool as PebblePool

from worker.handling.handler import call_sync
from worker.records import Batch
from worker.sources.base import RecordTraits

log = logging.getLogger("worker.process_pool")

Packed = tuple[Any, str, str, dict[str, Any] | None]

_handler: Callable[[Batch], Any] | None = None
_traits: RecordTraits | None = None


class HandlerProcessDied(Exception):
    """A handler process died while it held the batch."""


class CallTimedOut(TimeoutError):
    """The call ran past `handler.timeout_s`; its process was killed and replaced."""


class HandlerResultNotPortable(Exception):
    """What a handler process raised or returned could not be pickled back to the worker."""


class RemoteTraceback(Exception):
    """The traceback of an error raised in a handler process, as its text."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a child makes its handler: `factory(*args)`, a module-level function."""

    factory: Callable[..., Callable[[Batch], Any]]
    args: tuple[Any, ...]


def pack(batch: Batch, traits: RecordTraits) -> Packed:
    return (traits.pack(batch.records), batch.source, batch.partition, batch.window)


def unpack(packed: Packed, traits: RecordTraits) -> Batch:
    records, source, label, window = packed
    return Batch(traits.unpack(records), source, label, window)


def _init(spec: ChildSpec, traits: RecordTraits, cwd: str) -> None:
    """Runs once in each child: build the handler, keep the source's unpacker."""
    global _handler, _traits
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    _handler = spec.factory(*spec.args)
    _traits = traits


def _pickled(value: Any) -> bytes | str:
    """`value` pickled, or (a str) why it cannot be."""
    try:
        return pickle.dumps(value)
    except Exception as exc:
        try:
            shown = f"{type(value).__name__}: {value}"
        except Exception:
            shown = type(value).__name__
        return f"{shown} (cannot be pickled: {type(exc).__name__})"


def _run(packed: Packed) -> tuple[bool, bytes | str, str]:
    """In a child: (True, pickled result, "") or (False, pickled error, its traceback)."""
    assert _handler is not None and _traits is not None, "the pool initializer did not run"
    try:
        result = call_sync(_handler, unpack(packed, _traits))
    except BaseException as exc:  # SystemExit too: the handler's, not the child's, exit
        return False, _pickled(exc), traceback.format_exc()
    if isinstance(result, list | tuple | set) and not isinstance(result, str | bytes):
        # Records do not travel back; their positions identify them just as well.
        result = [getattr(item, "position", item) for item in result]
    return True, _pickled(result), ""


def _reap(call: Future[Any], partition: str) -> None:
    """In the reaper thread: wait until pebble has stopped the child of a cancelled call."""
    concurrent.futures.wait([call])
    log.warning(
        "event=handler_process_killed partition=%s reason=cancelled note='the batch was "
        "abandoned (revoke or stop past the deadline); its process was stopped and is "
        "replaced'",
        partition,
    )


class ProcessPool:
    def __init__(self, spec: ChildSpec, traits: RecordTraits, processes: int) -> None:
        self._initargs = (spec, traits, os.getcwd())
        self._traits = traits
        self.size = processes
        self._pool = self._new_pool()
        #: Waits, one at a time, for the children of cancelled calls to be stopped.
        self._reaper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reaper")

    def _new_pool(self) -> PebblePool:
        return PebblePool(
            max_workers=self.size,
            initializer=_init,
            initargs=self._initargs,
            context=multiprocessing.get_context("spawn"),
        )

    async def run(self, batch: Batch, timeout_s: float | None = None) -> Any:
        """One call, awaited: its result, or the handler's error (the invoker uses `submit`)."""
        return await self.wait(self.submit(batch, timeout_s), batch.partition)

    async def wait(self, call: Future[Any], partition: str) -> Any:
        """The call's result, or the handler's error, or the pool's (timeout, dead child)."""
        try:
            value = await asyncio.wrap_future(call)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = self.failed(exc, partition)
            if error is exc:
                raise
            raise error from None
        return self.result(value)

    def submit(self, batch: Batch, timeout_s: float | None) -> Future[Any]:
        """Start the call in a child; past `timeout_s` of running, the child is killed."""
        packed = pack(batch, self._traits)
        try:
            return self._pool.schedule(_run, args=(packed,), timeout=timeout_s)
        except RuntimeError:  # the pool broke (a child died while none was busy)
            if self._pool.active:
                raise
            self._replace(batch.partition, "the process pool was broken")
            return self._pool.schedule(_run, args=(packed,), timeout=timeout_s)

    def gone(self, call: Future[Any], partition: str) -> Future[None]:
        """For a cancelled call: a future done once pebble has stopped the child running it
        (`concurrent.futures.wait` returns for a cancelled pebble future only then)."""
        return self._reaper.submit(_reap, call, partition)

    def result(self, value: Any) -> Any:
        """What the call returned, or the handler's error raised here."""
        ok, blob, text = value
        try:
            result = pickle.loads(blob) if isinstance(blob, bytes) else None
        except Exception as exc:  # e.g. an exception class whose __init__ wants more
            last = text.strip().splitlines()[-1:] or ["the result"]
            blob = f"{last[0]} (cannot be unpickled: {type(exc).__name__}: {exc})"
        if isinstance(blob, str):
            raise HandlerResultNotPortable(blob) from (RemoteTraceback(text) if text else None)
        if ok:
            return result
        raise result from RemoteTraceback(text)

    def failed(self, exc: BaseException, partition: str) -> BaseException:
        """The error to report for a call whose future itself failed."""
        if isinstance(exc, TimeoutError):
            log.warning(
                "event=handler_process_killed partition=%s reason=timeout note='the call ran "
                "past handler.timeout_s; its process was killed and is replaced'",
                partition,
            )
            return CallTimedOut(f"killed its handler process after {exc.args[-1]}s")
        if isinstance(exc, ProcessExpired):
            log.error(
                "event=handler_process_died partition=%s exitcode=%s note='batch fails and "
                "is retried; the process is replaced'",
                partition, exc.exitcode,
            )  # fmt: skip
            return HandlerProcessDied(f"a handler process died: exit code {exc.exitcode}")
        if isinstance(exc, BrokenProcessPool):
            if not self._pool.active:  # the first call to notice replaces it
                self._replace(partition, str(exc))
            return HandlerProcessDied(f"the handler process pool broke: {exc}")
        return exc

    def _replace(self, partition: str, why: str) -> None:
        log.error(
            "event=handler_process_died partition=%s reason=%r note='batch fails and is "
            "retried; the process pool is replaced'",
            partition, why,
        )  # fmt: skip
        broken, self._pool = self._pool, self._new_pool()
        broken.stop()

    def close(self) -> None:
        """Stop the children now: a handler still running in one is abandoned (uncommitted)."""
        self._reaper.shutdown(wait=False, cancel_futures=True)
        self._pool.stop()
        self._pool.join(timeout=10)
