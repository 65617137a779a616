"""What the committer says through an outage that ends with the partitions lost.

librdkafka expires the group session itself when the coordinator is away past
`session_timeout_ms`: the commits first fail, then the partitions are lost, and the next
commit is refused for them all. Nothing was committed: commits have not recovered.
"""

from __future__ import annotations

import logging
from typing import Any

from worker.observe.metrics import Metrics
from worker.runtime.committer import Committer
from worker.sources.base import OwnershipLost


class Part:
    key, label, releasing = "p0", "t-0", False

    def commit_point(self) -> tuple[int, int]:
        return (41, 42)

    def mark_committed(self, position: int, records: int) -> None:
        self.committed = position

    def report_lag(self, lag: Any) -> None: ...


class OutageSource:
    name = "kafka"

    def __init__(self) -> None:
        self.answers: list[BaseException | None] = []

    async def commit(self, positions: Any) -> None:
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer

    async def flush_notes(self) -> None: ...

    def lag(self, key: Any) -> None:
        return None


async def test_a_refusal_of_every_partition_after_failures_is_not_a_recovery(caplog):
    source = OutageSource()
    committer = Committer(source, 0.01, Metrics())  # type: ignore[arg-type]
    part = Part()
    source.answers = [ConnectionError("Waiting for coordinator"), OwnershipLost("lost", ["p0"])]
    caplog.set_level(logging.INFO, logger="worker.committer")
    assert await committer.commit_now([part]) is False
    await committer.commit_now([part])  # every partition refused: nothing committed
    assert "commits_recovered" not in caplog.text
    source.answers = [None]  # assigned again, the broker back: a commit goes through
    await committer.commit_now([part])
    assert "event=commits_recovered" in caplog.text and part.committed == 41
