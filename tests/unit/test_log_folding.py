"""Library log floods are folded: the first line of a kind, then a count."""

from __future__ import annotations

import logging

import pytest

from worker.observe.logs import FoldRepeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_the_first_line_of_a_kind_is_shown_and_the_rest_of_its_minute_counted(
    caplog: pytest.LogCaptureFixture,
):
    clock = Clock()
    fold = FoldRepeats(window_s=60, clock=clock)
    template = "Unable connect to node with id %s: %s"
    shown = [fold.filter(_record("aiokafka.client", template, n, "refused")) for n in range(50)]
    assert shown == [True] + [False] * 49
    clock.now += 61
    with caplog.at_level(logging.INFO, logger="worker"):
        assert fold.filter(_record("aiokafka.client", template, 1, "refused"))
    (folded,) = [r.getMessage() for r in caplog.records if "log_lines_folded" in r.getMessage()]
    assert "count=49" in folded and "logger=aiokafka.client" in folded


def test_other_kinds_and_the_workers_own_lines_are_never_held_back():
    fold = FoldRepeats(window_s=60, clock=Clock())
    assert fold.filter(_record("aiokafka.client", "a %s", 1))
    assert fold.filter(_record("aiokafka.conn", "a %s", 1))  # another logger
    assert fold.filter(_record("aiokafka.client", "a %s", 1, level=logging.WARNING))
    assert fold.filter(_record("aiokafka.client", "b %s", 1))  # another sentence
    for _ in range(3):
        assert fold.filter(_record("worker", "event=commit_failed"))
        assert fold.filter(_record("worker.source.kafka", "event=brokers_unreachable"))


def test_flush_says_the_counts_still_held(caplog: pytest.LogCaptureFixture):
    fold = FoldRepeats(window_s=60, clock=Clock())
    for _ in range(5):
        fold.filter(_record("aiokafka.consumer.fetcher", "Failed fetch messages from %s", 1))
    with caplog.at_level(logging.INFO, logger="worker"):
        fold.flush()
        fold.flush()  # nothing held any more: says nothing
    folded = [r.getMessage() for r in caplog.records if "log_lines_folded" in r.getMessage()]
    assert len(folded) == 1 and "count=4" in folded[0]


def test_librdkafka_lines_fold_by_their_text_without_numbers(caplog: pytest.LogCaptureFixture):
    """confluent-kafka logs every librdkafka line with one template, "%s [%s] %s": by the
    template alone, one line of each level would have hidden all others for a minute
    (a session timeout behind a refused connection); by nothing, an outage logged 30
    lines a second."""
    clock = Clock()
    fold = FoldRepeats(window_s=60, clock=clock)
    refused = "[thrd:127.0.0.1:%d/bootstrap]: Connect to ipv4#127.0.0.1:%d failed: refused"

    def line(facility: str, text: str, level: int = logging.ERROR) -> bool:
        return fold.filter(_record("librdkafka", "%s [%s] %s", facility, "rdkafka#consumer-1",
                                   text, level=level))  # fmt: skip

    shown = [line("FAIL", refused % (port, port)) for port in range(9092, 9122)]
    assert shown == [True] + [False] * 29
    assert line("FAIL", "[thrd:GroupCoordinator]: Disconnected (after 1186ms in state UP)")
    assert line("SESSTMOUT", "Consumer group session timed out", level=logging.WARNING)
    clock.now += 61
    with caplog.at_level(logging.INFO, logger="worker"):
        assert line("FAIL", refused % (1, 1))
    (folded,) = [r.getMessage() for r in caplog.records if "log_lines_folded" in r.getMessage()]
    assert "count=29" in folded and "logger=librdkafka" in folded and "refused" in folded


def test_librdkafka_offset_resets_are_each_shown_they_name_what_was_skipped():
    """Adversary: "t [3]: offset reset (at offset 9000 ...)" differs from partition 0's
    only in numbers, so it was folded into a count: the one trace of the records a
    partition skipped (deleted by retention before they were read), and which partition,
    was gone. (Before librdkafka's lines were folded, each was shown.)"""
    fold = FoldRepeats(window_s=60, clock=Clock())
    reset = ("[thrd:main]: t [%d]: offset reset (at offset %d, broker 1) to offset BEGINNING"
             " (leader epoch -1): fetch failed due to requested offset not available on the "
             "broker: Broker: Offset out of range")  # fmt: skip

    def line(partition: int) -> bool:
        text = reset % (partition, 100 * partition)
        record = _record("librdkafka", "%s [%s] %s", "OFFSET", "rdkafka#consumer-1", text,
                         level=logging.WARNING)  # fmt: skip
        return fold.filter(record)

    shown = [line(p) for p in range(5)]
    assert shown == [True] * 5
