"""A batch longer than `rebalance_timeout_s` while a second worker joins (issue 21).

Two `worker run` processes of one group on the real broker. The handler
(`interval_handler`) records each call's start and end (and, while held, a tick
every 20 ms) per partition with the worker's process id, and every record it
writes, into one file; the fault is aimed with it: the first worker's batch holding
offset 100 of each partition is held until the test creates a file. The test
starts the second worker once both held batches are inside the handler, so the
first worker's revoke meets them past its deadline (`rebalance_timeout_s = 2`).

Whatever happens, per partition no call of one worker overlaps a call of the other,
no key's records are written out of order (an owner writing a key after another
owner took it over, or a record written before an earlier one of its key), and
every record is handled and committed. The cases:

- threads, released while held: the first worker holds the partitions
  (`revoke_blocked`) until the thread returns, then lets them go;
- threads, never released: past the hold limit the first worker exits 3, the thread
  dies with it, and the second worker redoes the partitions from the last commit;
- processes: the child holding the batch is killed at the deadline (its pid is gone)
  and release goes on; the next owner redoes the batch.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    eventually,
    keyed_topic,
    scrape,
    unique,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]
PARTITIONS = 2
RECORDS = 600
HOLD_OFFSET = 100
#: The drain deadline, and the broker's rebalance timeout: the first worker's hold
#: limit is 12 - 1 (heartbeat) - 3 (exit margin) = 8 s from the revoke's start.
REBALANCE_TIMEOUT_S = 2
REBALANCE_TIMEOUT_MS = 12_000


@dataclass(slots=True)
class Call:
    owner: int
    child: int
    partition: int
    first: int
    start: float
    until: float
    ended: bool = False


@dataclass(slots=True)
class Trace:
    calls: list[Call] = field(default_factory=list)
    #: key -> [(owner, seq)] in the order written
    writes: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    handled: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))


def read_trace(path: Path) -> Trace:
    trace = Trace()
    open_calls: dict[tuple[int, int, int], Call] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, *f = line.split(" ")
        if kind == "start":
            owner, child, p, first = (int(x) for x in f[:4])
            t = float(f[5])
            call = Call(owner, child, p, first, t, t)
            trace.calls.append(call)
            open_calls[(owner, child, p)] = call
        elif kind in ("tick", "end"):
            owner, child, p = int(f[0]), int(f[1]), int(f[2])
            call = open_calls[(owner, child, p)]
            call.until = float(f[-1])
            call.ended = kind == "end"
        elif kind == "rec":
            owner, p, offset, key, seq = int(f[0]), int(f[1]), int(f[2]), f[3], int(f[4])
            trace.writes[key].append((owner, seq))
            trace.handled[p].add(offset)
    return trace


def overlaps(trace: Trace) -> list[str]:
    """Calls of one partition from different workers that ran at the same time."""
    found = []
    by_partition: dict[int, list[Call]] = defaultdict(list)
    for c in trace.calls:
        by_partition[c.partition].append(c)
    for p, calls in by_partition.items():
        for i, a in enumerate(calls):
            for b in calls[i + 1 :]:
                if a.owner != b.owner and a.start < b.until and b.start < a.until:
                    found.append(f"partition {p}: {a} and {b}")
    return found


def order_violations(trace: Trace) -> list[str]:
    """Per key: an owner writing after another owner took the key over, or a record
    written before every earlier record of its key was."""
    found = []
    for key, writes in trace.writes.items():
        done: set[int] = set()
        owners: list[int] = []
        for owner, seq in writes:
            if owners and owners[-1] != owner:
                if owner in owners:
                    found.append(f"{key}: owner {owner} wrote seq {seq} after {owners[-1]}")
                owners.append(owner)
            elif not owners:
                owners.append(owner)
            if any(m not in done for m in range(seq)):
                found.append(f"{key}: seq {seq} before {min(set(range(seq)) - done)}")
            done.add(seq)
    return found


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


class Case:
    """The topic, the group, the first worker holding a batch of every partition."""

    def __init__(self, kafka: str, tmp_path: Path, concurrency: str) -> None:
        self.kafka, self.tmp_path = kafka, tmp_path
        self.topic, self.ends = keyed_topic(kafka, RECORDS, PARTITIONS, by_key_number=True)
        self.group = unique("g")
        self.trace_path = tmp_path / "intervals"
        self.hold_dir = tmp_path / "hold"
        self.hold_dir.mkdir()
        self.config = write_config(
            tmp_path / "w.toml", kafka, self.topic, self.group,
            source={"rebalance_timeout_ms": REBALANCE_TIMEOUT_MS},
            batching={"batch_size": 50},
            handler={"target": "interval_handler:handle", "concurrency": concurrency,
                     "timeout_s": 120, "processes": 2},
            runtime={"rebalance_timeout_s": REBALANCE_TIMEOUT_S, "shutdown_timeout_s": 5},
        )  # fmt: skip
        self.env = {"INTERVAL_FILE": str(self.trace_path), "HOLD_OFFSET": str(HOLD_OFFSET),
                    "HOLD_DIR": str(self.hold_dir)}  # fmt: skip
        self.workers: list[WorkerProcess] = []

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(self.config, self.tmp_path, self.env)
        self.workers.append(worker)
        return worker

    def held(self, worker: WorkerProcess) -> dict[int, Call]:
        """Wait until `worker` holds a batch of every partition; those calls."""
        eventually(
            lambda: len(first_held(read_trace(self.trace_path), worker.pid)) == PARTITIONS,
            what="a batch of every partition held in the first worker",
        )
        return first_held(read_trace(self.trace_path), worker.pid)

    def release(self) -> None:
        (self.hold_dir / "release").touch()

    def all_committed(self) -> bool:
        return committed(self.kafka, self.group, self.topic) == self.ends

    def check(self) -> Trace:
        trace = read_trace(self.trace_path)
        assert overlaps(trace) == [], "two workers inside one partition at once"
        assert order_violations(trace) == []
        for p, end in self.ends.items():
            assert trace.handled[p] == set(range(end)), f"partition {p} lost records"
        return trace

    def stop_all(self) -> None:
        self.release()  # a held call left over must not outlive the test
        for w in self.workers:
            w.stop()


def first_held(trace: Trace, owner: int) -> dict[int, Call]:
    """partition -> the call of `owner` that was held (the one that ticked)."""
    out: dict[int, Call] = {}
    for c in trace.calls:
        if c.owner == owner and c.until - c.start > 1.0:
            out.setdefault(c.partition, c)
    return out


def test_a_thread_past_the_revoke_deadline_holds_the_partition_then_releases_it(
    kafka: str, tmp_path: Path
):
    case = Case(kafka, tmp_path, "thread")
    try:
        first = case.start()
        case.held(first)
        second = case.start()
        # Let the threads return once the first worker says it holds the partitions, or
        # once the second worker is inside one of them (a zombie: the checks then fail).
        eventually(
            lambda: (
                len(re.findall(r"event=revoke_blocked ", first.log())) == PARTITIONS
                or any(c.owner == second.pid for c in read_trace(case.trace_path).calls)
            ),
            what="the revoke held, or the partition given away",
        )
        blocked = scrape(first.metrics_port)
        case.release()
        eventually(case.all_committed, what="all committed")
        first.terminate()
        second.terminate()
        codes = first.wait(), second.wait()
    finally:
        case.stop_all()
    trace = case.check()
    assert codes == (0, 0)
    counted = sum(v for (name, _), v in blocked.items() if name == "worker_revoke_blocked_total")
    assert counted == PARTITIONS
    held = first_held(trace, first.pid)
    assert set(held) == set(range(PARTITIONS)) and all(c.ended for c in held.values())
    log = first.log()
    assert log.index("event=revoke_blocked") < log.index("event=revoke_unblocked")
    assert "event=revoke_hold_exceeded" not in log


def test_a_thread_past_the_hold_limit_makes_the_worker_exit_3_and_the_next_owner_redoes_it(
    kafka: str, tmp_path: Path
):
    case = Case(kafka, tmp_path, "thread")
    try:
        first = case.start()
        case.held(first)
        at_hold = committed(kafka, case.group, case.topic)
        second = case.start()
        # The threads are never released: the first worker must exit (or, a zombie, the
        # second one finishes the partitions beside the running threads).
        eventually(lambda: first.proc.poll() is not None or case.all_committed(),
                   timeout_s=40, what="the first worker gone")  # fmt: skip
        after = committed(kafka, case.group, case.topic)
        eventually(case.all_committed, what="the second worker committed everything")
        code = first.proc.poll()
        second.terminate()
        assert second.wait() == 0
    finally:
        case.stop_all()
    trace = case.check()
    assert code == 3
    held = first_held(trace, first.pid)
    assert set(held) == set(range(PARTITIONS)) and not any(c.ended for c in held.values())
    for p, call in held.items():
        # Nothing of the held batch was committed by the first worker: the next owner
        # started from the last commit, at or before the held batch.
        assert after.get(p, 0) <= call.first and at_hold.get(p, 0) <= call.first
        redo = [c for c in trace.calls if c.owner == second.pid and c.partition == p]
        assert redo and min(c.first for c in redo) <= call.first
    log = first.log()
    assert "event=revoke_blocked" in log
    assert "event=revoke_hold_exceeded" in log
    assert "event=revoke_unblocked" not in log


def test_a_handler_process_past_the_revoke_deadline_is_killed_and_the_partition_released(
    kafka: str, tmp_path: Path
):
    case = Case(kafka, tmp_path, "process")
    try:
        first = case.start()
        children = {c.child for c in case.held(first).values()}
        second = case.start()
        first.wait_for_log(r"event=handler_process_killed partition=\S+ reason=cancelled",
                           count=PARTITIONS)  # fmt: skip
        eventually(lambda: not any(alive(pid) for pid in children), timeout_s=10,
                   what="the children of the held batches gone")  # fmt: skip
        eventually(case.all_committed, what="all committed")
        first.terminate()
        second.terminate()
        assert first.wait() == 0 and second.wait() == 0
    finally:
        case.stop_all()
    trace = case.check()
    held = first_held(trace, first.pid)
    assert set(held) == set(range(PARTITIONS)) and not any(c.ended for c in held.values())
    assert {c.child for c in held.values()} == children
    assert not any(alive(pid) for pid in children)
    for p, call in held.items():
        later = [c for c in trace.calls if c.partition == p and c.start > call.start]
        assert later and min(c.first for c in later) <= call.first  # redone, nothing lost
    assert "event=revoke_hold_exceeded" not in first.log()
