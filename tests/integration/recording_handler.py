"""A handler for integration tests: appends "partition offset key" per record to a file.

The file is `$RECORD_DIR/handled.<pid>`, written with one `os.write` per batch
(O_APPEND) before the handler returns, so after a kill -9 the file holds
exactly what the worker had handled. `$RECORD_SLEEP_S` makes each batch slow;
`$RECORD_STARTED` names a file that gets "topic-partition first last" per invocation.

Aimed faults: `$RECORD_HOLD` ("PARTITION:OFFSET,...") holds every batch of that
partition holding an offset at or past OFFSET. A held batch appends
"entered PARTITION FIRST LAST" to `$RECORD_GATE/entered` and waits until the test
creates `$RECORD_GATE/release` (at most `$RECORD_HOLD_TIMEOUT_S`, then the batch
fails and is retried, so an unreleased hold stays held); after handling it appends
"exited PARTITION FIRST LAST" to `$RECORD_GATE/exited`. So the test knows which
batch is inside the handler while it reads the committed offsets, kills the
worker or stops it. Records of `$RECORD_BARRIER_TOPIC` are neither held nor
recorded: the test uses them to learn when the worker's commits have caught up.
"""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("RECORD_DIR", ".")
_SLEEP_S = float(os.environ.get("RECORD_SLEEP_S", "0"))
_STARTED = os.environ.get("RECORD_STARTED")
#: "PARTITION:OFFSET,..." records that make any batch holding them raise.
_POISON = {
    tuple(map(int, item.split(":")))
    for item in os.environ.get("RECORD_POISON", "").split(",")
    if item
}
#: partition -> offset from which its batches are held.
_HOLD = {
    int(p): int(o)
    for p, o in (item.split(":") for item in os.environ.get("RECORD_HOLD", "").split(",") if item)
}
_GATE = os.environ.get("RECORD_GATE", ".")
_HOLD_TIMEOUT_S = float(os.environ.get("RECORD_HOLD_TIMEOUT_S", "120"))
_BARRIER_TOPIC = os.environ.get("RECORD_BARRIER_TOPIC")
_fd: int | None = None


def _append(name: str, line: str) -> None:
    fd = os.open(os.path.join(_GATE, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _hold(partition: int, first: int, last: int) -> bool:
    """Wait for the test's release of a held batch; True if this batch was held."""
    release = os.path.join(_GATE, "release")
    if os.path.exists(release):
        return False
    _append("entered", f"entered {partition} {first} {last}\n")
    deadline = time.monotonic() + _HOLD_TIMEOUT_S
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test did not release the batch {partition} {first}..{last}")
        time.sleep(0.005)
    return True


def handle(batch) -> None:
    global _fd
    records = batch.records
    if _BARRIER_TOPIC is not None and records and records[0].topic == _BARRIER_TOPIC:
        return
    if _fd is None:
        path = os.path.join(_DIR, f"handled.{os.getpid()}")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if _STARTED:
        with open(_STARTED, "a") as fh:
            fh.write(f"{batch.partition} {batch.first_position} {batch.last_position}\n")
    held = False
    if _HOLD and records:
        p, first, last = records[0].partition, records[0].offset, records[-1].offset
        if p in _HOLD and last >= _HOLD[p]:
            held = _hold(p, first, last)
    if _SLEEP_S:
        time.sleep(_SLEEP_S)
    if _POISON and any((r.partition, r.offset) in _POISON for r in records):
        raise ValueError("poison record")
    lines = "".join(
        f"{r.partition} {r.offset} {r.key.decode() if r.key else '-'}\n" for r in records
    )
    os.write(_fd, lines.encode())
    if held:
        _append("exited", f"exited {p} {first} {last}\n")
