"""Issue 13, "Prove it": the worker against a three-node Kafka cluster while things fail.

Every fault is injected at a process boundary, as an operator or a crash would:
a broker process is stopped with SIGKILL or SIGTERM and started again on its data
dir (`scripts/kafka_broker.py`), or the worker process is killed with SIGKILL. The
worker is driven only through its public surface: `worker run --config FILE`
(`--set` for the group), a handler module it imports from its working directory,
`/readyz`, its JSON log lines and its exit code.

Each test produces 6,000 keyed IoT readings (40 devices, ~1,000/s, acks=all,
idempotent) to a topic of 8 partitions with replication 3 (min.insync.replicas 2),
injects its fault mid-stream (a broker killed, the group coordinator stopped, the
worker killed inside its handler, the worker restarted onto a backlog), waits (by
polling with deadlines) until everything produced was handled and committed, and
then lets the checker (`checker.py`) judge the whole history: nothing lost or
skipped, no per-key order violation within an assignment, nothing ever committed
ahead of handling, every duplicate a redelivery of work not yet committed, and the
duplicates within the bound of what the fault left uncommitted. The worker must be
ready at the end and exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.kafka_broker import Cluster
from tests.faults.checker import CommitSnapshot, Handled, Report, check, parse_assignments
from tests.faults.harness import (
    CommitPoller,
    PacedProducer,
    ReadinessProbe,
    WorkerProcess,
    count_handled,
    create_topic,
    end_offsets,
    find_coordinator,
    install_handler,
    longest_stalls,
    read_handled,
    read_marks,
    wait_until,
    write_worker_config,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

PARTITIONS = 8
RECORDS = 6000
RATE = 1000.0
DEVICES = 40
HOLD_S = 5.0  # how long the held handler call sleeps: the window in which the test kills
STALL_LIMIT_S = 20.0  # see assert_sound
IDLE_S = 15.0  # see FaultRun.wait_complete


class FaultRun:
    """One test's topic, group, producer, workers and observers, all under `workdir`."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.servers = cluster.bootstrap_servers
        self.dir = workdir
        suffix = uuid.uuid4().hex[:8]
        self.topic, self.group = f"iot-readings-{suffix}", f"faults-{suffix}"
        create_topic(self.servers, self.topic, PARTITIONS, replication=3)
        cluster.wait_in_sync([self.topic])
        install_handler(workdir)
        self.logs = workdir / "handled"
        self.logs.mkdir()
        self.marks, self.hold = workdir / "marks.log", workdir / "hold"
        self.config = write_worker_config(workdir / "worker.toml", self.servers, self.topic)
        self.producer = PacedProducer(self.servers, self.topic, RECORDS, RATE, DEVICES)
        self.commits = CommitPoller(self.servers, self.group, self.topic)
        self.commits.start()
        self.workers: list[WorkerProcess] = []
        self.probes: list[ReadinessProbe] = []
        self.ends: dict[int, int] = {}
        self.fault_mono = 0.0  # when the test injected its fault (monotonic)

    def start_worker(self) -> tuple[WorkerProcess, ReadinessProbe]:
        """Start a worker and return once its /readyz answers 200."""
        env = {
            "FAULT_LOG_DIR": str(self.logs),
            "FAULT_MARKS": str(self.marks),
            "FAULT_HOLD": str(self.hold),
            "FAULT_HOLD_S": str(HOLD_S),
        }
        worker = WorkerProcess(self.dir, self.config, self.group, env)
        self.workers.append(worker)
        probe = ReadinessProbe(worker.wait_started())
        probe.start()
        self.probes.append(probe)
        wait_until(lambda: probe.last == 200, 60, f"worker {worker.pid} ready")
        return worker, probe

    def handled(self) -> int:
        return count_handled(self.logs)

    def wait_complete(self, worker: WorkerProcess, timeout_s: float = 120) -> float:
        """Until the producer is done and the group committed every partition to its end.

        Fails early, with `WorkerSatOnBacklog`, when the worker says it is ready and
        has records waiting (lag) but holds none (nothing buffered, nothing in flight)
        while the commits do not move for `IDLE_S`: it will not get there by itself.
        """
        start = time.monotonic()
        self.producer.join(timeout_s)
        assert not self.producer.is_alive(), "the producer did not finish"
        assert not self.producer.failures, self.producer.failures[:5]
        self.ends = end_offsets(self.servers, self.topic, PARTITIONS)
        moved = [time.monotonic(), self.commits.latest()]

        def done() -> bool:
            assert worker.proc.poll() is None, f"worker exited {worker.proc.returncode}"
            latest = self.commits.latest()
            if all(latest.get(p, 0) == end for p, end in self.ends.items()):
                return True
            if latest != moved[1]:
                moved[:] = [time.monotonic(), latest]
            elif time.monotonic() - moved[0] > IDLE_S and idle_on_backlog(worker.status()):
                raise WorkerSatOnBacklog(
                    f"worker {worker.pid} ready and idle with lag for {IDLE_S}s; committed "
                    f"{latest} of {self.ends}; status: {worker.status()}"
                )
            return False

        try:
            wait_until(done, timeout_s, f"commits to reach the ends {self.ends}")
        except WorkerSatOnBacklog:
            raise
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; committed {self.commits.latest()}; worker {worker.pid} status: "
                f"{worker.status()}"
            ) from None
        return time.monotonic() - start

    def stop_worker(self, worker: WorkerProcess, probe: ReadinessProbe) -> int:
        """SIGTERM after checking the worker is ready; the exit code."""
        assert probe.last == 200, f"not ready at the end: {probe.samples[-5:]}"
        worker.terminate()
        code = worker.wait(60)
        probe.stop()
        return code

    def report(self) -> Report:
        assignments = [a for w in self.workers for a in parse_assignments(w.log(), w.pid)]
        return check(self.producer.acked, read_handled(self.logs), assignments, self.snapshots())

    def snapshots(self) -> list[CommitSnapshot]:
        return self.commits.snapshots

    def close(self) -> None:
        for probe in self.probes:
            probe.stop()
        self.commits.stop()
        for worker in self.workers:
            worker.stop()
        self.producer.join(30)


