"""file://PATH.jsonl: one JSON object per failure event, appended and fsynced.

Each line holds the condition, the source and partition, first/last offset and
timestamps, the batch size, the error with its traceback, and the records
(key, value base64-encoded; headers), so they can be redriven. Positions past
64 bits (Kinesis and DynamoDB sequence numbers) are written as strings: JSON
numbers that size are not read exactly by most parsers (orjson refuses to write
them at all, which used to leave such a partition retrying its dead letter forever).

A line is acknowledged only once all of it is written and synced. `write(2)` may write
less than it was given without an error (a disk filling up, a file size limit: the
next call is the one that fails); a single `os.write` took that as done, so the event
was acknowledged, its records committed, and its line cut short, unreadable, with the
next event's line glued to it. A write that fails part way is cut off again (writes
are serialised, so no other line follows it yet), and a line torn by a crash before
(kill -9 inside a write) is ended with a newline before the next one is appended.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import orjson

from worker.destinations.base import DestinationError, FailureEvent
from worker.encoding import b64, json_position


def event_document(event: FailureEvent) -> dict[str, Any]:
    records = event.records
    first, last = records[0], records[-1]
    return {
        "condition": event.condition,
        "source": event.source,
        "topic": first.topic,
        "partition": event.partition,
        "first_offset": json_position(first.position),
        "last_offset": json_position(last.position),
        "first_timestamp_ms": first.timestamp_ms,
        "last_timestamp_ms": last.timestamp_ms,
        "batch_size": len(records),
        "attempts": event.attempts,
        "failed_at_ms": event.failed_at_ms,
        "error": {
            "type": event.error_type,
            "message": event.error_message,
            "traceback": event.traceback,
            "at": event.where,
        },
        "records": [
            {
                "offset": json_position(r.position),
                "timestamp_ms": r.timestamp_ms,
                "key": b64(r.key),
                "value": b64(r.value),
                "headers": [[k, b64(v)] for k, v in r.headers],
            }
            for r in records
        ],
    }


class FileDestination:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.name = f"file://{path}"
        #: One write at a time (partitions give up concurrently, each in its own thread):
        #: a failed write is cut off where it began, which must not cut another's line.
        self._writing = threading.Lock()

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if not await asyncio.to_thread(os.path.isdir, directory):
            raise DestinationError(f"errors.on_failure {self.name}: no directory {directory}")

    async def send(self, event: FailureEvent) -> None:
        try:
            line = orjson.dumps(event_document(event)) + b"\n"
        except TypeError as exc:  # nothing a handler wrote reaches here (base.utf8_safe)
            raise DestinationError(f"{self.name}: cannot write the event as JSON: {exc}") from exc
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise DestinationError(f"{self.name}: {exc}") from exc

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with self._writing:
                start = os.fstat(fd).st_size
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    line = b"\n" + line  # end a line a crash tore, so this one stays whole
                try:
                    write_all(fd, line)
                except OSError:
                    os.ftruncate(fd, start)  # no part of an unacknowledged line stays
                    raise
            os.fsync(fd)
        finally:
            os.close(fd)

    async def stop(self) -> None:
        return None


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a short write (no error) is followed by another, which either
    writes on or raises the error that stopped the first (ENOSPC, EFBIG, ...)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
