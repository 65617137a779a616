"""Log setup: one line per event that matters, never one per record.

JSON lines on stdout by default (orjson), for log shippers: `ts`, `level`,
`logger`, `message`, and every `key=value` of our event messages as a field of
its own (`event`, `partition`, ...). `runtime.log_format = "text"` prints the
same lines for humans.

Client libraries repeat themselves: with two of three brokers down aiokafka
logs about 50 ERROR lines a second, each the same sentence with another node
id. Their lines are folded: the first of a kind is shown, the rest of its
minute are counted, and one `event=log_lines_folded` line gives the count.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable

import orjson

_FIELD = re.compile(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        for key, value in _FIELD.findall(message):
            if key not in doc:
                doc[key] = value[1:-1] if value[:1] in "'\"" else value
        doc["message"] = message
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


#: How long the lines of one kind are counted, not shown, after the first of them.
FOLD_WINDOW_S = 60.0
#: Kinds kept at most: lines formatted before logging (an id in each) are kinds of their
#: own; past this many, closed windows are dropped (their counts said), and a new kind
#: that still finds no room is shown and not tracked.
MAX_KINDS = 1000


#: The client libraries whose lines are folded; handlers' and our own lines never are.
FOLDED_LIBRARIES = frozenset(
    {"aiokafka", "kafka", "librdkafka", "botocore", "aiobotocore", "urllib3", "aiohttp"}
)
#: A template that says nothing of its own, only where its arguments go: confluent-kafka
#: logs every librdkafka line as "%s [%s] %s" (facility, client, text). Its kind is then
#: the line with the numbers taken out: in an outage librdkafka logged 30 lines a second
#: of "FAIL ... Connect to ipv4#127.0.0.1:46113 failed: Connection refused".
_PLACEHOLDERS = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdifrx%]")
_NUMBERS = re.compile(r"\d+")
#: librdkafka facilities whose every line is shown: an "OFFSET" line says a partition's
#: position was reset (records skipped: deleted by retention before they were read),
#: naming the partition and the offset, and is the only trace of it. Folded by its text
#: without numbers, a second partition's reset was only a count.
UNFOLDED_FACILITIES = frozenset({"OFFSET"})
#: How often any line passing by also says the counts of windows that closed.
SWEEP_S = 1.0


class FoldRepeats(logging.Filter):
    """Shows the first line of a kind from a client library, counts the rest of its window.

    A kind is (logger, level, message template), so "Unable connect to node with id
    %s" is one kind whatever the node. Only the libraries in `FOLDED_LIBRARIES` are
    folded: the worker's lines already say each thing once, and a handler's lines are
    the user's to judge. Once a kind's window has closed, its count goes out with the
    next line of any logger (at most one sweep a second), so a flood that stopped is
    summed up soon after, not at exit; `flush()` says what is still held.
    """

    def __init__(
        self, window_s: float = FOLD_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()  # handler threads (to_thread, pools) log too
        #: kind -> (when its window opened, lines held back since)
        self._kinds: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._swept_at = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now - self._swept_at >= SWEEP_S:
            self._sweep(now)
        if record.name.partition(".")[0] not in FOLDED_LIBRARIES:
            return True
        try:
            template = _template(record)
        except Exception:
            return True  # the handler's formatting reports it (handleError), not the caller
        if template is None:
            return True
        kind = (record.name, record.levelno, template)
        with self._lock:
            opened, held = self._kinds.get(kind, (now - self._window_s, 0))
            if now - opened < self._window_s:
                self._kinds[kind] = (opened, held + 1)
                return False
            if kind in self._kinds or len(self._kinds) < MAX_KINDS:
                self._kinds[kind] = (now, 0)  # else shown, not tracked: the table is full
        if held:
            _say_folded(kind, held, now - opened)
        return True

    def _sweep(self, now: float) -> None:
        """Say and forget the kinds whose window closed (which also bounds the table)."""
        with self._lock:
            self._swept_at = now
            closed = [(k, h, now - o) for k, (o, h) in self._kinds.items()
                      if now - o >= self._window_s]  # fmt: skip
            for k, _, _ in closed:
                del self._kinds[k]
        for kind, held, over in closed:
            if held:
                _say_folded(kind, held, over)

    def flush(self) -> None:
        now = self._clock()
        with self._lock:
            pending = [(k, held, now - opened) for k, (opened, held) in self._kinds.items() if held]
            self._kinds = {k: (opened, 0) for k, (opened, _) in self._kinds.items()}
        for kind, held, over in pending:
            _say_folded(kind, held, over)


def _template(record: logging.LogRecord) -> str | None:
    """What makes lines of one logger and level one kind: the message's template, or the
    line without its numbers when the template has no words of its own; None for a line
    never folded (`UNFOLDED_FACILITIES`)."""
    template = str(record.msg)
    if record.args and not any(c.isalpha() for c in _PLACEHOLDERS.sub("", template)):
        args = record.args
        if isinstance(args, tuple) and args[0] in UNFOLDED_FACILITIES:
            return None
        return _NUMBERS.sub("#", record.getMessage())
    return template


def _say_folded(kind: tuple[str, int, str], held: int, over_s: float) -> None:
    name, level, template = kind
    logging.getLogger("worker").log(
        level, "event=log_lines_folded logger=%s count=%d over_s=%.0f like=%r",
        name, held, over_s, template,
    )  # fmt: skip


#: aiokafka lines it logs as ERROR for a condition it retries and that passes by itself: a
#: fresh broker creates its offsets topic on the first group's lookup, so every first start
#: logged "Group Coordinator Request failed: [Error 15] CoordinatorNotAvailableError".
TRANSIENT_TEMPLATES = frozenset({"Group Coordinator Request failed: %s"})
#: How long such a condition is shown as INFO. A fresh broker's offsets topic takes seconds;
#: one still failing after this will not pass by itself (an offsets topic whose replication
#: factor the cluster cannot meet: no group ever starts) and is an ERROR again.
TRANSIENT_GRACE_S = 30.0
#: A pause this long between two of its lines ends a condition: the next starts afresh.
TRANSIENT_GAP_S = 10.0


class DemoteTransient(logging.Filter):
    """Shows a client library's ERROR about a retriable error it retries as INFO, for a while.

    Only a line in `TRANSIENT_TEMPLATES` whose error says it is retriable: the same
    sentence with a fatal error stays an ERROR, and so does one that has gone on for
    `TRANSIENT_GRACE_S` (its lines at most `TRANSIENT_GAP_S` apart).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        #: template -> (when its current run of lines began, its last line)
        self._runs: dict[str, tuple[float, float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.msg in TRANSIENT_TEMPLATES:
            args = record.args if isinstance(record.args, tuple) else ()
            if args and getattr(args[0], "retriable", False) and self._young(record.msg):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True

    def _young(self, template: str) -> bool:
        now = self._clock()
        began, last = self._runs.get(template, (now, now))
        if now - last >= TRANSIENT_GAP_S:
            began = now
        self._runs[template] = (began, now)
        return now - began < TRANSIENT_GRACE_S


_fold = FoldRepeats()


def flush_folded() -> None:
    """Say how many library lines are still held back (at the end of a run)."""
    _fold.flush()


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(DemoteTransient())
    handler.addFilter(_fold)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime  # type: ignore[assignment]
    else:
        formatter = logging.Formatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every group change at INFO; ours already say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