class WorkerSatOnBacklog(AssertionError):
    """The worker is ready, has lag and holds no record: it has stopped fetching them."""


def idle_on_backlog(status_json: str) -> bool:
    try:
        status = json.loads(status_json)
    except ValueError:
        return False
    waiting = [p for p in status["partitions"] if (p["lag"] or 0) > 0]
    return (
        status["ready"]
        and status["inflight_batches"] == 0
        and bool(waiting)
        and all(p["buffered"] == 0 and not p["paused"] for p in waiting)
    )


@pytest.fixture
def run(cluster: Cluster, tmp_path: Path) -> Iterator[FaultRun]:
    fault_run = FaultRun(cluster, tmp_path)
    try:
        yield fault_run
    finally:
        fault_run.close()


# -- what every fault test asserts ------------------------------------------------------------


def uncommitted_bound(handled: list[Handled], snapshots: list[CommitSnapshot], at: float) -> int:
    """What a fault at wall time `at` could make the worker redo, record by record.

    Per partition: the records handled at or past the offset committed before the
    fault, up to the first commit of that partition seen after the fault. Anything
    committed before the fault may not be redone (the checker's "unexplained
    duplicates"), and once a partition commits again only the records of the
    commit interval are at risk, which the next such window would count.
    """
    before = max((s for s in snapshots if s.wall < at), key=lambda s: s.wall, default=None)
    base = dict(before.offsets) if before else {}
    resumed: dict[int, float] = {}
    for s in sorted(snapshots, key=lambda s: s.wall):
        if s.wall <= at:
            continue
        for p, committed in s.offsets.items():
            if committed > base.get(p, 0) and p not in resumed:
                resumed[p] = s.wall
    first: dict[tuple[int, int], float] = {}
    for h in handled:
        first[(h.partition, h.offset)] = min(first.get((h.partition, h.offset), h.wall), h.wall)
    return sum(
        1
        for (p, o), wall in first.items()
        if o >= base.get(p, 0) and wall <= resumed.get(p, float("inf"))
    )


