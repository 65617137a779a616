"""A handler for integration tests: appends "partition offset key" per record to a file.

The file is `$RECORD_DIR/handled.<pid>`, written with one `os.write` per batch
(O_APPEND) before the handler returns, so after a kill -9 the file holds
exactly what the worker had handled. `$RECORD_SLEEP_S` makes each batch slow;
`$RECORD_STARTED` names a file created when a batch starts.
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
_fd: int | None = None


def handle(batch) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(_DIR, f"handled.{os.getpid()}")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if _STARTED:
        with open(_STARTED, "a") as fh:
            fh.write(f"{batch.partition} {batch.first_position} {batch.last_position}\n")
    if _SLEEP_S:
        time.sleep(_SLEEP_S)
    if _POISON and any((r.partition, r.offset) in _POISON for r in batch.records):
        raise ValueError("poison record")
    lines = "".join(
        f"{r.partition} {r.offset} {r.key.decode() if r.key else '-'}\n" for r in batch.records
    )
    os.write(_fd, lines.encode())
