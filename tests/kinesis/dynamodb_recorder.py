"""A handler for the DynamoDB process tests: appends "shard position device event version" per
record to $RECORD_DIR/handled.<pid>, one write per batch, before returning.

Aimed fault: with $RECORD_HOLD_AFTER=N, the first batch that starts once N records were
handled by this process is held: it appends "entered SHARD FIRST LAST" to
$RECORD_DIR/entered.<pid> and waits until $RECORD_DIR/release exists, so the test knows
that batch is inside the handler while it reads the checkpoints or kills the worker.
"""

import os
import time

_fd = None
_handled = 0


def _append(name: str, line: str) -> None:
    fd = os.open(os.path.join(os.environ["RECORD_DIR"], f"{name}.{os.getpid()}"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # fmt: skip
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def handle(batch) -> None:
    global _handled
    hold_after = int(os.environ.get("RECORD_HOLD_AFTER", "-1"))
    first, last = batch.records[0].position, batch.records[-1].position
    if 0 <= hold_after <= _handled:
        _append("entered", f"entered {batch.partition} {first} {last}\n")
        while not os.path.exists(os.path.join(os.environ["RECORD_DIR"], "release")):
            time.sleep(0.05)
    time.sleep(float(os.environ.get("RECORD_SLEEP_S", "0")))
    lines = []
    for r in batch.records:
        image = r.new_image or r.old_image
        device = r.keys["device_id"]["S"]
        lines.append(f"{batch.partition} {r.position} {device} {r.event_name} "
                     f"{image['version']['N']}\n")  # fmt: skip
    _append("handled", "".join(lines))
    _handled += len(lines)
