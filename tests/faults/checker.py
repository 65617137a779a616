"""A Jepsen-style checker for one fault run: what was produced against what was handled.

Pure functions over plain histories, so each rule is unit-tested on hand-made
histories (tests/faults/test_checker.py) before it judges a real run.

Inputs
------
- ``produced``: every record the broker acknowledged (acks=all), with the partition
  and offset from the acknowledgement; its value was ``{"device_id": K, "seq": N}``
  keyed by K, with N counting 0, 1, 2, ... per key.
- ``handled``: one entry per record a handler call saw, in the order each process
  wrote them (a process appends one line per record, a batch at a time, so within
  one process and one partition the order of the lines is the order of handling).
- ``assignments`` (optional): when each worker process was assigned which partitions
  (its ``event=assigned`` log lines).
- ``snapshots`` (optional): the group's committed offsets as read from the broker,
  each stamped with the wall time at which the answer had arrived.

Rules
-----
- **Lost**: an acknowledged record that no process handled.
- **Duplicated**: a (partition, offset) handled more than once, by any processes.
  Reported with how often, so a test can bound the extra handlings.
- **Epoch**: one process's uninterrupted ownership of one partition: from one
  assignment of the partition to that process up to the next. A handled record
  belongs to the latest assignment of its partition to its process stamped at or
  before its wall time. (The worker logs ``event=assigned`` before any batch of the
  new assignment can start, and stamps it to the millisecond rounded down, so the
  boundary is never late; a revoke happens a group round trip before the next
  assignment, so it is never early either.) A process whose assignments are not
  given is one epoch per partition.
- **Order violation**: within one epoch, a key's seq that is not strictly greater
  than the previous seq of that key in the epoch, or an offset that is not strictly
  greater than the previous offset of the partition. A restart or a rebalance may
  go back to the last commit (a new process or a new epoch), which is redelivery,
  not a violation; going back within an epoch is.
- **Skipped**: an epoch that handled an offset while the offsets just below it had
  not been handled by anyone before (from the highest offset handled before, plus
  one). An owner starts at a committed offset, and every commit is at most one past
  what was handled, so the record before its first one was handled already; within
  an epoch a partition's offsets follow one another (one batch at a time, no
  transactions, no compaction). A skip is a loss waiting to be committed.
- **Committed ahead**: a snapshot whose committed offset ``c`` of a partition is past
  an offset (below ``c``) that no process had handled by the snapshot's time. The
  topics carry no transactions or compaction, so every offset below the end is a
  record.
- **Unexplained duplicate**: a record handled again after a snapshot had already
  shown the group committed past it. At-least-once allows redoing only what was
  not yet committed; this is the per-record form of "duplicates are bounded by
  what was uncommitted at the fault".
- **Mismatched**: a handled (partition, offset) whose key or seq differs from what
  was acknowledged there. **Unexpected**: a handled (partition, offset) that was
  never acknowledged (a send that failed may still have reached the log).
- **Produced out of order**: a key whose seq does not grow with the offset in the
  log (a producer without idempotence can reorder on retry; a key is in one
  partition). Handling order is judged by seq, so a run with any of these proves
  nothing about the worker.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "Assignment",
    "CommitSnapshot",
    "Handled",
    "Produced",
    "Report",
    "check",
    "format_handled",
    "parse_assignments",
    "parse_handled",
]


@dataclass(frozen=True, slots=True)
class Produced:
    key: str
    seq: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Handled:
    partition: int
    offset: int
    key: str
    seq: int
    pid: int
    mono: float  # time.monotonic(): one clock for every process of the machine
    wall: float  # time.time(): comparable with the worker's log and the snapshots


@dataclass(frozen=True, slots=True)
class Assignment:
    pid: int
    wall: float
    partitions: frozenset[int]


@dataclass(frozen=True, slots=True)
class CommitSnapshot:
    wall: float  # when the answer had arrived: the commit it shows happened before
    offsets: Mapping[int, int]  # partition -> committed offset (the next to read)


@dataclass(frozen=True, slots=True)
class OrderViolation:
    pid: int
    partition: int
    epoch: int
    offset: int
    key: str | None  # None: the partition's offsets went backwards
    previous: int  # the previous seq of the key (or offset of the partition) in the epoch
    current: int


@dataclass(frozen=True, slots=True)
class Skip:
    """Offsets `first`..`until - 1` of a partition, passed over by one epoch."""

    pid: int
    partition: int
    epoch: int
    first: int
    until: int  # the offset the epoch handled next
    at_start: bool  # at the epoch's first offset (an owner starting past the commit)


@dataclass(frozen=True, slots=True)
class CommittedAhead:
    partition: int
    committed: int
    first_unhandled: int
    snapshot_wall: float


@dataclass(frozen=True, slots=True)
class Redelivery:
    """An epoch that handled records some earlier handling had already handled."""

    pid: int
    partition: int
    epoch: int
    first_offset: int
    records: int


@dataclass(slots=True)
class Report:
    produced: int
    handled: int
    lost: list[Produced] = field(default_factory=list)
    duplicates: dict[tuple[int, int], int] = field(default_factory=dict)
    order_violations: list[OrderViolation] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    committed_ahead: list[CommittedAhead] = field(default_factory=list)
    unexplained_duplicates: list[Handled] = field(default_factory=list)
    mismatched: list[Handled] = field(default_factory=list)
    unexpected: list[Handled] = field(default_factory=list)
    produced_out_of_order: list[Produced] = field(default_factory=list)
    redeliveries: list[Redelivery] = field(default_factory=list)
    handled_by_pid: dict[int, int] = field(default_factory=dict)
    longest_gap_s: float = 0.0

    @property
    def duplicated_records(self) -> int:
        """Distinct records handled more than once."""
        return len(self.duplicates)

    @property
    def extra_handlings(self) -> int:
        """Handlings beyond the first: the work at-least-once redid."""
        return sum(n - 1 for n in self.duplicates.values())

    @property
    def max_multiplicity(self) -> int:
        return max(self.duplicates.values(), default=1)

    @property
    def ok(self) -> bool:
        """No loss, no order violation, nothing committed ahead, every duplicate explained."""
        return not (
            self.lost
            or self.order_violations
            or self.skipped
            or self.committed_ahead
            or self.unexplained_duplicates
            or self.mismatched
            or self.unexpected
            or self.produced_out_of_order
        )

    def summary(self) -> str:
        return (
            f"produced={self.produced} handled={self.handled} lost={len(self.lost)} "
            f"duplicated={self.duplicated_records} extra_handlings={self.extra_handlings} "
            f"max_multiplicity={self.max_multiplicity} "
            f"order_violations={len(self.order_violations)} "
            f"skipped={[(k.pid, k.partition, k.first, k.until) for k in self.skipped]} "
            f"committed_ahead={len(self.committed_ahead)} "
            f"unexplained_duplicates={len(self.unexplained_duplicates)} "
            f"mismatched={len(self.mismatched)} unexpected={len(self.unexpected)} "
            f"produced_out_of_order={len(self.produced_out_of_order)} "
            f"redeliveries={[(r.pid, r.partition, r.first_offset, r.records) for r in self.redeliveries]} "  # noqa: E501
            f"by_pid={self.handled_by_pid} longest_gap_s={self.longest_gap_s:.2f}"
        )


# -- the log formats --------------------------------------------------------------------


def format_handled(h: Handled) -> str:
    """One line of the handler's log (the inverse of `parse_handled`)."""
    return f"{h.partition} {h.offset} {h.key} {h.seq} {h.pid} {h.mono:.6f} {h.wall:.6f}\n"


