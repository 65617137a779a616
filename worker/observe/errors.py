"""The last few handler failures, for the status page and `worker status`."""

from __future__ import annotations

import time
from collections import deque


class RecentErrors:
    """A bounded log that failure policies append to and the status view reads."""

    def __init__(self, keep: int = 10) -> None:
        self._items: deque[dict[str, str]] = deque(maxlen=keep)

    def add(self, partition: str, error: str) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._items.append({"at": at, "partition": partition, "error": error[:300]})

    def snapshot(self) -> list[dict[str, str]]:
        return list(self._items)
