"""The handler the Kinesis rolling-fault test runs in each `worker run` process.

Copied into the test's directory and named `handler.target = "rolling_handler:handle"`.
Per record it appends `shard_index sequence_number device seq pid monotonic wall` to
`$FAULT_LOG_DIR/handled.<pid>` with one `os.write` per batch (O_APPEND), after
sleeping `$FAULT_SLEEP_S`: writing is the handler's side effect, so a kill during the
sleep leaves a batch unhandled that must not have been checkpointed. Standard library
only; it knows the handler API and nothing else of the worker.
"""

from __future__ import annotations

import json
import os
import threading
import time

_DIR = os.environ.get("FAULT_LOG_DIR", ".")
_SLEEP_S = float(os.environ.get("FAULT_SLEEP_S", "0"))
_lock = threading.Lock()
_fd: int | None = None


def _log_fd() -> int:
    global _fd
    with _lock:
        if _fd is None:
            path = os.path.join(_DIR, f"handled.{os.getpid()}")
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return _fd


def handle(batch) -> None:  # the worker's Batch of one shard
    if _SLEEP_S:
        time.sleep(_SLEEP_S)
    pid, shard = os.getpid(), int(str(batch.partition).rsplit("-", 1)[1])
    lines = []
    for record in batch.records:
        reading = json.loads(record.value)
        lines.append(
            f"{shard} {record.position} {reading['device_id']} {reading['seq']} {pid} "
            f"{time.monotonic():.6f} {time.time():.6f}\n"
        )
    os.write(_log_fd(), "".join(lines).encode())
