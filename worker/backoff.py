"""Exponential backoff with full jitter: the one retry pacing every part uses.

Failed batches, a throttled Kinesis reader, an unreachable destination and
lease-table errors all wait with it, so retries never synchronise across
partitions or workers and no part grows its own copy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    min_ms: int
    max_ms: int

    def ceiling_s(self, attempt: int) -> float:
        """Upper bound of the delay before retry number `attempt` (1-based)."""
        exp = min(attempt - 1, 32)
        return min(self.max_ms, self.min_ms * (2**exp)) / 1000.0

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """A delay drawn from [min, ceiling]: spread out so retries do not synchronise."""
        high = self.ceiling_s(attempt)
        low = min(self.min_ms / 1000.0, high)
        return (rng or random).uniform(low, high)
