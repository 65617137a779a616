"""The handler the fault tests run in the worker: it records every record it is given.

Copied into the test's directory as `fault_handler.py` and named by
`handler.target = "fault_handler:handle"`; the worker imports it with its working
directory first on `sys.path`. Standard library only, and it knows nothing of the
worker beyond the handler API (`batch.records`, each with `key`, `value`,
`partition`, `offset`).

Per record it appends `partition offset key seq pid monotonic wall` to
`$FAULT_LOG_DIR/handled.<pid>`, one `os.write` per batch on an O_APPEND file, so
after a kill -9 the file holds exactly what the process had handled. Writing the
lines is the handler's side effect; returning is its acknowledgement. So a batch
whose handler is killed after writing has been handled but must not be committed,
and must be handled again.

`$FAULT_HOLD` names a file: while it exists, the first batch of this process
(one only) writes its lines, then appends `inside PID PARTITION FIRST LAST` to
`$FAULT_MARKS`, sleeps `$FAULT_HOLD_S` and appends `returned ...` before it
returns. The test kills the worker on seeing `inside`; a missing `returned` then
proves the kill landed while the handler was running.

`$FAULT_SLEEP_S` (default 0): every batch sleeps this long *before* writing its lines,
so a kill at a random moment often lands inside a batch that has not been handled
yet; a worker that had committed such a batch has lost it, and the checker says so.
"""

from __future__ import annotations

import json
import os
import threading
import time

_DIR = os.environ.get("FAULT_LOG_DIR", ".")
_HOLD = os.environ.get("FAULT_HOLD", "")
_MARKS = os.environ.get("FAULT_MARKS", os.path.join(_DIR, "marks.log"))
_HOLD_S = float(os.environ.get("FAULT_HOLD_S", "5"))
_SLEEP_S = float(os.environ.get("FAULT_SLEEP_S", "0"))
_lock = threading.Lock()  # plain handlers run in the worker's thread pool
_fd: int | None = None
_held = False


def _log_fd() -> int:
    global _fd
    with _lock:
        if _fd is None:
            path = os.path.join(_DIR, f"handled.{os.getpid()}")
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return _fd


def _mark(text: str) -> None:
    fd = os.open(_MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


def _take_hold() -> bool:
    global _held
    if not _HOLD or not os.path.exists(_HOLD):
        return False
    with _lock:
        if _held:
            return False
        _held = True
        return True


def handle(batch) -> None:  # `batch` is the worker's Batch; this module imports no worker
    pid = os.getpid()
    if _SLEEP_S:
        time.sleep(_SLEEP_S)  # the handler's work, before its side effect
    lines = []
    for record in batch.records:
        reading = json.loads(record.value)
        lines.append(
            f"{record.partition} {record.offset} {reading['device_id']} {reading['seq']} "
            f"{pid} {time.monotonic():.6f} {time.time():.6f}\n"
        )
    os.write(_log_fd(), "".join(lines).encode())
    if _take_hold():
        first, last = batch.records[0], batch.records[-1]
        where = f"{pid} {first.partition} {first.offset} {last.offset}"
        _mark(f"inside {where}")
        time.sleep(_HOLD_S)  # the window for the kill: the test waits for the mark, not this
        _mark(f"returned {where}")
