"""Issue 13, "Prove it": three workers in one group, rolling restarts and kill -9 at random.

Faults are injected at the process boundary only: every few seconds one `worker run`
process gets SIGTERM (it drains, commits and exits 0) and a new one starts in its
place; at random moments (seeded, the seed is in every failure message) one is killed
with SIGKILL and a new one starts. The recording handler sleeps 200 ms per batch before
it writes, so a kill often lands inside a batch not yet handled: a worker that had
committed such a batch loses it, and the checker sees the loss.

It runs on the three-node KRaft cluster (replication 3, min.insync.replicas 2) while a
paced, idempotent acks=all producer writes keyed readings; at the end every worker
drains and stops with SIGTERM. The engine is the soak's (`load/soak.py`): the same
schedule of faults, the same checker over the whole history (lost, duplicated and the
duplicates no commit explains, per-key order within each epoch, skips, commits ahead).

`FAULTS_ROLLING_S` sets how long the producer runs (default 20 s, 40 s with
`STREAMWORKER_LONG=1`: about 45 s in all on two cores, plus the cluster's start);
`FAULTS_SEED` fixes the kill moments.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from load.soak import KILL9_WORKER, SIGTERM_WORKER, Soak, SoakOptions, rolling_schedule
from scripts.kafka_broker import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

#: 20 s in the default run (every worker restarted once, kills among them); 40 s long.
SECONDS = float(
    os.environ.get("FAULTS_ROLLING_S", "40" if os.environ.get("STREAMWORKER_LONG") else "20")
)
SEED = int(os.environ.get("FAULTS_SEED", str(time.time_ns() % 1_000_000)))
RESTART_EVERY_S = 5.0


@pytest.mark.timeout(SECONDS * 3 + 240)
def test_three_workers_under_rolling_restarts_and_random_kill_9_lose_nothing_and_keep_key_order(
    cluster: Cluster, tmp_path: Path
):
    kills = max(2, int(SECONDS // 15))
    schedule = rolling_schedule(SECONDS, RESTART_EVERY_S, workers=3, kills=kills, seed=SEED)
    options = SoakOptions(
        seconds=SECONDS, rate=500.0, devices=40, partitions=8, workers=3, schedule=schedule,
        drain_timeout_s=120.0, report_every_s=10.0, handler_sleep_s=0.2,
    )  # fmt: skip
    result = Soak(cluster, tmp_path, options).run()
    r = result.report
    where = f"seed={SEED}; {r.summary()}"

    assert result.drained, f"the group did not commit every partition to its end; {where}"
    assert not result.producer_failures, result.producer_failures[:5]
    assert r.produced == int(options.rate * SECONDS), where
    assert r.lost == [], f"lost {len(r.lost)}: {r.lost[:5]}; {where}"
    assert r.order_violations == [], f"{r.order_violations[:5]}; {where}"
    assert r.skipped == [], where
    assert r.committed_ahead == [], f"{r.committed_ahead[:5]}; {where}"
    # The bound on duplicates: only what no commit had yet covered may be handled again.
    assert r.unexplained_duplicates == [], f"{r.unexplained_duplicates[:5]}; {where}"
    assert r.mismatched == [] and r.unexpected == [], where
    assert r.produced_out_of_order == [], "the producer reordered: nothing to judge"
    assert r.ok, where

    whys = {why for _, _, why in result.exits}
    by_why = {why: sorted({c for _, c, w in result.exits if w == why}) for why in whys}
    assert "exited by itself" not in by_why, f"{result.exits}; {where}"
    assert by_why[SIGTERM_WORKER] == [0] and by_why["final_sigterm"] == [0], result.exits
    assert by_why[KILL9_WORKER] == [-9], result.exits
    planned = {k: sum(f.kind == k for f in schedule) for k in (SIGTERM_WORKER, KILL9_WORKER)}
    assert result.faults == planned, (result.faults, planned)
    print("FAULT-RESULT " + json.dumps({
        "test": "rolling_restarts_and_kill9", "seed": SEED, "seconds": SECONDS,
        "records": r.produced, "handled": r.handled, "lost": len(r.lost),
        "duplicated": r.duplicated_records, "extra_handlings": r.extra_handlings,
        "max_multiplicity": r.max_multiplicity, "order_violations": len(r.order_violations),
        "committed_ahead": len(r.committed_ahead), "faults": result.faults,
        "processes": len(result.exits), "drain_s": round(result.drain_s, 1),
        "longest_gap_s": round(r.longest_gap_s, 2),
    }))  # fmt: skip
