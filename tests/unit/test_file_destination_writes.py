"""A `file://` destination acknowledges an event only once its whole line is written.

`write(2)` may write part of what it was given without an error when the disk fills up
or the file reaches a size limit; the next write is the one that fails. A single
`os.write` took the short write as done: the event was acknowledged (its records
committed) with its line cut short, unreadable, and the next event's line was glued to
the cut one. The fault is real, at the kernel: a child process runs the destination
under `RLIMIT_FSIZE`, where a write crossing the limit is short, and the next fails
with EFBIG (as with ENOSPC on a full disk, which no test here can make).
"""

import subprocess
import sys
from pathlib import Path

import orjson

from worker.destinations.base import FailureEvent
from worker.destinations.dlq_read import file_entries
from worker.destinations.file import FileDestination
from worker.testing import make_batch

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, os, resource, signal, sys
from worker.destinations.base import DestinationError
from tests.unit.test_file_destination_writes import event
from worker.destinations.file import FileDestination

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal's kill


async def main():
    destination = FileDestination(sys.argv[1])
    await destination.send(event(0))
    size = os.path.getsize(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, resource.RLIM_INFINITY))
    try:
        await destination.send(event(1))  # crosses the limit half way
        print("acknowledged")
    except DestinationError:
        print("refused")
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    await destination.send(event(1))  # the partition's retry, once there is room


asyncio.run(main())
"""


def event(offset: int) -> FailureEvent:
    records = make_batch([b"v" * 3000], first_offset=offset).records
    return FailureEvent("RetryAttemptsExhausted", "memory", "test-0", records, 1, "E", "m")


def test_a_write_cut_short_by_a_file_size_limit_is_refused_and_leaves_no_partial_line(tmp_path):
    path = tmp_path / "dlq.jsonl"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["refused"]
    entries = list(file_entries(path))  # every line an event: none cut, none glued
    assert [e.source_position for e in entries] == ["test-0@0", "test-0@1"]


async def test_a_line_torn_by_a_crash_is_ended_before_the_next_event_is_appended(tmp_path):
    """kill -9 inside a write can leave part of a line (the kernel stops a write between
    pages); the next event's line must not be glued to it."""
    path = tmp_path / "dlq.jsonl"
    destination = FileDestination(str(path))
    await destination.send(event(0))
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:100])  # a second line, torn
    await destination.send(event(1))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and lines[-3] == whole[:100]
    assert orjson.loads(lines[-2])["first_offset"] == 1
