"""A handler for integration tests: appends "partition offset size sha256" per record.

To `$RECORD_DIR/sized.<pid>`, one `os.write` per batch: a test learns that a record
arrived whole, not only that its offset did.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

_PATH = os.path.join(os.environ.get("RECORD_DIR", "."), f"sized.{os.getpid()}")


async def handle(batch: Any) -> None:
    lines = "".join(
        f"{r.partition} {r.offset} {len(r.value)} {hashlib.sha256(r.value).hexdigest()}\n"
        for r in batch.records
    )
    fd = os.open(_PATH, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)
