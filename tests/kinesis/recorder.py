"""A handler for the Kinesis process tests: appends "shard position key seq" per record to
$RECORD_DIR/handled.<pid>, one write per batch, before returning."""

import os
import time

import orjson

_fd = None


def handle(batch) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["RECORD_DIR"], f"handled.{os.getpid()}")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    time.sleep(float(os.environ.get("RECORD_SLEEP_S", "0")))
    lines = []
    for r in batch.records:
        body = orjson.loads(r.value)
        lines.append(f"{batch.partition} {r.position} {body['key']} {body['seq']}\n")
    os.write(_fd, "".join(lines).encode())
