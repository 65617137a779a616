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
start with a clear message. A child that dies (segfault, os._exit, OOM kill)
breaks the pool: the batch in flight fails into the normal retry path, the
error says so, and a new pool replaces the broken one. A timed-out batch
cannot be taken from its child: it runs on, and its result is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from worker.handling.handler import call_sync
from worker.records import Batch
from worker.sources.base import RecordTraits

log = logging.getLogger("worker.process_pool")

Packed = tuple[Any, str, str, dict[str, Any] | None]

_handler: Callable[[Batch], Any] | None = None
_traits: RecordTraits | None = None


class HandlerProcessDied(Exception):
    """A handler process died while it held the batch."""


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


def _run(packed: Packed) -> Any:
    assert _handler is not None and _traits is not None, "the pool initializer did not run"
    result = call_sync(_handler, unpack(packed, _traits))
    if isinstance(result, list | tuple | set) and not isinstance(result, str | bytes):
        # Records do not travel back; their positions identify them just as well.
        return [getattr(item, "position", item) for item in result]
    return result


class ProcessPool:
    def __init__(self, spec: ChildSpec, traits: RecordTraits, processes: int) -> None:
        self._initargs = (spec, traits, os.getcwd())
        self._traits = traits
        self._processes = processes
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=self._initargs,
        )

    async def run(self, batch: Batch) -> Any:
        pool = self._pool
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, _run, pack(batch, self._traits))
        except BrokenProcessPool as exc:
            if self._pool is pool:  # the first to notice replaces it
                log.error(
                    "event=handler_process_died partition=%s note='batch fails and is retried; "
                    "the process pool is replaced'",
                    batch.partition,
                )
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise HandlerProcessDied(f"a handler process died: {exc}") from None

    def close(self) -> None:
        """Stop the children now: a handler still running in one is abandoned (uncommitted)."""
        processes = list(getattr(self._pool, "_processes", {}).values())
        for process in processes:
            process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
