"""A partition's buffer bounds: when it pauses, when it resumes, when its commit is hurried.

Three counts are bounded apart, each by `max_buffered_records` or `max_buffered_bytes`:
records fed and not finished, records finished and not committed, and the bytes held
(buffered records, or outputs waiting for their checkpoint). Past any bound the partition
pauses; below half of every one it resumes. Past half of the uncommitted ones its commit
is due at once (`runtime.committer`): a worker handling more than the bound in one commit
interval otherwise paused at every round although its commits were fine.
"""

from __future__ import annotations

from dataclasses import dataclass


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
