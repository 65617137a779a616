"""A fresh broker's missing group coordinator is retried by aiokafka: not an ERROR line."""

from __future__ import annotations

import logging

from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

from worker.observe.logs import DemoteTransient


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
