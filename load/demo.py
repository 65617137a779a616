"""The main job, end to end on this machine: local Kafka, IoT telemetry, the worker, live numbers.

Starts the real Kafka broker from Maven jars, creates a `telemetry` topic,
produces a backlog of readings, starts `worker run` with the example IoT
handler, keeps producing live telemetry while printing the worker's rate, lag
and where its status page and metrics are. Run from a terminal (or with
`--keep`), the worker then keeps serving its pages until Ctrl-C, so they can be
looked at; either way everything is stopped cleanly and the temporary folders
are removed (kept, and named, when something failed).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import kafka_broker  # noqa: E402

TOPIC = "telemetry"


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


async def _setup(bootstrap: str, partitions: int, records: int) -> None:
    from load.produce import create_topic, produce

    await create_topic(bootstrap, TOPIC, partitions)
    started = time.monotonic()
    n = await produce(bootstrap, TOPIC, devices=2000, count=records)
    print(f"   produced a backlog of {n:,} readings in {time.monotonic() - started:.1f}s")


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
    live_rate: int = 5000,
    live_s: int = 15,
    keep: bool | None = None,
) -> int:
    """`keep` None: keep serving after the run when standard input is a terminal."""
    keep = sys.stdin.isatty() if keep is None else keep
    workdir = Path(tempfile.mkdtemp(prefix="streamworker-demo-"))
    ok = False
    print(f"1. starting Apache Kafka {kafka_broker.KAFKA_VERSION} (jars from Maven Central)")
    broker = kafka_broker.start(workdir / "kafka")
    worker: subprocess.Popen[bytes] | None = None
    producer: subprocess.Popen[bytes] | None = None
    try:
        print(f"   broker ready at {broker.bootstrap}")
        print(f"2. topic '{TOPIC}' with {partitions} partitions, IoT telemetry from 2,000 devices")
        asyncio.run(_setup(broker.bootstrap, partitions, records))

        port = _port(9108)
        log_path = workdir / "worker.log"
        print("3. starting: worker run --config config/worker.example.toml")
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable, "-m", "worker", "run",
                    "--config", str(ROOT / "config" / "worker.example.toml"),
                    "--set", f'source.bootstrap_servers=["{broker.bootstrap}"]',
                    "--set", f"metrics.listen=127.0.0.1:{port}",
                ],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        print(f"   status:   http://127.0.0.1:{port}/   (also /status.json)")
        print(f"   metrics:  http://127.0.0.1:{port}/metrics   (also /healthz, /readyz)")
        print(f"   log:      {log_path}")
        print(f"4. live telemetry at {live_rate:,}/s for {live_s}s on top of the backlog")
        producer = subprocess.Popen(
            [
                sys.executable, "-m", "load", "produce", "--bootstrap", broker.bootstrap,
                "--topic", TOPIC, "--rate", str(live_rate), "--duration", str(live_s),
            ],
            cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        total = records + live_rate * live_s
        print(
            "   the worker's rate is shown; once the backlog is done it can only keep pace"
            f" with the live producer ({live_rate:,}/s)"
        )
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
            if done >= total and producer.poll() is not None:
                break
            if now - started > 300:
                print("   giving up after 300s")
                return 1
        took = time.monotonic() - started
        print(f"5. done: {total:,} readings handled and committed in {took:.1f}s")
        batches = _metric_sum(text, "worker_batches_total")
        print(f"   {batches:,.0f} handler calls, {total / took:,.0f} rec/s on average")
        if keep:
            _serve_until_interrupted(port)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        print(f"6. worker stopped on SIGTERM with exit code {code}; Kafka stopping")
        ok = code == 0
        return code
    finally:
        for proc in (producer, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
        broker.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"   kept {workdir} (the worker's log and Kafka's) to look at")
