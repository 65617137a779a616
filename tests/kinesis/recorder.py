"""A handler for the Kinesis process tests: appends "shard position key seq" per record to
$RECORD_DIR/handled.<pid>, one write per batch, before returning.

Aimed fault: with $RECORD_HOLD_AFTER=N, every batch that starts once N records were handled
by this process is held: it appends "entered SHARD FIRST LAST" to $RECORD_DIR/entered.<pid>
and waits until $RECORD_DIR/release exists, so the test knows that batch is inside the
handler while it reads the checkpoints or kills the worker.
"""

import os
import time

import orjson

_fd = None
_handled = 0


def _hold(batch) -> None:
    first, last = batch.records[0].position, batch.records[-1].position
    record_dir = os.environ["RECORD_DIR"]
    fd = os.open(os.path.join(record_dir, f"entered.{os.getpid()}"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # fmt: skip
    try:
        os.write(fd, f"entered {batch.partition} {first} {last}\n".encode())
    finally:
        os.close(fd)
    while not os.path.exists(os.path.join(record_dir, "release")):
        time.sleep(0.05)


def handle(batch) -> None:
    global _fd, _handled
    if _fd is None:
        path = os.path.join(os.environ["RECORD_DIR"], f"handled.{os.getpid()}")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if 0 <= int(os.environ.get("RECORD_HOLD_AFTER", "-1")) <= _handled and batch.records:
        _hold(batch)
    time.sleep(float(os.environ.get("RECORD_SLEEP_S", "0")))
    lines = []
    for r in batch.records:
        body = orjson.loads(r.value)
        lines.append(f"{batch.partition} {r.position} {body['key']} {body['seq']}\n")
    os.write(_fd, "".join(lines).encode())
    _handled += len(lines)
