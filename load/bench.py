"""The benchmark: the worker against the raw client, same broker, same topic, one run.

Starts the real Kafka broker, fills one topic with IoT telemetry, then runs
each contender in its own process with a fresh consumer group, several
rounds interleaved, and reports the median records/s and its ratio to the
raw aiokafka loop. Results go to load/results/ as JSON and Markdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "load" / "results"
sys.path.insert(0, str(ROOT))

from scripts import kafka_broker  # noqa: E402


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # raw | worker
    work: str  # raw: noop|decode; worker: handler function in load.bench_handlers
    baseline: str  # the raw contender it is compared with


CONTENDERS = [
    Contender("raw aiokafka getmany+commit", "raw", "noop", "raw aiokafka getmany+commit"),
    Contender("raw aiokafka + orjson decode", "raw", "decode", "raw aiokafka + orjson decode"),
    Contender("worker, no-op handler", "worker", "noop", "raw aiokafka getmany+commit"),
    Contender("worker, orjson decode handler", "worker", "decode", "raw aiokafka + orjson decode"),
    Contender("worker, IoT example handler", "worker", "iot", "raw aiokafka + orjson decode"),
]


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None and not path.exists():
            raise RuntimeError(f"contender exited {proc.returncode} without a result")
        if time.monotonic() > deadline:
            raise RuntimeError("contender did not finish in time")
        time.sleep(0.05)
    return float(path.read_text())


def run_contender(c: Contender, bootstrap: str, topic: str, count: int, tmp: Path) -> float:
    out = tmp / f"result-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_COUNT": str(count), "BENCH_OUT": str(out)}
    if c.kind == "raw":
        cmd = [
            sys.executable,
            "-m",
            "load.bench_raw",
            bootstrap,
            topic,
            str(count),
            c.work,
            str(out),
        ]
    else:
        cmd = [
            sys.executable, "-m", "worker", "run",
            "--set", f'source.bootstrap_servers=["{bootstrap}"]',
            "--set", f'source.topics=["{topic}"]',
            "--set", f"source.group_id=bench-{uuid.uuid4().hex[:8]}",
            "--set", "batching.batch_size=10000",
            "--set", "batching.maximum_batching_window_ms=0",
            "--set", f"handler.target=load.bench_handlers:{c.work}",
            "--set", "metrics.listen=127.0.0.1:0",
            "--set", "runtime.log_level=WARNING",
        ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        return _wait_file(out, proc, timeout_s=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _fill(bootstrap: str, topic: str, partitions: int, count: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from load.produce import produce

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    await produce(bootstrap, topic, devices=2000, count=count)


def bench(count: int, partitions: int, rounds: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="streamworker-bench-"))
    broker = kafka_broker.start(tmp / "kafka")
    try:
        topic = "bench"
        started = time.monotonic()
        asyncio.run(_fill(broker.bootstrap, topic, partitions, count))
        print(f"filled {count:,} records in {time.monotonic() - started:.1f}s", flush=True)
        rates: dict[str, list[float]] = {c.name: [] for c in CONTENDERS}
        for r in range(rounds):
            for c in CONTENDERS:
                rate = run_contender(c, broker.bootstrap, topic, count, tmp)
                rates[c.name].append(rate)
                print(f"round {r + 1}: {c.name:<34} {rate:>10,.0f} rec/s", flush=True)
    finally:
        broker.stop()
    medians = {name: statistics.median(v) for name, v in rates.items()}
    rows = [
        {
            "contender": c.name,
            "records_per_s": round(medians[c.name]),
            "ratio": round(medians[c.name] / medians[c.baseline], 3),
            "vs": c.baseline,
            "rounds": [round(x) for x in rates[c.name]],
        }
        for c in CONTENDERS
    ]
    return {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "kafka": kafka_broker.KAFKA_VERSION,
        "records": count,
        "partitions": partitions,
        "rounds": rounds,
        "results": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Records: {result['records']:,} IoT readings (~190 B) in {result['partitions']} "
        f"partitions; Kafka {result['kafka']} on loopback; {result['machine']}; "
        f"median of {result['rounds']} interleaved rounds.",
        "",
        "| contender | records/s | ratio | compared with |",
        "|---|---:|---:|---|",
    ]
    for row in result["results"]:
        lines.append(
            f"| {row['contender']} | {row['records_per_s']:,} | {row['ratio']:.2f} | {row['vs']} |"
        )
    return "\n".join(lines) + "\n"


def main(count: int, partitions: int, rounds: int) -> int:
    result = bench(count, partitions, rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / "latest.md").write_text(table)
    print()
    print(table)
    return 0
