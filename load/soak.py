"""`python -m load soak`: a fixed produce rate, three workers, and faults on a schedule.

The soak is the fault suite's long form. It uses the fault suite's own parts
(`tests/faults/harness.py`: the paced, idempotent acks=all producer, `worker run`
as a child process, the commit poller; `tests/faults/checker.py`: the verdict),
so a soak and a test judge by the same rules:

1. start a Kafka cluster (three KRaft nodes by default, one with `--nodes 1`)
   with the repo's script, a topic with replication min(3, nodes), and `workers`
   `worker run` processes in one group, each running the recording handler;
2. produce keyed readings at `rate` per second for the soak's length while a
   schedule injects faults: kill -9 of a worker (then a new one in its slot),
   SIGTERM of a worker (then a new one), SIGKILL of a broker (started again on its
   data dir after `broker_down_s`). A worker that exits without being told to is
   counted (`worker_exited`) and replaced;
3. every minute print the running tally (`soak_watch.Tally`) and each slot's RSS;
4. once the producer is done, wait (bounded) until the group has committed every
   partition to its end, stop the workers with SIGTERM, and run the checker over the
   whole history: lost, duplicated (and the duplicates no commit explains),
   per-key order violations within each epoch, skips, commits ahead of handling.

The same engine runs the Kafka rolling-restart test (tests/faults) with a short
schedule, so the test proves what the soak does.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from load.soak_watch import Sample, Sampler, Tally
from scripts.kafka_broker import Cluster
from tests.faults.checker import Report, check, parse_assignments
from tests.faults.harness import (
    CommitPoller,
    PacedProducer,
    WorkerProcess,
    create_topic,
    end_offsets,
    install_handler,
    read_handled,
    write_worker_config,
)

KILL9_WORKER, SIGTERM_WORKER, KILL_BROKER = "kill9_worker", "sigterm_worker", "kill_broker"
FAULT_KINDS = (KILL9_WORKER, SIGTERM_WORKER, KILL_BROKER)


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # seconds after the producer started
    kind: str  # one of FAULT_KINDS
    target: int  # worker slot, or broker node id


@dataclass(frozen=True, slots=True)
class Injected:
    at_s: float  # when it was injected (may be late if the previous fault took long)
    kind: str
    target: str
    took_s: float  # until the replacement was running again


def cycle_schedule(
    seconds: float, every_s: float, workers: int, nodes: int, seed: int = 13
) -> list[Fault]:
    """Every `every_s` (with a little jitter) the next kind in turn, at a random target."""
    rng = random.Random(seed)
    kinds = FAULT_KINDS if nodes > 0 else FAULT_KINDS[:2]
    out, at, i = [], every_s, 0
    while at < seconds - 5:
        kind = kinds[i % len(kinds)]
        target = rng.randrange(1, nodes + 1) if kind == KILL_BROKER else rng.randrange(workers)
        out.append(Fault(round(at + rng.uniform(-0.2, 0.2) * every_s, 2), kind, target))
        at, i = at + every_s, i + 1
    return out


def rolling_schedule(
    seconds: float, restart_every_s: float, workers: int, kills: int, seed: int
) -> list[Fault]:
    """A SIGTERM restart of the next worker every `restart_every_s`, plus `kills` kill -9s of a
    random worker at random moments (at least 1.5 s from any restart)."""
    rng = random.Random(seed)
    steps = range(1, int(seconds / restart_every_s))
    restarts = [Fault(x * restart_every_s, SIGTERM_WORKER, (x - 1) % workers) for x in steps]
    taken = [f.at_s for f in restarts]
    kill_list: list[Fault] = []
    while len(kill_list) < kills:
        at = round(rng.uniform(2.0, seconds - 3.0), 2)
        if all(abs(at - t) >= 1.5 for t in taken):
            taken.append(at)
            kill_list.append(Fault(at, KILL9_WORKER, rng.randrange(workers)))
    return sorted(restarts + kill_list, key=lambda f: f.at_s)


@dataclass
class SoakOptions:
    seconds: float
    rate: float = 2000.0
    devices: int = 200
    partitions: int = 12
    workers: int = 3
    schedule: list[Fault] = field(default_factory=list)
    broker_down_s: float = 10.0
    drain_timeout_s: float = 300.0
    report_every_s: float = 60.0
    sample_every_s: float = 1.0
    handler_sleep_s: float = 0.0  # each batch's work before it writes (fault_handler.py)


@dataclass
class SoakResult:
    options: SoakOptions
    report: Report
    injected: list[Injected]
    exits: list[tuple[int, int | None, str]]  # (pid, exit code, why it ended)
    samples: list[Sample]
    drained: bool
    drain_s: float
    check_s: float
    producer_failures: list[str]

    @property
    def faults(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.injected))

    @property
    def ok(self) -> bool:
        return self.drained and not self.report.lost and not self.report.order_violations


class Slots:
    """The worker processes by slot; the one owner of which process is in which slot.

    The fault thread replaces processes; the sampler reads pids and logs. Every process
    ever started stays in `every` for the checker (its assignments, its exit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[int, WorkerProcess] = {}
        self._every: list[WorkerProcess] = []
        self._told: set[int] = set()  # pids this soak signalled

    def put(self, slot: int, worker: WorkerProcess) -> None:
        with self._lock:
            self._current[slot] = worker
            self._every.append(worker)

    def get(self, slot: int) -> WorkerProcess:
        with self._lock:
            return self._current[slot]

    def told(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._told.add(worker.pid)

    def was_told(self, worker: WorkerProcess) -> bool:
        with self._lock:
            return worker.pid in self._told

    def pids(self) -> dict[str, int | None]:
        with self._lock:
            return {
                f"w{slot}": (w.pid if w.proc.poll() is None else None)
                for slot, w in sorted(self._current.items())
            }

    def logs(self) -> dict[int, Path]:
        with self._lock:
            return {w.pid: w.out_path for w in self._every}

    def current(self) -> dict[int, WorkerProcess]:
        with self._lock:
            return dict(self._current)

    @property
    def every(self) -> list[WorkerProcess]:
        with self._lock:
            return list(self._every)


class Soak:
    """One soak on `cluster` under `workdir` (see the module docstring)."""

    def __init__(self, cluster: Cluster, workdir: Path, options: SoakOptions) -> None:
        self.cluster, self.dir, self.options = cluster, workdir, options
        self.servers = cluster.bootstrap_servers
        suffix = uuid.uuid4().hex[:8]
        self.topic, self.group = f"soak-{suffix}", f"soak-{suffix}"
        self.logs = workdir / "handled"
        self.logs.mkdir(parents=True, exist_ok=True)
        install_handler(workdir)
        self.config = write_worker_config(workdir / "worker.toml", self.servers, self.topic)
        count = int(options.rate * options.seconds)
        self.producer = PacedProducer(
            self.servers, self.topic, count, options.rate, options.devices,
            max_s=options.seconds * 1.5 + 60,
        )  # fmt: skip
        self.commits = CommitPoller(self.servers, self.group, self.topic, interval_s=0.5)
        self.slots = Slots()
        self.injected: list[Injected] = []
        self.exits: list[tuple[int, int | None, str]] = []
        self.tally = Tally(self.logs)
        self.sampler = Sampler(
            self.tally, self._observe, self.progress, options.sample_every_s,
            options.report_every_s,
        )  # fmt: skip
        self.start_mono = 0.0

    # -- the run ------------------------------------------------------------------------
    def run(self) -> SoakResult:
        replication = min(3, len(self.cluster.nodes))
        create_topic(self.servers, self.topic, self.options.partitions, replication)
        self.cluster.wait_in_sync([self.topic])
        self.commits.start()
        try:
            for slot in range(self.options.workers):
                self._start(slot)
            self.start_mono = time.monotonic()
            self.sampler.started = self.start_mono
            self.producer.start()
            self.sampler.start()
            self._inject_all()
            drained, drain_s = self._drain()
            self._stop_all()
            self.sampler.stop()
            self.sampler.sample_once()
            if self.sampler.error is not None:
                raise RuntimeError("the sampler died") from self.sampler.error
            began = time.monotonic()
            report = self.check()
            check_s = time.monotonic() - began
        finally:
            self.close()
        return SoakResult(
            self.options, report, self.injected, self.exits, self.sampler.samples, drained,
            drain_s, check_s, list(self.producer.failures),
        )  # fmt: skip

    def check(self) -> Report:
        assignments = [a for w in self.slots.every for a in parse_assignments(w.log(), w.pid)]
        return check(
            self.producer.acked, read_handled(self.logs), assignments, self.commits.snapshots
        )

    def close(self) -> None:
        if self.sampler.is_alive():
            self.sampler.stop()
        self.commits.stop()
        for worker in self.slots.every:
            worker.stop()
        self.producer.join(30)

    # -- faults -------------------------------------------------------------------------
    def _inject_all(self) -> None:
        pending = sorted(self.options.schedule, key=lambda f: f.at_s)
        end = self.options.seconds
        while pending or self.elapsed() < end:
            self._replace_exited()
            if pending and self.elapsed() >= pending[0].at_s:
                self._inject(pending.pop(0))
            else:
                time.sleep(0.1)  # a clock for the schedule, not a wait for a result

    def _inject(self, fault: Fault) -> None:
        at = self.elapsed()
        if fault.kind == KILL_BROKER:
            self.cluster.stop_node(fault.target, signal.SIGKILL)
            time.sleep(self.options.broker_down_s)  # how long the broker stays down: the fault
            self.cluster.start_node(fault.target)
            target = f"broker-{fault.target}"
        else:
            worker = self.slots.get(fault.target)
            self.slots.told(worker)
            if fault.kind == KILL9_WORKER:
                worker.kill9()
            else:
                worker.terminate()
            code = worker.wait(90)
            self.exits.append((worker.pid, code, fault.kind))
            self._start(fault.target)
            target = f"w{fault.target}"
        self.injected.append(Injected(round(at, 2), fault.kind, target, self.elapsed() - at))

    def _replace_exited(self) -> None:
        for slot, worker in self.slots.current().items():
            code = worker.proc.poll()
            if code is not None and not self.slots.was_told(worker):
                self.exits.append((worker.pid, code, "exited by itself"))
                print(f"[soak] worker {worker.pid} (w{slot}) exited {code} by itself:\n"
                      f"{worker.stderr()[-1500:]}", flush=True)  # fmt: skip
                self.injected.append(Injected(round(self.elapsed(), 2), "worker_exited",
                                              f"w{slot}", 0.0))  # fmt: skip
                self._start(slot)

    def _start(self, slot: int) -> None:
        env = {"FAULT_LOG_DIR": str(self.logs), "FAULT_SLEEP_S": str(self.options.handler_sleep_s)}
        worker = WorkerProcess(self.dir, self.config, self.group, env)
        self.slots.put(slot, worker)
        worker.wait_started(90)

    # -- the end ------------------------------------------------------------------------
    def _drain(self) -> tuple[bool, float]:
        """Until the producer is done and the group committed every partition to its end."""
        began = time.monotonic()
        self.producer.join(self.options.seconds + 120)
        ends = end_offsets(self.servers, self.topic, self.options.partitions)
        deadline = time.monotonic() + self.options.drain_timeout_s
        while time.monotonic() < deadline:
            self._replace_exited()
            latest = self.commits.latest()
            if all(latest.get(p, 0) >= end for p, end in ends.items()):
                return True, time.monotonic() - began
            time.sleep(0.25)  # polling the commits, bounded by the deadline
        print(f"[soak] not drained in {self.options.drain_timeout_s}s: committed "
              f"{self.commits.latest()} of {ends}", flush=True)  # fmt: skip
        return False, time.monotonic() - began

    def _stop_all(self) -> None:
        workers = self.slots.current()
        for worker in workers.values():
            self.slots.told(worker)
            worker.terminate()
        for worker in workers.values():
            self.exits.append((worker.pid, worker.wait(90), "final_sigterm"))

    # -- observation --------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start_mono

    def _observe(self) -> tuple[int, dict[str, int | None], dict[int, Path]]:
        return self.producer.acked_count(), self.slots.pids(), self.slots.logs()

    def progress(self, sample: Sample) -> None:
        t = self.tally
        rss = {slot: (round(b / 2**20) if b else None) for slot, b in sample.rss.items()}
        print(
            f"[soak {int(sample.t) // 60}:{int(sample.t) % 60:02d}] produced={sample.acked} "
            f"handled={t.handled} distinct={t.distinct} unhandled_yet={sample.acked - t.distinct} "
            f"duplicated={t.duplicated} extra_handlings={t.extra} "
            f"order_violations={t.order_violations} "
            f"faults={dict(Counter(i.kind for i in self.injected))} rss_mb={rss}",
            flush=True,
        )
