"""The fault checker on hand-made histories: each kind of violation present, and absent."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.faults.checker import (
    Assignment,
    CommitSnapshot,
    Handled,
    Produced,
    check,
    format_handled,
    parse_assignments,
    parse_handled,
)

#: Partition 0 holds keys a and b interleaved, partition 1 holds key c: 10 records each.
PRODUCED = [Produced("a" if o % 2 == 0 else "b", o // 2, 0, o) for o in range(10)] + [
    Produced("c", o, 1, o) for o in range(10)
]
BY_OFFSET = {(r.partition, r.offset): r for r in PRODUCED}


class Clock:
    """Hands out increasing times, so a history reads in the order it is written."""

    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, step: float = 0.01) -> float:
        self.now += step
        return self.now


def handle(clock: Clock, pid: int, partition: int, offsets: range | list[int]) -> list[Handled]:
    out = []
    for o in offsets:
        r = BY_OFFSET[(partition, o)]
        t = clock.tick()
        out.append(Handled(partition, o, r.key, r.seq, pid, t, t))
    return out


def everything_once(clock: Clock, pid: int = 1) -> list[Handled]:
    return handle(clock, pid, 0, range(10)) + handle(clock, pid, 1, range(10))


def test_a_clean_history_has_no_findings():
    clock = Clock()
    handled = everything_once(clock)
    done = CommitSnapshot(clock.tick(), {0: 10, 1: 10})
    report = check(PRODUCED, handled, snapshots=[done])
    assert report.ok, report.summary()
    assert (report.produced, report.handled) == (20, 20)
    assert report.duplicates == {} and report.extra_handlings == 0
    assert report.max_multiplicity == 1
    assert report.redeliveries == []
    assert report.handled_by_pid == {1: 20}
    assert 0.009 < report.longest_gap_s < 0.011


def test_a_record_never_handled_is_lost():
    clock = Clock()
    handled = [h for h in everything_once(clock) if (h.partition, h.offset) != (1, 7)]
    report = check(PRODUCED, handled)
    assert report.lost == [BY_OFFSET[(1, 7)]]
    assert not report.ok


def test_a_restart_from_the_commit_duplicates_without_violating_order():
    clock = Clock()
    first = handle(clock, 1, 0, range(6))
    at_kill = CommitSnapshot(clock.tick(), {0: 3})
    second = handle(clock, 2, 0, range(3, 10)) + handle(clock, 2, 1, range(10))
    report = check(PRODUCED, first + second, snapshots=[at_kill])
    assert report.ok, report.summary()
    assert report.duplicates == {(0, 3): 2, (0, 4): 2, (0, 5): 2}
    assert report.duplicated_records == report.extra_handlings == 3
    assert report.max_multiplicity == 2
    assert [(r.pid, r.partition, r.first_offset, r.records) for r in report.redeliveries] == [
        (2, 0, 3, 3)
    ]


def test_redoing_what_the_group_had_already_committed_is_an_unexplained_duplicate():
    clock = Clock()
    first = handle(clock, 1, 0, range(6))
    committed = CommitSnapshot(clock.tick(), {0: 5})
    second = handle(clock, 2, 0, range(3, 10))  # went back below the commit at 5
    report = check(PRODUCED, first + second, snapshots=[committed])
    assert [(h.partition, h.offset) for h in report.unexplained_duplicates] == [(0, 3), (0, 4)]
    assert not report.ok


def test_going_back_within_one_assignment_is_an_order_violation():
    clock = Clock()
    handled = handle(clock, 1, 0, range(6)) + handle(clock, 1, 0, range(4, 10))
    report = check(PRODUCED, handled)
    kinds = [(v.key, v.previous, v.current) for v in report.order_violations]
    # Offsets 5 -> 4, and key a from seq 2 back to 2 (offset 4 holds a/2).
    assert (None, 5, 4) in kinds and ("a", 2, 2) in kinds
    assert not report.ok


def test_going_back_after_a_new_assignment_in_the_same_process_is_redelivery():
    clock = Clock()
    start = Assignment(1, clock.tick(), frozenset({0, 1}))
    before = handle(clock, 1, 0, range(6))
    again = Assignment(1, clock.tick(), frozenset({0}))
    after = handle(clock, 1, 0, range(4, 10)) + handle(clock, 1, 1, range(10))
    report = check(PRODUCED, before + after, assignments=[start, again])
    assert report.order_violations == [], report.order_violations
    assert report.ok, report.summary()
    assert [(r.pid, r.epoch, r.first_offset, r.records) for r in report.redeliveries] == [
        (1, 2, 4, 2)
    ]
    # The same history without the second assignment: the rewind is a violation.
    assert check(PRODUCED, before + after, assignments=[start]).order_violations


def test_a_key_handled_after_a_later_seq_of_it_is_an_order_violation():
    clock = Clock()
    handled = handle(clock, 1, 1, [0, 1, 2, 4, 3, 5, 6, 7, 8, 9])
    report = check(PRODUCED, handle(clock, 1, 0, range(10)) + handled)
    assert ("c", 4, 3) in [(v.key, v.previous, v.current) for v in report.order_violations]
    assert not report.ok


def test_a_commit_past_an_unhandled_record_is_committed_ahead():
    clock = Clock()
    early = handle(clock, 1, 0, range(4))
    ahead = CommitSnapshot(clock.tick(), {0: 6})  # offsets 4 and 5 not handled yet
    late = handle(clock, 1, 0, range(4, 10)) + handle(clock, 1, 1, range(10))
    fine = CommitSnapshot(clock.tick(), {0: 10, 1: 10})
    report = check(PRODUCED, early + late, snapshots=[ahead, fine])
    assert [(c.partition, c.committed, c.first_unhandled) for c in report.committed_ahead] == [
        (0, 6, 4)
    ]
    assert not report.ok
    assert check(PRODUCED, early + late, snapshots=[fine]).ok


def test_a_commit_past_the_end_of_what_was_ever_handled_is_committed_ahead():
    clock = Clock()
    handled = everything_once(clock)
    report = check(PRODUCED, handled, snapshots=[CommitSnapshot(clock.tick(), {1: 11})])
    assert [(c.partition, c.first_unhandled) for c in report.committed_ahead] == [(1, 10)]


def test_wrong_content_and_records_never_acknowledged_are_reported():
    clock = Clock()
    handled = everything_once(clock)
    t = clock.tick()
    wrong = Handled(0, 2, "b", 1, 1, t, t)  # offset 2 holds a/1
    stray = Handled(1, 10, "c", 10, 1, t, t)
    report = check(PRODUCED, [*handled[:2], wrong, *handled[3:], stray])
    assert report.mismatched == [wrong]
    assert report.unexpected == [stray]
    assert not report.ok


def test_a_producer_that_reordered_a_key_makes_the_run_unjudgeable():
    swapped = [Produced("c", 1 - o, 1, o) if o < 2 else r for o, r in enumerate(PRODUCED[10:])]
    report = check(PRODUCED[:10] + swapped, [])
    assert [r.offset for r in report.produced_out_of_order] == [1]


def test_the_handler_log_round_trips_and_a_torn_last_line_is_ignored():
    clock = Clock()
    handled = handle(clock, 42, 1, range(3))
    text = "".join(map(format_handled, handled))
    assert parse_handled(text) == handled
    assert parse_handled(text + "1 3 c 3 42 1.0") == handled


def test_assignments_are_read_from_the_workers_json_log():
    ts = "2026-11-24T10:00:00.123Z"
    lines = [
        json.dumps({"ts": ts, "level": "INFO", "event": "started", "message": "event=started"}),
        json.dumps({"ts": ts, "event": "assigned", "partitions": "iot-readings-0,iot-readings-7"}),
        json.dumps({"ts": ts, "event": "assigned"}),  # an empty assignment
        "Traceback (most recent call last):",
    ]
    found = parse_assignments("\n".join(lines), pid=7)
    wall = datetime(2026, 11, 24, 10, 0, 0, 123000, tzinfo=UTC).timestamp()
    assert found == [Assignment(7, wall, frozenset({0, 7})), Assignment(7, wall, frozenset())]


def test_an_owner_that_starts_past_what_was_handled_skipped_records():
    clock = Clock()
    first = handle(clock, 1, 0, range(4))  # committed up to 4 at most
    second = handle(clock, 2, 0, range(7, 10))  # started at 7: 4, 5 and 6 never handled
    report = check(PRODUCED, first + second)
    assert [(k.pid, k.partition, k.first, k.until, k.at_start) for k in report.skipped] == [
        (2, 0, 4, 7, True)
    ]
    assert [r.offset for r in report.lost if r.partition == 0] == [4, 5, 6]
    assert not report.ok


def test_a_jump_within_an_assignment_is_a_skip_even_if_redone_later():
    clock = Clock()
    jumped = handle(clock, 1, 1, [0, 1, 2, 5, 6, 7, 8, 9])
    redone = handle(clock, 2, 1, [3, 4])
    report = check(PRODUCED, handle(clock, 1, 0, range(10)) + jumped + redone)
    assert report.lost == []
    assert [(k.partition, k.first, k.until, k.at_start) for k in report.skipped] == [
        (1, 3, 5, False)
    ]


def test_starting_at_the_commit_or_at_zero_is_no_skip():
    clock = Clock()
    first = handle(clock, 1, 0, range(6))
    second = handle(clock, 2, 0, range(4, 10)) + handle(clock, 2, 1, range(10))
    assert check(PRODUCED, first + second).skipped == []
