"""The main job, end to end on this machine: local Kafka, IoT telemetry, the worker, live numbers.

Starts the real Kafka broker from Maven jars, creates a `telemetry` topic,
produces a backlog of readings, starts `worker run` with the example IoT
handler, keeps producing live telemetry while printing throughput, lag and
where the metrics are, then stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import re
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


def demo(
    records: int = 200_000, partitions: int = 4, live_rate: int = 5000, live_s: int = 15
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="streamworker-demo-"))
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
                f"   committed {done:>9,.0f} / {total:,}   {rate:>9,.0f} rec/s   lag {lag:>8,.0f}"
            )
            if done >= total and producer.poll() is not None:
                break
            if now - started > 300:
                print("   giving up after 300s")
                return 1
        took = time.monotonic() - started
        print(f"5. done: {total:,} readings handled and committed in {took:.1f}s")
        batches = _metric_sum(text, "worker_batches_total")
        print(f"   {batches:,.0f} handler calls; metrics were at http://127.0.0.1:{port}/metrics")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        print(f"6. worker stopped on SIGTERM with exit code {code}; Kafka stopping")
        return code
    finally:
        for proc in (producer, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
        broker.stop()
