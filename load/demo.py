"""The main job, end to end on this machine: local Kafka, the IoT pipeline, live numbers,
and a check of what landed.

Starts the real Kafka broker from Maven jars, creates the `telemetry` topic and the
`telemetry-alerts` output topic, produces telemetry from 2,000 devices with a few
anomalies and malformed readings among them (`load.pipeline_telemetry`, which knows
the answers), runs `worker run --config config/pipeline.example.toml` (the pipeline:
`handlers/iot_pipeline.py`, exactly-once alerts, every valid reading upserted into
SQLite, malformed readings dead-lettered), printing the worker's rate and lag every
second, then checks what landed against what was produced: one row per valid reading,
the alerts topic (read_committed) exactly the anomalies, one dead letter per malformed
reading. Run from a terminal (or with `--keep`), the worker then keeps serving its
pages until Ctrl-C, so they and the SQLite file can be looked at; either way everything
is stopped cleanly and the temporary folders are removed (kept, and named, when
something failed).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import kafka_broker  # noqa: E402

TOPIC, ALERTS = "telemetry", "telemetry-alerts"
DEVICES = 2000


def _metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def _scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return kafka_broker.free_port()
    return preferred


async def _setup(bootstrap: str, partitions: int, records: int) -> Expected:
    from load.pipeline_telemetry import send, telemetry
    from load.produce import create_topic

    await create_topic(bootstrap, TOPIC, partitions)
    await create_topic(bootstrap, ALERTS, 1)
    readings, anomalies, valid, malformed = telemetry(DEVICES, max(records // DEVICES, 1))
    started = time.monotonic()
    await send(bootstrap, TOPIC, readings)
    print(f"   produced {len(readings):,} readings in {time.monotonic() - started:.1f}s: "
          f"{valid:,} valid, {malformed} malformed, {len(anomalies)} anomalies")  # fmt: skip
    return Expected(len(readings), valid, malformed, anomalies)


@dataclass(frozen=True)
class Expected:
    """What the pipeline must make of the readings produced."""

    records: int
    valid: int
    malformed: int
    anomalies: set[tuple[str, int, str]]


def _landed(bootstrap: str, db: Path, dlq: Path, expected: Expected) -> bool:
    """Print what landed against what was produced; True if all of it matches."""
    import orjson

    from load.pipeline_telemetry import read_topic

    rows, distinct = (
        sqlite3.connect(db)
        .execute("SELECT COUNT(*), COUNT(DISTINCT device_id || ':' || seq) FROM readings")
        .fetchone()
    )
    values = asyncio.run(asyncio.wait_for(read_topic(bootstrap, ALERTS, 1, "read_committed"), 60))
    alerts = [orjson.loads(v) for v in values]
    seen = {(a["device_id"], a["seq"], a["alert"]) for a in alerts}
    dead = [orjson.loads(line) for line in dlq.read_text().splitlines()] if dlq.exists() else []
    letters = {(e["partition"], r["offset"]) for e in dead for r in e["records"]}
    checks = [
        (f"rows stored in {db.name}: {rows:,} ({distinct:,} distinct)",
         rows == distinct == expected.valid, f"{expected.valid:,} valid readings"),
        (f"alerts in '{ALERTS}' (read_committed): {len(alerts)}",
         len(alerts) == len(seen) and seen == expected.anomalies,
         f"{len(expected.anomalies)} anomalies, each once"),
        (f"dead-lettered to {dlq.name}: {len(letters)}", len(letters) == expected.malformed,
         f"{expected.malformed} malformed readings"),
    ]  # fmt: skip
    for what, ok, want in checks:
        print(f"   {'ok  ' if ok else 'FAIL'} {what}   (expected {want})")
    return all(ok for _, ok, _ in checks)


def _serve_until_interrupted(port: int) -> None:
    """Keep the worker up so its pages can be opened; Ctrl-C (or SIGTERM) ends the wait."""
    print(f"   the worker is still serving: status page http://127.0.0.1:{port}/")
    print("   press Ctrl-C to stop the worker and Kafka")
    caught = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, caught)
    try:
        signal.sigwait(caught)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)


def demo(
    records: int = 200_000,
    partitions: int = 4,
    keep: bool | None = None,
) -> int:
    """`keep` None: keep serving after the run when standard input is a terminal."""
    keep = sys.stdin.isatty() if keep is None else keep
    workdir = Path(tempfile.mkdtemp(prefix="streamworker-demo-"))
    ok = False
    print(f"1. starting Apache Kafka {kafka_broker.KAFKA_VERSION} (jars from Maven Central)")
    broker = kafka_broker.start(workdir / "kafka")
    worker: subprocess.Popen[bytes] | None = None
    try:
        print(f"   broker ready at {broker.bootstrap}")
        print(f"2. topics '{TOPIC}' ({partitions} partitions) and '{ALERTS}'; telemetry "
              f"from {DEVICES:,} devices")  # fmt: skip
        expected = asyncio.run(_setup(broker.bootstrap, partitions, records))

        port = _port(9108)
        log_path, db, dlq = workdir / "worker.log", workdir / "iot.db", workdir / "dlq.jsonl"
        print("3. starting: worker run --config config/pipeline.example.toml")
        env = {**os.environ, "IOT_DATABASE_URL": f"sqlite:///{db}", "IOT_ALERTS_TOPIC": ALERTS}
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable, "-m", "worker", "run",
                    "--config", str(ROOT / "config" / "pipeline.example.toml"),
                    "--set", f'source.bootstrap_servers=["{broker.bootstrap}"]',
                    "--set", f"metrics.listen=127.0.0.1:{port}",
                    "--set", f"errors.on_failure=file://{dlq}",
                ],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        print(f"   status:   http://127.0.0.1:{port}/   (also /status.json)")
        print(f"   metrics:  http://127.0.0.1:{port}/metrics   (also /healthz, /readyz)")
        print(f"   log:      {log_path}")
        print(f"   readings: {db}   dead letters: {dlq}")
        total = expected.records
        print("4. the worker's rate and lag, every second")
        started = time.monotonic()
        last_done, last_t = 0.0, started
        while True:
            time.sleep(1.0)
            if worker.poll() is not None:
                print(f"worker exited early with {worker.returncode}; see {log_path}")
                return 1
            text = _scrape(port)
            done = _metric_sum(text, "worker_records_committed_total")
            lag = _metric_sum(text, "worker_offset_lag_records")
            now = time.monotonic()
            rate = (done - last_done) / (now - last_t)
            last_done, last_t = done, now
            print(
                f"   committed {done:>9,.0f} / {total:,}   worker {rate:>9,.0f} rec/s"
                f"   lag {lag:>8,.0f}"
            )
            if done >= total:
                break
            if now - started > 300:
                print("   giving up after 300s")
                return 1
        took = time.monotonic() - started
        print(f"5. done: {total:,} readings handled and committed in {took:.1f}s")
        batches = _metric_sum(text, "worker_batches_total")
        print(f"   {batches:,.0f} handler calls, {total / took:,.0f} rec/s on average")
        print("6. what landed, against what was produced")
        landed = _landed(broker.bootstrap, db, dlq, expected)
        if keep:
            print(f"   look: sqlite3 {db} 'SELECT COUNT(*) FROM readings'   "
                  f"worker dlq --from file://{dlq}")  # fmt: skip
            _serve_until_interrupted(port)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        print(f"7. worker stopped on SIGTERM with exit code {code}; Kafka stopping")
        ok = code == 0 and landed
        return code or (0 if landed else 1)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        broker.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"   kept {workdir} (the worker's log and Kafka's) to look at")
