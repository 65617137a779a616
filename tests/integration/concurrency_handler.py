"""A handler that measures its own concurrency: how many of its calls run at once.

Each call appends the number of calls running at its entry to
`$RECORD_DIR/concurrency.<pid>`, and "partition offset key" per record to
`$RECORD_DIR/handled.<pid>` (as `recording_handler`), one `os.write` per batch.
"""

from __future__ import annotations

import asyncio
import os

_DIR = os.environ.get("RECORD_DIR", ".")
_running = 0


def _append(name: str, text: str) -> None:
    path = os.path.join(_DIR, f"{name}.{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


async def handle(batch) -> None:
    global _running
    _running += 1
    try:
        _append("concurrency", f"{_running}\n")
        await asyncio.sleep(0.005)  # long enough for other lanes to start meanwhile
        key = lambda r: r.key.decode() if r.key else "-"  # noqa: E731
        _append("handled", "".join(f"{r.partition} {r.offset} {key(r)}\n" for r in batch.records))
    finally:
        _running -= 1
