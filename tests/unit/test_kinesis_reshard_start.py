"""Where a shard with no checkpoint starts (Kinesis and DynamoDB Streams share the decision):
a shard that appeared after the mapping started is read from its oldest record under
`latest`; shards there at the start keep `starting_position`.

A child (a split or merge; on DynamoDB Streams a rollover every few hours) is taken only
once its parents reached SHARD_END; read from the tip then, every record written to it
before its take was skipped (100 of 200 on kinesis-local: tests/kinesis/test_reshard_start).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_kinesis_latest_pin import Record, expired
from worker.sources.dynamodb.api import DynamoDBStreamsApi
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.kinesis.api import KinesisApi, Page
from worker.sources.kinesis.config import KinesisSourceConfig
from worker.sources.kinesis.leases import (
    CONFIGURED,
    OLDEST,
    SHARD_END,
    Lease,
    LeaseLost,
    _item,
    _lease,
)
from worker.sources.kinesis.reader import ShardReader
from worker.sources.kinesis.source import KinesisSource
from worker.sources.kinesis.start import Start, mapping_started, new_leases, start_of, unmarked


def lease(shard_id: str, counter: int = 0, **kw: Any) -> Lease:
    return Lease(shard_id, "w" if counter else None, counter, None, **kw)


LISTED = [("s-0", ()), ("s-1", ("s-0",)), ("s-2", ("s-0",))]


def test_the_first_sync_makes_every_shard_with_the_starting_position():
    assert new_leases(LISTED, []) == [(s, p, False) for s, p in LISTED]


def test_a_sync_beside_another_workers_first_one_still_makes_them_with_the_position():
    """Worker b lists, then reads the table: a's leases are there but none is taken yet, so
    every shard b lists existed before any take (a stream resharded yesterday: its open
    children must not be read from their oldest record under `latest`)."""
    made_by_a = [lease("s-0")]
    assert not mapping_started(made_by_a)
    assert new_leases(LISTED, made_by_a) == [("s-1", ("s-0",), False), ("s-2", ("s-0",), False)]


def test_once_a_lease_was_taken_a_shard_with_no_lease_is_new_and_read_from_its_oldest():
    """A take comes only after a complete sync: a shard still without a lease is newer."""
    leases = [lease("s-0", counter=4), lease("s-1")]
    assert mapping_started(leases)
    assert new_leases(LISTED, leases) == [("s-2", ("s-0",), True)]
    # A lease released or ended has been taken too (its counter moved).
    ended = Lease("s-0", None, 9, "SHARD_END")
    assert new_leases(LISTED, [ended]) == [("s-1", ("s-0",), True), ("s-2", ("s-0",), True)]


def test_a_checkpoint_always_wins():
    for start in (OLDEST, CONFIGURED, None):
        taken = Lease("s", "w", 1, "41", start=start, start_at="7")
        assert start_of(taken, at_tip=True) == Start(after="41")
        assert start_of(taken, at_tip=False) == Start(after="41")


def test_latest_a_lease_made_after_the_start_is_read_from_the_oldest_record_unpinned():
    assert start_of(lease("s", 1, start=OLDEST), at_tip=True) == Start(oldest=True)
    # Pinned by an older worker that knew nothing of `start`: nothing is checkpointed, so
    # the oldest record still wins (the records before the pin were never handed out).
    assert start_of(lease("s", 1, start=OLDEST, start_at="7"), at_tip=True) == Start(oldest=True)


def test_latest_a_lease_there_at_the_start_or_an_old_row_is_pinned_or_read_at_its_pin():
    for start in (CONFIGURED, None):
        assert start_of(lease("s", 1, start=start), at_tip=True) == Start(pin=True)
        assert start_of(lease("s", 1, start=start, start_at="7"), True) == Start(at="7")


def test_other_positions_read_every_lease_from_the_position():
    """trim_horizon is the oldest record already; at_timestamp puts a child made after the
    start at its first record (all of it, unless the timestamp is still to come)."""
    for start in (OLDEST, CONFIGURED, None):
        assert start_of(lease("s", 1, start=start), at_tip=False) == Start()


def test_a_lease_row_keeps_its_start_and_an_old_row_reads_none():
    row = _item(Lease("s", None, 0, None, ("p",), start=OLDEST))
    assert row["start"] == {"S": OLDEST} and _lease(row).start == OLDEST
    del row["start"]
    assert _lease(row).start is None


def test_rows_an_older_worker_made_for_a_child_of_a_shard_read_since_the_start_are_found():
    """No `start`: made before the attribute. A never-taken child whose parent was read past
    a record (pinned, or checkpointed before its end) or was itself made after the start
    appeared after the start; a child of a parent closed at the start (read from the tip,
    nothing read) was there at the start."""
    pinned = Lease("p-pinned", None, 8, SHARD_END, start_at="5")
    read = Lease("p-read", "w", 3, "41")
    late = Lease("p-late", "w", 3, None, start=OLDEST)
    closed = Lease("p-closed", None, 2, SHARD_END)
    children = [lease(f"c-{p.shard_id}", parents=(p.shard_id,)) for p in (pinned, read, late)]
    at_start = lease("c-closed", parents=("p-closed",))
    taken = Lease("c-taken", "w", 1, None, ("p-read",))
    marked = lease("c-marked", parents=("p-read",), start=CONFIGURED)
    rows = [pinned, read, late, closed, *children, at_start, taken, marked]
    assert unmarked(rows) == children
    assert unmarked([Lease("p", None, 0, None, start_at="5"), lease("c", parents=("p",))]) == []


class Shard:
    """A shard read from the oldest record: records 1..3, an expired iterator, 4, the end."""

    name = "kinesis"
    service = "kinesis"
    min_call_interval_s = 0.0
    max_page_records = 10_000
    stream = "telemetry"
    starts_at_tip = True

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, bool, str | None]] = []
        self.pages: list[Any] = [[1, 2, 3], "expired", [4]]

    async def iterator(self, shard_id: str, after: str | None, oldest: bool = False,
                       at: str | None = None) -> str:  # fmt: skip
        self.asked.append((after, oldest, at))
        return "it"

    async def page(self, shard_id: str, iterator: str, limit: int) -> Page:
        page = self.pages.pop(0)
        if page == "expired":
            raise expired()
        return Page([Record(n) for n in page], "it" if self.pages else None, 0.0)


async def test_a_reader_from_the_oldest_record_asks_for_it_until_it_has_read_past_it():
    api = Shard()
    reader = ShardReader(api, "s", None, lambda: None, None, oldest=True)
    reader.start(lambda coro, name: asyncio.create_task(coro, name=name))
    assert reader._task is not None
    await asyncio.wait_for(reader._task, 5)
    assert [r.sequence_number for r in reader.take()] == ["1", "2", "3", "4"]
    assert api.asked == [(None, True, None), ("3", False, None)]  # then after what was read


class Leases:
    """The lease table as `_discover` uses it: what was called, in order."""

    def __init__(self, calls: list[str], rows: list[Lease]) -> None:
        self.calls, self.rows, self.made = calls, rows, []

    async def all(self) -> list[Lease]:
        self.calls.append("scan")
        return self.rows

    async def add_shard(self, shard_id: str, parents: tuple[str, ...], oldest: bool) -> None:
        self.calls.append("add")
        self.made.append((shard_id, oldest))

    async def mark_oldest(self, lease: Lease) -> Lease:
        self.calls.append(f"mark {lease.shard_id}")
        return lease

    async def take(self, lease: Lease) -> Lease:
        self.calls.append(f"take {lease.shard_id}")
        raise LeaseLost("another worker was quicker")  # no reader started


@pytest.mark.parametrize("kind", ["kinesis", "dynamodb"])
async def test_a_sync_lists_the_shards_before_it_reads_the_table(kind: str):
    """Read the other way round, a worker that found nothing taken could list a shard made
    after a take that came in between, and read it from the tip."""
    calls: list[str] = []
    if kind == "kinesis":
        api: Any = KinesisApi(KinesisSourceConfig(stream_name="s", starting_position="latest"))
    else:
        api = DynamoDBStreamsApi(DynamoDBSourceConfig(table_name="devices",
                                                      starting_position="latest"))  # fmt: skip

    async def shards() -> Any:
        for shard in LISTED:
            calls.append("list")
            yield shard

    api.shards = shards
    source = KinesisSource(api._config, api=api)
    rows = [lease("s-0", counter=2, start_at="5")]
    leases = source._leases = Leases(calls, rows)  # type: ignore[assignment]
    await source._discover()
    assert calls == ["list", "list", "list", "scan", "add", "add"]
    assert leases.made == [("s-1", True), ("s-2", True)]


async def test_a_lease_round_marks_a_childs_row_an_older_worker_made_before_it_takes_any():
    """Left to the shard sync (every third round), the mark lost the race with the take of a
    child whose parent had just ended, and the child was read from the tip."""
    calls: list[str] = []
    api = KinesisApi(KinesisSourceConfig(stream_name="s", starting_position="latest"))
    source = KinesisSource(api._config, api=api)
    source._listener = object()  # type: ignore[assignment]
    rows = [Lease("s-0", None, 9, SHARD_END, start_at="5"), lease("s-1", parents=("s-0",))]
    source._leases = Leases(calls, rows)  # type: ignore[assignment]
    await source._coordinate_once()
    assert calls == ["scan", "mark s-1", "take s-1"]