def parse_handled(text: str) -> list[Handled]:
    """The handler's log: `partition offset key seq pid monotonic wall` per line.

    A last line without its newline is a write a kill cut short; it is ignored (the
    handler writes a whole batch with one `os.write`, so this does not happen on
    Linux, but a checker should not trust that).
    """
    out = []
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is incomplete or empty
        if not line:
            continue
        p, o, key, seq, pid, mono, wall = line.split(" ")
        out.append(Handled(int(p), int(o), key, int(seq), int(pid), float(mono), float(wall)))
    return out


def parse_assignments(log_text: str, pid: int) -> list[Assignment]:
    """The worker's `event=assigned` JSON log lines as assignments of partition numbers."""
    out = []
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") != "assigned":
            continue
        stamp = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        labels = [x for x in str(doc.get("partitions", "")).split(",") if x]
        partitions = frozenset(int(label.rsplit("-", 1)[1]) for label in labels)
        out.append(Assignment(pid, stamp.timestamp(), partitions))
    return out


# -- the check --------------------------------------------------------------------------


def check(
    produced: Iterable[Produced],
    handled: Sequence[Handled],
    assignments: Iterable[Assignment] = (),
    snapshots: Iterable[CommitSnapshot] = (),
) -> Report:
    """Judge one run by the rules in the module docstring."""
    acked = {(r.partition, r.offset): r for r in produced}
    report = Report(produced=len(acked), handled=len(handled))
    last: dict[str, Produced] = {}
    for r in sorted(acked.values(), key=lambda r: (r.partition, r.offset)):
        if r.key in last and r.seq <= last[r.key].seq:
            report.produced_out_of_order.append(r)
        last[r.key] = r
    report.handled_by_pid = dict(Counter(h.pid for h in handled))
    counts = Counter((h.partition, h.offset) for h in handled)
    report.duplicates = {po: n for po, n in sorted(counts.items()) if n > 1}
    report.lost = sorted(
        (r for po, r in acked.items() if po not in counts), key=lambda r: (r.partition, r.offset)
    )
    for h in handled:
        want = acked.get((h.partition, h.offset))
        if want is None:
            report.unexpected.append(h)
        elif (want.key, want.seq) != (h.key, h.seq):
            report.mismatched.append(h)
    epochs = _epochs(handled, assignments)
    report.order_violations = _order_violations(handled, epochs)
    report.redeliveries = _redeliveries(handled, epochs)
    report.skipped = _skips(handled, epochs)
    snaps = sorted(snapshots, key=lambda s: s.wall)
    report.committed_ahead = _committed_ahead(handled, snaps)
    report.unexplained_duplicates = _unexplained(handled, snaps)
    monos = sorted(h.mono for h in handled)
    report.longest_gap_s = max((b - a for a, b in itertools.pairwise(monos)), default=0.0)
    return report


