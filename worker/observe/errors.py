"""The last few distinct handler failures, for the status page and `worker status`.

Grouped by partition, records and error: a poison record retried without end
fails the same way every time, and as one line per failure it pushed every other
error out. "The same records" means overlapping positions: bisecting a batch of
100 around one poison record fails 0..99, 0..49, 25..49, ... 37, and all of that
is one group (showing the latest, narrowest range), where grouping by the exact
range took seven of the ten places. Each group keeps a count and when it was
first and last seen; the groups seen most recently are kept.

What the endpoints show of an error is its type, the `file:line` that raised and at
most `SHOWN_MESSAGE_CHARS` of its message (`shown_error`): a handler's message often
quotes the record it failed on, and the port serves whoever reaches it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: Of a handler error's message, what the status page, /status.json and `worker status`
#: show: enough to tell errors apart, too little to carry a record's value.
SHOWN_MESSAGE_CHARS = 200
#: The type (a class name) and the cut message: a bound on what any error line holds.
_MAX_ERROR_CHARS = SHOWN_MESSAGE_CHARS + 120


#: How much of an error message and of a traceback a log line keeps: a handler that puts
#: a megabyte record in its message wrote a megabyte line on every retry.
LOGGED_ERROR_CHARS = 1000
LOGGED_TRACEBACK_CHARS = 16_000


def clipped(text: str, limit: int) -> str:
    """`text`, or its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...[{len(text) - 2 * half} characters]...{text[-half:]}"


def clip_error(text: str) -> str:
    return clipped(text, LOGGED_ERROR_CHARS)


def clip_traceback(text: str) -> str:
    return clipped(text, LOGGED_TRACEBACK_CHARS)


def shown_error(error_type: str, message: str) -> str:
    """`Type: message`, the message cut to `SHOWN_MESSAGE_CHARS` (saying how much was cut)."""
    if len(message) > SHOWN_MESSAGE_CHARS:
        message = f"{message[:SHOWN_MESSAGE_CHARS]}... ({len(message)} characters, cut)"
    return f"{error_type[:100]}: {message}"


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _span(position: str) -> tuple[int, int] | None:
    """ "17" or "10..19" as numbers (Kafka offsets, Kinesis sequence numbers); None for
    anything else, which then groups only with the same text."""
    first, _, last = position.partition("..")
    try:
        return int(first), int(last or first)
    except ValueError:
        return None


@dataclass(slots=True)
class _Group:
    partition: str
    position: str
    error: str
    first_seen: float
    last_seen: float
    where: str = ""
    count: int = 1

    def covers(self, partition: str, position: str, error: str) -> bool:
        if (partition, error) != (self.partition, self.error):
            return False
        mine, theirs = _span(self.position), _span(position)
        if mine is None or theirs is None:
            return position == self.position
        return mine[0] <= theirs[1] and theirs[0] <= mine[1]

    def seen_again(self, position: str, at: float, where: str) -> None:
        self.count += 1
        self.last_seen = at
        self.position = position
        self.where = where or self.where


class RecentErrors:
    """A bounded set of error groups that failure policies add to and the status reads."""

    def __init__(self, keep: int = 10) -> None:
        self._keep = keep
        self._groups: list[_Group] = []  # least recently seen first; at most `keep`

    def add(
        self,
        partition: str,
        position: str,
        error: str,
        now: float | None = None,
        where: str = "",
    ) -> None:
        """Count one failure of the records at `position` (a position, or first..last);
        `error` as `shown_error` makes it, `where` the `file:line` that raised."""
        at = time.time() if now is None else now
        error = error[:_MAX_ERROR_CHARS]
        for i, group in enumerate(self._groups):
            if group.covers(partition, position, error):
                group.seen_again(position, at, where[:200])
                self._groups.append(self._groups.pop(i))
                return
        self._groups.append(_Group(partition, position, error, at, at, where[:200]))
        del self._groups[: -self._keep]

    def snapshot(self) -> list[dict[str, object]]:
        """Oldest first, like a log: the group seen last is the last."""
        return [
            {
                "at": _iso(g.last_seen),
                "first_seen": _iso(g.first_seen),
                "last_seen": _iso(g.last_seen),
                "count": g.count,
                "partition": g.partition,
                "position": g.position,
                "error": g.error,
                "where": g.where,
            }
            for g in self._groups
        ]
