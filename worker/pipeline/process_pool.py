"""`concurrency = "process"`: plain handlers run in a pool of worker processes.

For CPU-bound handlers, which a thread pool cannot spread over cores. A batch
crosses to a child as a few flat lists (offsets, timestamps, keys, values,
headers) that pickle at C speed, not as one client object per record; the
child rebuilds light records and calls the handler. The handler is imported
in each child by the pool's initializer; the parent imports it first, so an
import error fails the start with a clear message. A child that dies
(segfault, os._exit, OOM kill) breaks the pool: the batch in flight fails
into the normal retry path, the error says so, and a new pool replaces the
broken one. A timed-out batch cannot be taken from its child: it runs on,
and its result is ignored.
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
from typing import Any

from worker.records import Batch
from worker.sources.memory import MemoryRecord

log = logging.getLogger("worker.process_pool")

Packed = tuple[str, int, str, str, list[int], list[int], list[Any], list[Any], list[Any], list[Any]]

_handler: Callable[[Batch], Any] | None = None


class HandlerProcessDied(Exception):
    """A handler process died while it held the batch."""


def pack(batch: Batch) -> Packed:
    rs = batch.records
    first = rs[0]
    return (
        first.topic,
        first.partition,
        batch.source,
        batch.partition,
        [r.offset for r in rs],
        [r.timestamp_ms for r in rs],
        [r.key for r in rs],
        [r.value for r in rs],
        [r.headers for r in rs],
        [getattr(r, "sequence_number", None) for r in rs],
    )


def unpack(packed: Packed) -> Batch:
    topic, partition, source, label, offsets, stamps, keys, values, headers, sequences = packed
    records = [
        MemoryRecord(topic, partition, o, k, v, t, h, s)
        for o, t, k, v, h, s in zip(offsets, stamps, keys, values, headers, sequences, strict=True)
    ]
    return Batch(records, source, label)


def _init(target: str, style: str, config_json: str, source: str, cwd: str) -> None:
    """Runs once in each child: import the handler (and wrap it for Lambda style)."""
    global _handler
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    from worker.config import WorkerConfig
    from worker.pipeline.invoker import load_handler

    fn = load_handler(target)
    if style == "lambda":
        from worker.lambda_compat.adapter import lambda_style

        config = WorkerConfig.model_validate_json(config_json)
        fn, _ = lambda_style(fn, config, source)
    _handler = fn


def _run(packed: Packed) -> Any:
    assert _handler is not None, "the pool initializer did not run"
    result = _handler(unpack(packed))
    if isinstance(result, list | tuple | set) and not isinstance(result, str | bytes):
        # Records do not travel back; their positions identify them just as well.
        return [getattr(item, "position", item) for item in result]
    return result


class ProcessPool:
    def __init__(
        self, target: str, style: str, config_json: str, source: str, processes: int
    ) -> None:
        self._initargs = (target, style, config_json, source, os.getcwd())
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
            return await loop.run_in_executor(pool, _run, pack(batch))
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