def _epochs(handled: Sequence[Handled], assignments: Iterable[Assignment]) -> list[int]:
    """The epoch number of each handled entry (see the module docstring)."""
    starts: dict[tuple[int, int], list[float]] = defaultdict(list)
    for a in assignments:
        for p in a.partitions:
            starts[(a.pid, p)].append(a.wall)
    for walls in starts.values():
        walls.sort()
    return [bisect.bisect_right(starts.get((h.pid, h.partition), []), h.wall) for h in handled]


def _order_violations(handled: Sequence[Handled], epochs: list[int]) -> list[OrderViolation]:
    out = []
    last_seq: dict[tuple[int, int, int, str], int] = {}
    last_offset: dict[tuple[int, int, int], int] = {}
    for h, epoch in zip(handled, epochs, strict=True):
        lane = (h.pid, h.partition, epoch)
        pid, p, o = lane[0], lane[1], h.offset
        previous = last_offset.get(lane)
        if previous is not None and o <= previous:
            out.append(OrderViolation(pid, p, epoch, o, None, previous, o))
        last_offset[lane] = o
        previous = last_seq.get((*lane, h.key))
        if previous is not None and h.seq <= previous:
            out.append(OrderViolation(pid, p, epoch, o, h.key, previous, h.seq))
        last_seq[(*lane, h.key)] = h.seq
    return out