def assert_sound(run: FaultRun, report: Report) -> None:
    """The checker's verdict, plus what the worker's own output says about the run."""
    assert report.produced == RECORDS, report.summary()
    assert report.lost == [], report.summary()
    assert report.order_violations == [], report.order_violations[:5]
    assert report.committed_ahead == [], report.committed_ahead[:5]
    assert report.unexplained_duplicates == [], report.unexplained_duplicates[:5]
    assert report.mismatched == [] and report.unexpected == [], report.summary()
    assert report.produced_out_of_order == [], "the producer reordered: nothing to judge"
    assert report.ok, report.summary()
    for worker in run.workers:
        events = Counter(str(e.get("event")) for e in worker.events())
        assert events["task_crashed"] == 0 and events["commits_stalled"] == 0, events
        assert "Traceback" not in worker.stderr(), worker.stderr()[-3000:]
    # Readable records never waited longer than the slowest recovery the faults need:
    # a new group member waits out the dead one's 6 s session, a new leader the dead
    # broker's 6 s fencing. Past that the worker, not the cluster, sat on the work.
    stalls = longest_stalls(read_handled(run.logs), run.producer.acked_at)
    worst = max(length for length, _ in stalls.values())
    assert worst < STALL_LIMIT_S, stalls


def summarize(name: str, run: FaultRun, report: Report, **numbers: object) -> None:
    """One line for the suite's output (`make faults` shows it): what the test observed."""
    stalls = longest_stalls(read_handled(run.logs), run.producer.acked_at)
    counts = Counter(str(e.get("event")) for w in run.workers for e in w.events())
    notable = {
        k: v for k, v in counts.items() if k in {"commit_failed", "poll_failed", "revoked"} and v
    }
    line = {
        "test": name,
        "records": report.produced,
        "handled": report.handled,
        "lost": len(report.lost),
        "duplicated": report.duplicated_records,
        "extra_handlings": report.extra_handlings,
        "order_violations": len(report.order_violations),
        "committed_ahead": len(report.committed_ahead),
        "longest_gap_s": round(report.longest_gap_s, 2),
        "stall_s_by_partition": {
            p: [round(length, 2), round(began - run.fault_mono, 2)]
            for p, (length, began) in sorted(stalls.items())
        },
        "commit_reads": len(run.snapshots()),
        "worker_events": notable,
        **numbers,
    }
    print("FAULT-RESULT " + json.dumps(line))


def leaders_moved_off(cluster: Cluster, topic: str, node_id: int) -> bool:
    """Every partition of `topic` has a leader again, and none is `node_id`."""
    try:
        leaders = cluster.metadata().leaders(topic)
    except OSError:
        return False
    return len(leaders) == PARTITIONS and all(n >= 0 and n != node_id for n in leaders.values())


# -- the faults ---------------------------------------------------------------------------------


