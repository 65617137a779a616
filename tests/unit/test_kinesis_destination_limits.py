"""PutRecords calls stay within AWS's limits, which emulators do not enforce."""

import pytest

from worker.destinations.base import DestinationError, FailureEvent
from worker.destinations.kinesis import MAX_CALL_BYTES, calls, entries
from worker.testing import make_batch


def entry(size: int) -> dict:
    return {"Data": b"x" * size, "PartitionKey": "k"}


def test_at_most_500_entries_per_call():
    sizes = [len(c) for c in calls([entry(10)] * 1201)]
    assert sizes == [500, 500, 201]


def test_at_most_5_mib_per_call():
    items = [entry(1024 * 1024 - 100)] * 12
    split = list(calls(items))
    assert all(sum(len(e["Data"]) + 1 for e in c) <= MAX_CALL_BYTES for c in split)
    assert [len(c) for c in split] == [5, 5, 2]


def test_a_record_over_1_mib_is_refused_not_cut():
    batch = make_batch([b"y" * (1024 * 1024)], keys=[b"k"])
    event = FailureEvent("RetryAttemptsExhausted", "memory", "t-0", batch.records, 1)
    with pytest.raises(DestinationError, match="1 MiB"):
        entries(event)
