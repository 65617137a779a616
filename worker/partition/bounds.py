"""A partition's buffer bounds: when it pauses, when it resumes, when its commit is hurried.

Three counts are bounded apart, each by `max_buffered_records` or `max_buffered_bytes`:
records fed and not finished, records finished and not committed, and the bytes held
(buffered records, or outputs waiting for their checkpoint). Past any bound the partition
pauses; below half of every one it resumes. Its commit is due at once (`runtime.committer`)
once a commit would take half an uncommitted bound off: a worker handling more than the
bound in one commit interval otherwise paused at every round although its commits were
fine. What a commit would take, not all that is uncommitted: with key lanes the units a
fast lane finished past a slow lane's gap are uncommitted, yet no commit can take them, and
a due judged on them made every move of the low watermark (a batch of the slow lane) a
round of its own, dozens of times the rounds for no fewer pauses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.outputs.ledger import OutputLedger


@dataclass(frozen=True, slots=True)
class Bounds:
    records: int
    bytes: int

    def full(self, unfinished: int, uncommitted: int, held_bytes: int) -> bool:
        return max(unfinished, uncommitted) >= self.records or held_bytes >= self.bytes

    def below_low_water(self, unfinished: int, uncommitted: int, held_bytes: int) -> bool:
        return max(unfinished, uncommitted) <= self.records // 2 and held_bytes <= self.bytes // 2

    def commit_near(self, uncommitted: int, output_bytes: int) -> bool:
        return uncommitted >= self.records // 2 or output_bytes >= self.bytes // 2

    def commit_due(
        self,
        uncommitted: int,
        outputs: OutputLedger,
        commit_point: Callable[[], tuple[int, int] | None],
    ) -> bool:
        """A commit would take half an uncommitted bound off (records it covers, or bytes of
        the outputs it carries). Per batch: `commit_point` only once the cheap test passes."""
        if not self.commit_near(uncommitted, outputs.bytes):
            return False  # what a commit covers is never more than this
        point = commit_point()
        return point is not None and self.commit_near(point[1], outputs.bytes_upto(point[0]))
