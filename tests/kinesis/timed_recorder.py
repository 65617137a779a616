"""A handler for the Kinesis hand-off tests: sleeps $RECORD_SLEEP_S per batch, then appends
"pid shard position key seq started ended" per record (wall clock, shared by the
processes of one machine) to $RECORD_DIR/timed.<pid>, one write per batch."""

import os
import time

import orjson

_fd = None


def handle(batch) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["RECORD_DIR"], f"timed.{os.getpid()}")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    started = time.time()
    time.sleep(float(os.environ.get("RECORD_SLEEP_S", "0")))
    ended = time.time()
    lines = []
    for r in batch.records:
        body = orjson.loads(r.value)
        lines.append(f"{os.getpid()} {batch.partition} {r.position} {body['key']} {body['seq']} "
                     f"{started:.6f} {ended:.6f}\n")  # fmt: skip
    os.write(_fd, "".join(lines).encode())
