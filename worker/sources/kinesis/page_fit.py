"""How many records a shard reader asks one GetRecords for: what keeps the readers
inside the memory budget.

A reader holds up to `PAGES_HELD` pages (two queued for the pipeline, one in hand
waiting for room), and a page was up to the service's own cap: 10,000 records (10 MB)
on Kinesis, 1,000 (1 MB) on DynamoDB Streams. At 64 shards of 1 KB readings that was
up to 64 x 3 x 13 MB held outside the budget the pipeline keeps to, however small the
budget. The budget offers the source a share for its prefetch (`Backpressure`); each
reader gets an equal part of it and asks for as many records as that part holds a
page of. GetRecords is capped by records, not bytes, so a record's weight is estimated
from the reader's last page (its mean size plus the pipeline's per-record overhead):
a page of records much larger than the last one's overshoots once, then the limit
follows.

The limit never goes below `MIN_PAGE_RECORDS`: a shard takes up to 1,000 records a
second, and a reader asking for a handful every 200 ms would fall behind for good. A
budget too small for that many shards is said (`prefetch_over_share`), not obeyed.
"""

from __future__ import annotations

#: Pages a reader may hold at once: two queued, one in hand waiting for room.
PAGES_HELD = 3
#: A record's weight before any page was read: a typical reading with its overhead.
FIRST_RECORD_BYTES = 1024
#: The fewest records a page asks for (a shard takes up to 1,000 a second).
MIN_PAGE_RECORDS = 100


class PageFit:
    """One reader's page limit. The source sets the share (`fit`); the reader reports
    each page it read (`read`) and asks `limit` before the next call."""

    __slots__ = ("_max", "_overhead", "_page_bytes", "record_bytes")

    def __init__(self, max_records: int, overhead_bytes: int) -> None:
        self._max = max_records
        self._overhead = overhead_bytes
        self._page_bytes: int | None = None  # no share given: the service's cap
        #: The estimated weight of one record: the last page's mean size plus overhead.
        self.record_bytes = FIRST_RECORD_BYTES

    def fit(self, share_bytes: int) -> int:
        """This reader's part of the prefetch share is `share_bytes`: returns what it may
        hold at most with it (more than the share when `MIN_PAGE_RECORDS` is)."""
        self._page_bytes = max(share_bytes // PAGES_HELD, 1)
        return PAGES_HELD * self.limit * self.record_bytes

    @property
    def limit(self) -> int:
        """The `Limit` of the next GetRecords."""
        if self._page_bytes is None:
            return self._max
        return max(MIN_PAGE_RECORDS, min(self._max, self._page_bytes // self.record_bytes))

    def read(self, records: int, value_bytes: int) -> None:
        """A page of `records` with `value_bytes` of payload was read."""
        if records:
            self.record_bytes = value_bytes // records + self._overhead
