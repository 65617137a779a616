"""A fresh broker's missing group coordinator is retried by aiokafka: not an ERROR line."""

from __future__ import annotations

import logging

from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

from worker.observe.logs import TRANSIENT_GAP_S, TRANSIENT_GRACE_S, DemoteTransient


def _record(err: Exception) -> logging.LogRecord:
    return logging.LogRecord(
        "aiokafka.consumer.group_coordinator", logging.ERROR, __file__, 1,
        "Group Coordinator Request failed: %s", (err,), None,
    )  # fmt: skip


def test_a_retriable_coordinator_lookup_failure_is_shown_as_info():
    record = _record(CoordinatorNotAvailableError())
    assert DemoteTransient().filter(record)
    assert (record.levelno, record.levelname) == (logging.INFO, "INFO")


def test_the_same_line_with_a_fatal_error_stays_an_error():
    record = _record(GroupAuthorizationFailedError())
    assert DemoteTransient().filter(record)
    assert record.levelno == logging.ERROR


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_lookup_that_keeps_failing_is_an_error_again_and_a_new_one_info_again():
    """No group coordinator, ever (an offsets topic whose replication factor the cluster
    cannot meet): the start waits for ever, and its only line must not say INFO."""
    clock = Clock()
    demote = DemoteTransient(clock)
    levels = {}
    for tenth in range(int(TRANSIENT_GRACE_S + 1) * 10):  # aiokafka retries every 0.1 s
        clock.now = tenth / 10
        record = _record(CoordinatorNotAvailableError())
        demote.filter(record)
        levels[clock.now] = record.levelno
    assert levels[0.0] == levels[TRANSIENT_GRACE_S - 0.1] == logging.INFO
    assert levels[TRANSIENT_GRACE_S] == levels[TRANSIENT_GRACE_S + 0.5] == logging.ERROR
    clock.now += TRANSIENT_GAP_S  # it passed; a later one is transient again
    record = _record(CoordinatorNotAvailableError())
    demote.filter(record)
    assert record.levelno == logging.INFO
