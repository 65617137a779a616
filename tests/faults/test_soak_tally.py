"""The soak's running tally and fault schedules, on hand-made logs (no broker).

The tally gives the soak's per-minute numbers; the checker gives its verdict. These
tests show the tally counts what the checker would on the same history, reads only
what the logs gained, waits for a line a writer has not finished, and flags a key
going backwards within one assignment but not across a new one.
"""

from __future__ import annotations

import json
from pathlib import Path

from load.soak import KILL9_WORKER, SIGTERM_WORKER, cycle_schedule, rolling_schedule
from load.soak_watch import Tally
from tests.faults.checker import Handled, check, format_handled, parse_handled


def line(p: int, o: int, key: str, seq: int, pid: int, wall: float) -> str:
    return format_handled(Handled(p, o, key, seq, pid, wall, wall))


def assigned(path: Path, wall_iso: str, partitions: str) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"ts": wall_iso, "event": "assigned", "partitions": partitions}) + "\n")


def test_the_tally_counts_duplicates_and_reads_only_complete_new_lines(tmp_path: Path):
    logs = tmp_path / "handled"
    logs.mkdir()
    a = logs / "handled.1"
    a.write_text(line(0, 0, "k", 0, 1, 10.0) + line(0, 1, "k", 1, 1, 10.1) + "0 2 k 2 1 10")
    tally = Tally(logs)
    tally.feed({})
    assert (tally.handled, tally.distinct, tally.duplicated) == (2, 2, 0)
    with a.open("a") as f:  # the writer finishes its line, and a second process redoes 1
        f.write(".2 10.2\n")
    (logs / "handled.2").write_text(line(0, 1, "k", 1, 2, 11.0) + line(0, 2, "k", 2, 2, 11.1))
    tally.feed({})
    assert (tally.handled, tally.distinct, tally.duplicated, tally.extra) == (5, 3, 2, 2)
    assert tally.order_violations == 0
    history = parse_handled(a.read_text()) + parse_handled((logs / "handled.2").read_text())
    report = check([], history)
    assert (report.duplicated_records, report.extra_handlings) == (tally.duplicated, tally.extra)


def test_the_tally_flags_a_key_going_back_within_an_assignment_but_not_across_one(
    tmp_path: Path,
):
    logs = tmp_path / "handled"
    logs.mkdir()
    worker_log = tmp_path / "worker-0.out"
    assigned(worker_log, "1970-01-01T00:00:10.000Z", "t-0")
    # A new assignment at 20 s may go back to the commit: redelivery, not a violation.
    assigned(worker_log, "1970-01-01T00:00:20.000Z", "t-0")
    (logs / "handled.7").write_text(
        line(0, 5, "k", 5, 7, 11.0) + line(0, 6, "k", 6, 7, 12.0) + line(0, 5, "k", 5, 7, 21.0)
    )
    tally = Tally(logs)
    tally.feed({7: worker_log})
    assert tally.order_violations == 0
    with (logs / "handled.7").open("a") as f:  # within the 20 s assignment: 6 then 4
        f.write(line(0, 6, "k", 6, 7, 22.0) + line(0, 4, "k", 4, 7, 23.0))
    tally.feed({7: worker_log})
    assert tally.order_violations == 1


def test_the_schedules_cover_every_kind_and_keep_kills_apart_from_restarts():
    soak = cycle_schedule(180, 20, workers=3, nodes=3, seed=1)
    assert {f.kind for f in soak} == {KILL9_WORKER, SIGTERM_WORKER, "kill_broker"}
    assert all(0 < f.at_s < 180 for f in soak)
    assert all(1 <= f.target <= 3 for f in soak if f.kind == "kill_broker")
    rolling = rolling_schedule(40, 5, workers=3, kills=3, seed=2)
    restarts = [f for f in rolling if f.kind == SIGTERM_WORKER]
    kills = [f for f in rolling if f.kind == KILL9_WORKER]
    assert [f.target for f in restarts] == [0, 1, 2, 0, 1, 2, 0]
    assert len(kills) == 3
    assert all(abs(k.at_s - r.at_s) >= 1.5 for k in kills for r in restarts)
