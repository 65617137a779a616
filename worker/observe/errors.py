"""The last few distinct handler failures, for the status page and `worker status`.

Grouped by partition, source position and error: a poison record retried
without end fails the same way every time, and as one line per failure it
pushed every other error out. Each group keeps a count and when it was first
and last seen; the groups seen most recently are kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

_MAX_ERROR_CHARS = 300


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@dataclass(slots=True)
class _Group:
    first_seen: float
    last_seen: float
    count: int = 1

    def seen_again(self, at: float) -> None:
        self.count += 1
        self.last_seen = at


class RecentErrors:
    """A bounded set of error groups that failure policies add to and the status reads."""

    def __init__(self, keep: int = 10) -> None:
        self._keep = keep
        self._groups: OrderedDict[tuple[str, str, str], _Group] = OrderedDict()

    def add(self, partition: str, position: str, error: str, now: float | None = None) -> None:
        """Count one failure of the records at `position` (a position, or first..last)."""
        at = time.time() if now is None else now
        key = (partition, position, error[:_MAX_ERROR_CHARS])
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = _Group(at, at)
            while len(self._groups) > self._keep:
                self._groups.popitem(last=False)
            return
        group.seen_again(at)
        self._groups.move_to_end(key)

    def snapshot(self) -> list[dict[str, object]]:
        """Oldest first, like a log: the group seen last is the last."""
        return [
            {
                "at": _iso(g.last_seen),
                "first_seen": _iso(g.first_seen),
                "last_seen": _iso(g.last_seen),
                "count": g.count,
                "partition": partition,
                "position": position,
                "error": error,
            }
            for (partition, position, error), g in self._groups.items()
        ]
