"""FoldRepeats against hostile log traffic: many distinct lines, odd messages, handler logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from worker.observe.logs import FoldRepeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: object, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.fixture
def wired() -> Iterator[tuple[FoldRepeats, io.StringIO, Clock]]:
    """A real handler with the fold on it, on the root logger, as `logs.setup` wires it."""
    clock = Clock()
    fold = FoldRepeats(window_s=60, clock=clock)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(fold)
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield fold, out, clock
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_many_distinct_lines_do_not_grow_the_fold_without_bound():
    """A library (or a handler) that formats its own messages (f-strings, str(exc) with a
    request id) makes every line a kind of its own: each stays in the dict for the
    process's life, one entry per line ever logged."""
    clock = Clock()
    fold = FoldRepeats(window_s=60, clock=clock)
    for n in range(50_000):
        fold.filter(_record("botocore.retryhandler", f"Retry needed, request id {n}"))
        clock.now += 0.01  # 500 s of traffic: most windows long closed
    assert len(fold._kinds) <= 10_000, f"{len(fold._kinds)} kinds kept"


def test_a_flood_that_stops_has_its_count_said_soon_after_its_window(wired):
    """`the rest of its minute are counted, and one line gives the count`: a flood that
    stops is never followed by another line of its kind, so its count waits for the end
    of the run (days later), while other lines keep flowing."""
    _, out, clock = wired
    for n in range(50):
        logging.getLogger("aiokafka.client").error("Unable connect to node with id %s", n)
    clock.now += 120  # two windows later, other lines go on
    for _ in range(3):
        logging.getLogger("worker.committer").info("event=commits_recovered after_s=20.0")
        clock.now += 10
    assert "log_lines_folded" in out.getvalue(), out.getvalue()


def test_a_message_whose_str_raises_does_not_raise_into_the_library_that_logged_it(wired):
    """Without the fold, logging's handleError reports a broken message and the caller
    goes on; the filter calls str(record.msg) itself, outside that protection."""

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    logging.raiseExceptions = False  # as in production: handleError stays quiet
    try:
        logging.getLogger("somelib").error(Broken())  # must not raise here
    finally:
        logging.raiseExceptions = True


def test_a_handlers_own_log_lines_are_not_folded(wired):
    """Lambda-style handlers log with the root logger (or their module's): one line per
    failed record is the application's own record of what it did; the fold is meant for
    client libraries' floods (README: aiokafka, botocore)."""
    _, out, _ = wired
    log = logging.getLogger()  # what an AWS Lambda handler uses
    for order in range(5):
        log.warning("payment declined for order %s", order)
    shown = [line for line in out.getvalue().splitlines() if "payment declined" in line]
    assert len(shown) == 5, out.getvalue()
