"""Stops a partition that dead-letters too much, instead of dead-lettering everything.

After a bad deploy every record fails; without a guard the worker would
faithfully move the whole stream to the DLQ. Per partition, the guard counts
records resolved (handled or dead-lettered) and dead-lettered, and refuses
the next dead-letter when the ratio of dead-lettered records would pass
`max_dead_letter_ratio` (once at least `MIN_RECORDS` were resolved), or when
`max_consecutive_dead_letters` records in a row would be dead-lettered with
no success between them. The partition then halts: nothing more is invoked
or committed, and the worker reports unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_RECORDS = 100


class PartitionHalted(Exception):
    """The dead-letter guard stopped this partition."""


@dataclass
class DeadLetterGuard:
    max_ratio: float  # 1.0 = off
    max_consecutive: int  # 0 = off
    resolved: int = 0
    dead: int = 0
    consecutive: int = 0

    def handled(self, records: int) -> None:
        self.resolved += records
        self.consecutive = 0

    def check(self, records: int) -> None:
        """Raise PartitionHalted if dead-lettering `records` more would pass a limit."""
        consecutive = self.consecutive + records
        if self.max_consecutive and consecutive > self.max_consecutive:
            raise PartitionHalted(
                f"{consecutive} records in a row would be dead-lettered "
                f"(errors.max_consecutive_dead_letters = {self.max_consecutive})"
            )
        resolved, dead = self.resolved + records, self.dead + records
        if self.max_ratio < 1.0 and resolved >= MIN_RECORDS and dead / resolved > self.max_ratio:
            raise PartitionHalted(
                f"{dead} of {resolved} records would be dead-lettered "
                f"(errors.max_dead_letter_ratio = {self.max_ratio})"
            )

    def dead_lettered(self, records: int) -> None:
        self.resolved += records
        self.dead += records
        self.consecutive += records