def _redeliveries(handled: Sequence[Handled], epochs: list[int]) -> list[Redelivery]:
    """Epochs that handled records again, in the order of their first repeated record."""
    order = sorted(range(len(handled)), key=lambda i: handled[i].mono)
    seen: set[tuple[int, int]] = set()
    found: dict[tuple[int, int, int], Redelivery] = {}
    for i in order:
        h = handled[i]
        po = (h.partition, h.offset)
        if po in seen:
            lane = (h.pid, h.partition, epochs[i])
            r = found.get(lane)
            found[lane] = Redelivery(
                h.pid, h.partition, epochs[i], r.first_offset if r else h.offset,
                (r.records if r else 0) + 1,
            )  # fmt: skip
        seen.add(po)
    return list(found.values())


def _skips(handled: Sequence[Handled], epochs: list[int]) -> list[Skip]:
    """Epochs that passed over offsets nobody had handled before (see the docstring)."""
    done: dict[int, list[int]] = defaultdict(list)  # partition -> offsets handled, sorted
    last: dict[tuple[int, int, int], int] = {}  # epoch -> its previous offset
    out = []
    for i in sorted(range(len(handled)), key=lambda i: handled[i].mono):
        h = handled[i]
        lane = (h.pid, h.partition, epochs[i])
        offsets = done[h.partition]
        previous = last.get(lane)
        if previous != h.offset - 1:  # an epoch's first offset, or a jump within one
            below = bisect.bisect_left(offsets, h.offset)
            start = offsets[below - 1] + 1 if below else 0
            if start < h.offset:
                skip = Skip(h.pid, h.partition, epochs[i], start, h.offset, previous is None)
                out.append(skip)
        last[lane] = h.offset
        at = bisect.bisect_left(offsets, h.offset)
        if at == len(offsets) or offsets[at] != h.offset:
            offsets.insert(at, h.offset)
    return out


def _committed_ahead(
    handled: Sequence[Handled], snapshots: Sequence[CommitSnapshot]
) -> list[CommittedAhead]:
    first_wall: dict[int, dict[int, float]] = defaultdict(dict)
    for h in handled:
        walls = first_wall[h.partition]
        walls[h.offset] = min(walls.get(h.offset, h.wall), h.wall)
    # latest[p][c]: when every offset below c had been handled at least once.
    latest: dict[int, list[float]] = {}
    for p, walls in first_wall.items():
        prefix, high = [0.0], 0.0
        for o in range(max(walls) + 1):
            high = max(high, walls.get(o, float("inf")))
            prefix.append(high)
        latest[p] = prefix
    out = []
    reported: set[tuple[int, int]] = set()
    for snap in snapshots:
        for p, committed in sorted(snap.offsets.items()):
            prefix = latest.get(p, [0.0])
            done_at = prefix[committed] if committed < len(prefix) else float("inf")
            if done_at <= snap.wall or (p, committed) in reported:
                continue
            reported.add((p, committed))
            walls = first_wall.get(p, {})
            first = next(o for o in range(committed) if walls.get(o, float("inf")) > snap.wall)
            out.append(CommittedAhead(p, committed, first, snap.wall))
    return out


def _unexplained(handled: Sequence[Handled], snapshots: Sequence[CommitSnapshot]) -> list[Handled]:
    """Repeated handlings of records a snapshot taken earlier showed as committed."""
    walls = [s.wall for s in snapshots]
    # The highest committed offset per partition seen by each snapshot and all before it.
    high: list[dict[int, int]] = []
    running: dict[int, int] = {}
    for snap in snapshots:
        for p, committed in snap.offsets.items():
            running[p] = max(running.get(p, 0), committed)
        high.append(dict(running))
    seen: set[tuple[int, int]] = set()
    out = []
    for h in sorted(handled, key=lambda x: x.mono):
        po = (h.partition, h.offset)
        if po in seen:
            i = bisect.bisect_left(walls, h.wall) - 1  # the last snapshot before this handling
            if i >= 0 and high[i].get(h.partition, 0) > h.offset:
                out.append(h)
        seen.add(po)
    return out
