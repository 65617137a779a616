"""Issue 13, "Prove it", on Kinesis: three workers, rolling restarts, kill -9 at random, and
lease-table faults, judged by the fault suite's checker.

Real parts only: kinesis-local for the stream, moto's DynamoDB for the lease table,
`worker run` processes. Faults are injected at process and wire boundaries:
- every few seconds one worker gets SIGTERM (it commits and releases its leases) and a
  new one starts in its slot; at random moments (seeded) one is killed with SIGKILL and
  replaced (its leases expire and the others take them);
- every lease data call goes through a proxy in front of moto (`lease_proxy.py`, one
  port per worker slot): throughout the run 3% of calls are throttled
  (`ProvisionedThroughputExceededException`) and 1% have their connection dropped
  (botocore: `ConnectionClosedError`); twice one worker's lease table is cut off (every
  call dropped): for 1.5 s, which retries usually ride out, and for longer than its
  lease, which makes it give its leases up and exit 1 (`event=lease_lapsed`) before the
  others take them as expired (a steal from a live owner that can no longer renew).
  A worker that exits 1 that way, also while it drains after SIGTERM, is replaced;
  exit 1 for any other reason, or any other status, fails the test.
The handler sleeps 30 ms per batch before writing what it handled, so a kill often
lands inside a batch not yet handled.

At the end every worker drains and stops with SIGTERM, and the checker judges the whole
history (`rolling.judge` maps shards and sequence numbers to its partitions and offsets):
nothing lost or skipped, no per-key order violation within a lease's tenure, nothing
checkpointed ahead of handling, and every duplicate a redelivery of work no checkpoint
had covered. `FAULTS_KINESIS_S` (default 20, 35 with `STREAMWORKER_LONG=1`) sets the
producer's length, `FAULTS_SEED` the kill moments.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from load.soak import KILL9_WORKER, SIGTERM_WORKER, Slots, rolling_schedule
from scripts.emulators import Emulator
from tests.faults.harness import WorkerProcess, wait_until
from tests.kinesis.lease_proxy import LeaseProxy
from tests.kinesis.rolling import (
    CheckpointPoller,
    KinesisProducer,
    judge,
    lease_takes,
    make_empty_stream,
)

#: 20 s in the default run, 35 s long (STREAMWORKER_LONG=1).
SECONDS = float(
    os.environ.get("FAULTS_KINESIS_S", "35" if os.environ.get("STREAMWORKER_LONG") else "20")
)
SEED = int(os.environ.get("FAULTS_SEED", str(time.time_ns() % 1_000_000)))
SHARDS, WORKERS, RATE = 4, 3, 200.0
LEASE_S = 6.0  # short enough for a kill -9 to cost little, long enough for a loaded box
HERE = Path(__file__).resolve().parent


def write_config(path: Path, kinesis: Emulator, lease_url: str, stream: str, table: str) -> Path:
    path.write_text(
        "[source]\n"
        f'kind = "kinesis"\nstream_name = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesis.url}"\nlease_endpoint_url = "{lease_url}"\n'
        f'lease_table = "{table}"\nlease_duration_s = {LEASE_S}\n'
        "[batching]\nbatch_size = 100\nmaximum_batching_window_ms = 50\n"
        '[handler]\ntarget = "rolling_handler:handle"\ntimeout_s = 30\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n'
    )
    return path


class KinesisRun:
    def __init__(self, kinesis: Emulator, dynamodb: Emulator, workdir: Path) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.stream, self.table = f"rolling-{suffix}", f"rolling-{suffix}-leases"
        asyncio.run(make_empty_stream(kinesis, self.stream, SHARDS))
        self.dir, self.logs = workdir, workdir / "handled"
        self.logs.mkdir()
        (workdir / "rolling_handler.py").write_text((HERE / "rolling_handler.py").read_text())
        self.proxy = LeaseProxy(dynamodb.url, WORKERS, SEED)
        self.proxy.start_and_wait()
        self.configs = [
            write_config(workdir / f"worker-{s}.toml", kinesis, self.proxy.url(s), self.stream,
                         self.table)
            for s in range(WORKERS)
        ]  # fmt: skip
        self.producer = KinesisProducer(kinesis, self.stream, RATE, SECONDS)
        self.checkpoints = CheckpointPoller(dynamodb, self.table)
        self.slots = Slots()
        self.exits: list[tuple[int, int | None, str]] = []
        self.outages: list[tuple[float, int, float]] = []

    def start(self, slot: int) -> None:
        env = {"FAULT_LOG_DIR": str(self.logs), "FAULT_SLEEP_S": "0.03"}
        worker = WorkerProcess(self.dir, self.configs[slot], f"g-{self.stream}", env)
        self.slots.put(slot, worker)
        worker.wait_started(60)

    def replace_exited(self) -> None:
        for slot, worker in self.slots.current().items():
            code = worker.proc.poll()
            if code is not None and not self.slots.was_told(worker):
                self.exits.append((worker.pid, code, "exited by itself"))
                self.start(slot)

    def signal(self, slot: int, kind: str) -> None:
        worker = self.slots.get(slot)
        self.slots.told(worker)
        if kind == KILL9_WORKER:
            worker.kill9()
        else:
            worker.terminate()
        self.exits.append((worker.pid, worker.wait(60), kind))
        self.start(slot)

    def drained(self) -> bool:
        self.replace_exited()
        last: dict[int, int] = {}
        for _, _, shard, sequence in self.producer.acked():
            last[shard] = max(last.get(shard, 0), sequence)
        latest = self.checkpoints.latest()
        return all(latest.get(shard, 0) >= sequence for shard, sequence in last.items())

    def stop_all(self) -> None:
        workers = self.slots.current().values()
        for worker in workers:
            self.slots.told(worker)
            worker.terminate()
        for worker in workers:
            self.exits.append((worker.pid, worker.wait(60), "final_sigterm"))

    def close(self) -> None:
        self.checkpoints.stop()
        for worker in self.slots.every:
            worker.stop()
        self.proxy.stop()
        self.producer.join(30)


@pytest.mark.timeout(SECONDS * 3 + 240)
def test_three_kinesis_workers_under_restarts_kill_9_and_lease_table_faults_lose_nothing(
    kinesis: Emulator, dynamodb: Emulator, tmp_path: Path
):
    rng = random.Random(SEED)
    schedule = rolling_schedule(SECONDS, 6.0, WORKERS, kills=2, seed=SEED)
    outage_plan = [(SECONDS * 0.3, rng.randrange(WORKERS), 1.5),
                   (SECONDS * 0.6, rng.randrange(WORKERS), LEASE_S + 2)]  # fmt: skip
    run = KinesisRun(kinesis, dynamodb, tmp_path)
    try:
        for slot in range(WORKERS):
            run.start(slot)
        run.checkpoints.start()
        run.proxy.set_rates(throttle_p=0.03, reset_p=0.01)
        start = time.monotonic()
        run.producer.start()
        pending = sorted([(f.at_s, "signal", f) for f in schedule] +
                         [(at, "outage", (slot, s)) for at, slot, s in outage_plan],
                         key=lambda x: x[0])  # fmt: skip
        while pending:
            run.replace_exited()
            if time.monotonic() - start < pending[0][0]:
                time.sleep(0.1)  # the schedule's clock, not a wait for a result
                continue
            _, what, item = pending.pop(0)
            if what == "outage":
                run.outages.append((round(time.monotonic() - start, 1), *item))
                run.proxy.outage(*item)
            else:
                run.signal(item.target, item.kind)
        run.producer.join(SECONDS + 60)
        run.proxy.set_rates(0.0, 0.0)
        wait_until(run.drained, 120, "the checkpoints to reach every shard's last record")
        run.stop_all()
        run.checkpoints.stop()
        takes = [a for w in run.slots.every for a in lease_takes(w.log(), w.pid)]
        report, unplaced = judge(run.producer.acked(), run.logs, takes, run.checkpoints.seen())
    finally:
        run.close()

    where = f"seed={SEED}; {report.summary()}"
    assert not run.producer.failures, run.producer.failures[:5]
    assert unplaced == 0, f"{unplaced} handled records were never acknowledged; {where}"
    assert report.lost == [], f"lost {len(report.lost)}: {report.lost[:5]}; {where}"
    assert report.order_violations == [], f"{report.order_violations[:5]}; {where}"
    assert report.skipped == [], where
    assert report.committed_ahead == [], f"{report.committed_ahead[:5]}; {where}"
    assert report.unexplained_duplicates == [], f"{report.unexplained_duplicates[:5]}; {where}"
    assert report.mismatched == [] and report.unexpected == [], where
    assert report.produced_out_of_order == [], "the producer reordered: nothing to judge"
    assert report.ok, where
    # Exit 1 is what a worker whose lease lapsed must do (also when the lapse comes while
    # it drains after SIGTERM, its lease table cut off); any other status is a defect.
    lapsed = {w.pid for w in run.slots.every if '"lease_lapsed"' in w.log()}
    for pid, code, why in run.exits:
        expected = {SIGTERM_WORKER: 0, "final_sigterm": 0, KILL9_WORKER: -signal.SIGKILL,
                    "exited by itself": 1}[why]  # fmt: skip
        assert code == expected or (code == 1 and pid in lapsed), (pid, code, why, run.exits)
    by_itself = [pid for pid, _, why in run.exits if why == "exited by itself"]
    assert set(by_itself) <= lapsed, "a worker exited 1 for another reason than a lapse"
    events = [str(e.get("event")) for w in run.slots.every for e in w.events()]
    injected = {f"{kind}@w{slot}": n for (slot, kind), n in sorted(run.proxy.injected.items())}
    assert any(k.startswith("throttle") for k in injected), injected
    assert any(k.startswith("reset") for k in injected), injected
    # A lapse ends the worker through its supervisor (`task_crashed` naming the lease, exit
    # 1); any other crash is a defect.
    crashed = [w.pid for w in run.slots.every if '"task_crashed"' in w.log()]
    assert set(crashed) <= set(lapsed), [w.log()[-3000:] for w in run.slots.every
                                         if w.pid in set(crashed) - set(lapsed)]  # fmt: skip
    print("FAULT-RESULT " + json.dumps({
        "test": "kinesis_rolling_restarts_kill9_lease_faults", "seed": SEED,
        "records": report.produced, "handled": report.handled, "lost": len(report.lost),
        "duplicated": report.duplicated_records, "extra_handlings": report.extra_handlings,
        "order_violations": len(report.order_violations),
        "committed_ahead": len(report.committed_ahead), "exits": run.exits,
        "outages": run.outages, "proxy_faults": injected, "forwarded": run.proxy.forwarded,
        "lease_takes": len(takes), "lapsed_workers": len(lapsed),
        "lease_events": {e: events.count(e) for e in sorted(set(events)) if e.startswith("lease")},
    }))  # fmt: skip
