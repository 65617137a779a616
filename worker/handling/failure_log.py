"""How a failed invocation is reported: one log line, its traceback once per distinct
error, and the partition's recent errors (the status page).

Split from the failure policy, which decides what happens to the records; this only
tells people. A handler failing on every retry must not flood the log: messages and
tracebacks are clipped, and each distinct traceback is shown once at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from worker.handling.dead_letter import Failure
from worker.observe.errors import RecentErrors, clip_error, clip_traceback, shown_error
from worker.records import Record

log = logging.getLogger("worker.failures")

#: Distinct errors (type and raising line) whose traceback each policy logs at WARNING;
#: past them, and for repeats, the traceback is logged at DEBUG only.
TRACEBACKS_SHOWN = 20


class FailureLog:
    def __init__(self, recent: RecentErrors) -> None:
        self._recent = recent
        self._tracebacks_shown: set[tuple[str, str]] = set()

    def failed(
        self,
        label: str,
        records: Sequence[Record],
        failed: list[int] | None,
        failure: Failure,
        attempts: int,
    ) -> None:
        """An invocation of `records` failed (`failed`: the indexes it reported, None: all)."""
        text = f"{failure.error_type}: {failure.message}"
        first = records[0].position if records else None
        last = records[-1].position if records else None
        shown = shown_error(failure.error_type, failure.message)
        span = str(first) if first == last else f"{first}..{last}"
        self._recent.add(label, span, shown, where=failure.where)
        log.warning(
            "event=invocation_failed partition=%s first=%s last=%s records=%d attempt=%d "
            "failed_records=%d error=%r at=%s",
            label, first, last, len(records), attempts + 1,
            len(failed) if failed is not None else len(records),
            clip_error(text), failure.where or "-",
        )  # fmt: skip
        if failure.traceback:
            self._traceback(label, failure)

    def _traceback(self, label: str, failure: Failure) -> None:
        """The traceback once per distinct error (type and raising line), then at DEBUG."""
        kind = (failure.error_type, failure.where)
        first_time = kind not in self._tracebacks_shown
        if first_time and len(self._tracebacks_shown) < TRACEBACKS_SHOWN:
            self._tracebacks_shown.add(kind)
            level = logging.WARNING
        elif log.isEnabledFor(logging.DEBUG):
            level = logging.DEBUG
        else:
            return
        log.log(
            level,
            "event=invocation_traceback partition=%s error_type=%s at=%s note=%r traceback=%r",
            label, failure.error_type, failure.where or "-",
            "shown once per distinct error; repeats at DEBUG",
            clip_traceback(failure.traceback),
        )  # fmt: skip