def test_sigkill_of_the_broker_leading_most_partitions_loses_nothing_and_keeps_key_order(
    run: FaultRun,
):
    """Fault: SIGKILL of the broker process that leads most of the topic's partitions (a
    crash: no controlled shutdown, leaders move only once the controller fences it),
    started again on its data dir once the cluster has new leaders and the producer and
    the worker have made progress without it."""
    worker, probe = run.start_worker()
    run.producer.start()
    wait_until(lambda: run.producer.acked_count() >= 1500 and run.handled() >= 1000, 60, "traffic")
    leaders = run.cluster.metadata().leaders(run.topic)
    victim = Counter(leaders.values()).most_common(1)[0][0]
    led = sorted(p for p, node in leaders.items() if node == victim)
    fault_wall, fault_mono = time.time(), time.monotonic()
    run.fault_mono = fault_mono
    acked_at_fault = run.producer.acked_count()
    run.cluster.stop_node(victim, signal.SIGKILL)
    moved_s = wait_until(
        lambda: leaders_moved_off(run.cluster, run.topic, victim), 60, "leaders to move"
    )
    handled_at_move = run.handled()
    wait_until(
        lambda: (
            run.producer.acked_count() >= acked_at_fault + 1000
            and run.handled() >= handled_at_move + 500
        ),
        60,
        "the producer and the worker to go on with one broker down",
    )
    down_s = time.monotonic() - fault_mono
    run.cluster.start_node(victim)
    drain_s = run.wait_complete(worker)
    run.cluster.wait_in_sync([run.topic])
    ready_s = probe.longest_not_ready_s()
    assert run.stop_worker(worker, probe) == 0

    report = run.report()
    assert_sound(run, report)
    bound = uncommitted_bound(read_handled(run.logs), run.snapshots(), fault_wall)
    assert report.extra_handlings <= bound, (report.extra_handlings, bound)
    summarize(
        "sigkill_partition_leader", run, report,
        victim=victim, partitions_led=led, leaders_moved_s=round(moved_s, 2),
        broker_down_s=round(down_s, 2), drain_after_restart_s=round(drain_s, 2),
        duplicate_bound=bound, longest_not_ready_s=round(ready_s, 2), exit_code=0,
    )  # fmt: skip


def test_sigterm_of_the_group_coordinator_loses_nothing_and_commits_through_the_new_one(
    run: FaultRun,
):
    """Fault: SIGTERM of the broker process that is the group's coordinator (Kafka's
    controlled shutdown: it hands its partitions' leadership, and so the group, to the
    other replicas), started again once another broker coordinates the group and the
    group's commits have moved on through it."""
    worker, probe = run.start_worker()
    run.producer.start()
    wait_until(lambda: run.producer.acked_count() >= 1500 and run.handled() >= 1000, 60, "traffic")
    coordinator = find_coordinator(run.servers, run.group)
    assert coordinator is not None
    committed_at_fault = sum(run.commits.latest().values())
    fault_wall, fault_mono = time.time(), time.monotonic()
    run.fault_mono = fault_mono
    run.cluster.stop_node(coordinator, signal.SIGTERM)
    stopped_s = time.monotonic() - fault_mono
    new: list[int | None] = [None]

    def moved() -> bool:
        new[0] = find_coordinator(run.servers, run.group)
        return new[0] is not None and new[0] != coordinator

    moved_s = wait_until(moved, 60, "another coordinator")
    wait_until(
        lambda: (
            sum(run.commits.latest().values()) >= committed_at_fault + 500
            and run.producer.acked_count() >= 3500
        ),
        60,
        "commits to go on through the new coordinator",
    )
    down_s = time.monotonic() - fault_mono
    run.cluster.start_node(coordinator)
    drain_s = run.wait_complete(worker)
    run.cluster.wait_in_sync([run.topic])
    ready_s = probe.longest_not_ready_s()
    assert run.stop_worker(worker, probe) == 0

    report = run.report()
    assert_sound(run, report)
    bound = uncommitted_bound(read_handled(run.logs), run.snapshots(), fault_wall)
    assert report.extra_handlings <= bound, (report.extra_handlings, bound)
    summarize(
        "sigterm_group_coordinator", run, report,
        coordinator=coordinator, new_coordinator=new[0], broker_exit_s=round(stopped_s, 2),
        coordinator_moved_s=round(moved_s, 2), broker_down_s=round(down_s, 2),
        drain_after_restart_s=round(drain_s, 2), duplicate_bound=bound,
        longest_not_ready_s=round(ready_s, 2), exit_code=0,
    )  # fmt: skip


