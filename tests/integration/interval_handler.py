"""A handler for the revoke tests: records when each call of a partition runs, and where.

Every line goes to `$INTERVAL_FILE` with one `os.write` (O_APPEND), so lines of all
worker processes (and their handler processes) land in one file in the order they
happened. Times are `time.monotonic()`, one clock for every process of the machine.

- `start OWNER CHILD PARTITION FIRST LAST T` when a call begins; `end ...` when it
  returns. OWNER is the worker process (the parent, in a handler process), CHILD the
  process the call runs in.
- `tick OWNER CHILD PARTITION T` every 20 ms while a held call waits, so a call that
  never returns (killed with its process) still shows until when it ran.
- `rec OWNER PARTITION OFFSET KEY SEQ`, one per record, written just before the call
  returns: what a downstream store would see, in order.

Aimed fault: the first batch of a partition holding `$HOLD_OFFSET` or later (once per
`$HOLD_DIR`, across processes) is held: it says so with its `start` line and ticks
until `$HOLD_DIR/release` exists (at most 50 s).
"""

from __future__ import annotations

import multiprocessing
import os
import time

import orjson

_FILE = os.environ["INTERVAL_FILE"]
_HOLD_OFFSET = int(os.environ.get("HOLD_OFFSET", "-1"))
_HOLD_DIR = os.environ.get("HOLD_DIR", ".")


def _write(line: str) -> None:
    fd = os.open(_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _first_hold(partition: int) -> bool:
    try:
        fd = os.open(os.path.join(_HOLD_DIR, f"held-{partition}"), os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def handle(batch) -> None:
    records = batch.records
    parent = multiprocessing.parent_process()
    owner, child = (parent.pid if parent is not None else os.getpid()), os.getpid()
    p, first, last = records[0].partition, records[0].offset, records[-1].offset
    _write(f"start {owner} {child} {p} {first} {last} {time.monotonic()}\n")
    if _HOLD_OFFSET >= 0 and last >= _HOLD_OFFSET and _first_hold(p):
        release = os.path.join(_HOLD_DIR, "release")
        deadline = time.monotonic() + 50
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
            _write(f"tick {owner} {child} {p} {time.monotonic()}\n")
    lines = []
    for r in records:
        value = orjson.loads(r.value)
        lines.append(f"rec {owner} {p} {r.offset} {value['key']} {value['seq']}\n")
    _write("".join(lines) + f"end {owner} {child} {p} {first} {last} {time.monotonic()}\n")
