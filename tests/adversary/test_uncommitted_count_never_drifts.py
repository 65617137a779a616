"""The random schedules of test_random_schedules_keep_the_contract, watched for the
partition's count of finished-not-committed records (`_uncommitted_records`, which
backpressure reads): never negative at any commit, and zero once all is committed.
Held on the current code (several lanes, revokes, failing commits and handlers)."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversary.test_random_schedules_keep_the_contract import ops, scenario
from worker.partition.partition import Partition


@settings(
    max_examples=int(os.environ.get("ADV_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    schedule=ops,
    pf=st.sampled_from([1, 3, 8]),
    batch_size=st.sampled_from([1, 4, 10]),
    seed=st.integers(0, 2**16),
    retries=st.sampled_from([-1, 0, 2]),
)
def test_the_uncommitted_count_never_goes_negative_and_ends_at_zero(
    schedule, pf, batch_size, seed, retries
):
    bad: list[str] = []
    live: set[Partition] = set()
    original = Partition.mark_committed

    def checked(self: Partition, position: int, records: int) -> None:
        original(self, position, records)
        live.add(self)
        if self._uncommitted_records < 0:
            bad.append(f"{self.label}: {self._uncommitted_records} after commit @{position}")
        stale = [end for end in self._finished if end <= position]
        if stale:
            bad.append(f"{self.label}: finished ends {stale} kept past commit @{position}")

    Partition.mark_committed = checked  # type: ignore[method-assign]
    try:
        asyncio.run(scenario(schedule, pf, batch_size, seed, False, retries))
    finally:
        Partition.mark_committed = original  # type: ignore[method-assign]
    assert not bad, bad[:5]
    for p in live:
        if p.committed is not None and not p.releasing and p._tracker.pending == 0:
            assert p._uncommitted_records == 0 and not p._finished, (
                p.label,
                p._uncommitted_records,
                p._finished,
            )