def test_kill_9_of_the_worker_inside_the_handler_redoes_exactly_what_was_uncommitted(
    run: FaultRun,
):
    """Fault: SIGKILL of the worker process while a batch is provably inside the handler
    (the handler has written its records, marked `inside` and sleeps; it never marks
    `returned`). A new worker resumes from the group's commits and finishes."""
    first, first_probe = run.start_worker()
    run.producer.start()
    wait_until(lambda: run.handled() >= 1500, 60, "a quarter of the records handled")
    run.hold.touch()
    marks: list = []

    def inside() -> bool:
        marks[:] = [m for m in read_marks(run.marks) if m.kind == "inside" and m.pid == first.pid]
        return bool(marks)

    wait_until(inside, 30, "a batch inside the handler")
    first.kill9()
    kill_wall, run.fault_mono = time.time(), time.monotonic()
    assert first.wait(30) == -signal.SIGKILL
    held = marks[0]
    assert not [m for m in read_marks(run.marks) if m.kind == "returned"], "killed too late"
    run.hold.unlink()
    first_probe.stop()

    # The group's commits as the dead worker left them: read after the kill, twice the same.
    def settled() -> bool:
        after = [s for s in run.snapshots() if s.wall > kill_wall]
        return len(after) >= 2 and after[-1].offsets == after[-2].offsets

    wait_until(settled, 30, "the commits after the kill")
    at_kill = dict(run.commits.latest())
    assert at_kill.get(held.partition, 0) <= held.first, (
        f"committed {at_kill.get(held.partition)} past the batch in the handler {held}"
    )
    run1 = [h for h in read_handled(run.logs) if h.pid == first.pid]
    redo = {(h.partition, h.offset) for h in run1 if h.offset >= at_kill.get(h.partition, 0)}
    assert {(held.partition, o) for o in range(held.first, held.last + 1)} <= redo

    restart_mono = time.monotonic()
    second, second_probe = run.start_worker()
    ready_after_s = time.monotonic() - restart_mono
    drain_s = run.wait_complete(second)
    assert run.stop_worker(second, second_probe) == 0

    report = run.report()
    assert_sound(run, report)
    # At least once, and no more: the second worker redid exactly what the first had
    # handled past the commits, each once more.
    assert set(report.duplicates) == redo, (sorted(set(report.duplicates) ^ redo)[:10], redo)
    assert report.max_multiplicity <= 2
    summarize(
        "kill9_worker_in_handler", run, report,
        held_batch=f"p{held.partition}:{held.first}-{held.last}",
        committed_at_kill=sum(at_kill.values()), handled_by_first=len(run1),
        duplicate_bound=len(redo), second_ready_after_s=round(ready_after_s, 2),
        drain_s=round(drain_s, 2), first_exit=-9, exit_code=0,
    )  # fmt: skip


def test_a_restart_onto_a_backlog_loses_nothing_and_redoes_nothing(run: FaultRun):
    """Fault: the worker process is stopped with SIGTERM and started again while the
    producer keeps producing, so the new process joins the group with a backlog waiting
    in every partition (the everyday restart of a deploy). A clean stop commits what it
    handled, so the new process must redo nothing and must miss nothing."""
    first, first_probe = run.start_worker()
    run.producer.start()
    wait_until(lambda: run.handled() >= 1000, 60, "the first thousand records handled")
    run.fault_mono = time.monotonic()
    assert run.stop_worker(first, first_probe) == 0
    handled_by_first = run.handled()
    wait_until(
        lambda: run.producer.acked_count() >= handled_by_first + 1000, 60, "a backlog of 1,000"
    )
    second, second_probe = run.start_worker()
    drain_s = run.wait_complete(second)
    assert run.stop_worker(second, second_probe) == 0

    report = run.report()
    assert_sound(run, report)
    assert report.duplicates == {}, "a clean stop committed everything it had handled"
    summarize(
        "sigterm_restart_onto_backlog", run, report,
        handled_by_first=handled_by_first, drain_s=round(drain_s, 2), exit_codes=[0, 0],
    )  # fmt: skip
