"""The memory scenario: the worker's RSS under a backlog at 8, 64 and 256 partitions.

    python -m load memory [--partitions 8 64 256] [--backlog 600000] [--seconds 40]
                          [--build LABEL=DIR ...] [--throughput]

A backlog of 1 KB readings per partition count, a handler that takes 50 ms per batch of
100, default settings otherwise; the worker's RSS (VmRSS) sampled every second for
`--seconds` from readiness. `--build` runs the worker from another source tree (a
checkout of an older commit), so before and after are measured in one run, builds
interleaved; the default is this tree. `--throughput` adds the 8-partition no-op run of
the main benchmark (1,000,000 readings of ~190 B), each build against the raw aiokafka
loop, rounds interleaved: the ratio is what compares across noisy runs.
Results: load/results/memory.{json,md,png}.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from load.bench import (
    RAW,
    RESULTS,
    ROOT,
    Contender,
    Env,
    _rss_mb,
    _stop,
    _wait_ready,
    _wait_result,
    fill,
    run_contender,
)
from scripts import kafka_broker

RECORD_BYTES = 1024


def _worker(build: Path, env: Env, topic: str, handler: str, *settings: str,
            count: int = 0, out: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    sets = [
        f'source.bootstrap_servers=["{env.bootstrap}"]', f'source.topics=["{topic}"]',
        f"source.group_id=mem-{uuid.uuid4().hex[:8]}", f"handler.target={handler}",
        "runtime.log_level=WARNING", *settings,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "worker", "run"]
    for item in sets:
        cmd += ["--set", item]
    path = os.pathsep.join([str(build), str(ROOT / "load"), str(ROOT)])
    penv = {**os.environ, "PYTHONPATH": path, "BENCH_COUNT": str(count), "BENCH_OUT": str(out)}
    return subprocess.Popen(cmd, cwd=build, env=penv, stdout=subprocess.DEVNULL)


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("worker_memory_bytes", "process_resident_memory_bytes")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def rss_run(build: Path, env: Env, topic: str, seconds: float) -> dict:
    port = kafka_broker.free_port()
    proc = _worker(build, env, topic, "memory_handler:handle", "batching.batch_size=100",
                   f"metrics.listen=127.0.0.1:{port}")  # fmt: skip
    samples: list[float] = []
    try:
        _wait_ready(port, proc)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            samples.append(round(_rss_mb(proc.pid), 1))
            time.sleep(1.0)
        scraped = _scrape(port)
    finally:
        _stop(proc)
    return {"rss_ready_mb": samples[0], "rss_max_mb": max(samples), "samples_mb": samples,
            "metrics_at_end": scraped}  # fmt: skip


def throughput_runs(builds: dict[str, Path], env: Env, rounds: int) -> list[dict]:
    """Each build's no-op worker and the raw loop, rounds interleaved; medians and ratios."""
    records, topic = 1_000_000, "mem-throughput"
    fill(env, topic, 8, records)
    rates: dict[str, list[float]] = {name: [] for name in [RAW, *builds]}
    order = list(builds.items())
    for i in range(rounds):
        rates[RAW].append(
            run_contender(Contender(RAW, "raw", "noop", RAW), env, topic, records)["rate"]
        )
        for name, build in order[i % 2 :] + order[: i % 2]:  # who goes first alternates
            out = env.tmp / f"result-{uuid.uuid4().hex[:8]}"
            proc = _worker(build, env, topic, "load.bench_handlers:noop",
                           "batching.batch_size=10000", "batching.maximum_batching_window_ms=0",
                           "metrics.listen=127.0.0.1:0", count=records, out=out)  # fmt: skip
            try:
                rates[name].append(_wait_result(out, proc, timeout_s=600)["rate"])
            finally:
                _stop(proc)
        print("  round:", {k: round(v[-1]) for k, v in rates.items()}, flush=True)
    raw = statistics.median(rates[RAW])
    return [{"contender": name, "rates": [round(r) for r in rs],
             "records_per_s": round(statistics.median(rs)),
             "ratio_to_raw": round(statistics.median(rs) / raw, 3)}
            for name, rs in rates.items()]  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        f"# Memory: {result['backlog']:,} readings of ~1 KB, handler 50 ms per batch of "
        f"100, RSS every 1 s for {result['seconds']:.0f} s",
        "",
        f"{result['machine']}, Kafka {result['kafka']}, {result['when']}",
        "",
        "| build | partitions | RSS ready MB | max RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rss"]:
        lines.append(
            f"| {r['build']} | {r['partitions']} | {r['rss_ready_mb']} | {r['rss_max_mb']} |"
        )
    if result.get("throughput"):
        lines += ["", "| 8 partitions, no-op, 1,000,000 readings | median records/s | rounds | "
                  "ratio to raw |", "|---|---:|---|---:|"]  # fmt: skip
        for t in result["throughput"]:
            lines.append(
                f"| {t['contender']} | {t['records_per_s']:,} | "
                f"{', '.join(f'{r:,}' for r in t['rates'])} | {t['ratio_to_raw']} |"
            )
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in result["rss"]:
        style = "-" if r["build"] == "this tree" else "--"
        ax.plot(r["samples_mb"], style, label=f"{r['build']}, {r['partitions']} partitions")
    ax.set_xlabel("seconds since ready")
    ax.set_ylabel("worker RSS, MB")
    ax.set_title(f"RSS under a backlog of 1 KB readings, slow handler: {result['machine']}",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(partitions: list[int], backlog: int, seconds: float, builds: list[str],
         throughput: bool, rounds: int) -> int:  # fmt: skip
    trees = {"this tree": ROOT}
    for item in builds:
        label, _, directory = item.partition("=")
        trees[label] = Path(directory).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="streamworker-memory-"))
    broker = kafka_broker.start(tmp / "kafka")
    env = Env(broker.bootstrap, tmp)
    rss: list[dict] = []
    result: dict = {}
    try:
        for n in partitions:
            topic = f"mem-{n}"
            fill(env, topic, n, backlog, value_bytes=RECORD_BYTES)
            for label, tree in reversed(list(trees.items())):  # older builds first
                row = {"build": label, "partitions": n, **rss_run(tree, env, topic, seconds)}
                print(f"  {label}, {n} partitions: ready {row['rss_ready_mb']} MB, "
                      f"max {row['rss_max_mb']} MB", flush=True)  # fmt: skip
                rss.append(row)
        if throughput:
            result["throughput"] = throughput_runs(trees, env, rounds)
    finally:
        broker.stop()
    import platform

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}", "kafka": kafka_broker.KAFKA_VERSION,
              "when": time.strftime("%Y-%m-%d"), "backlog": backlog, "seconds": seconds,
              "record_bytes": RECORD_BYTES, "rss": rss, **result}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not rss and (RESULTS / "memory.json").exists():  # throughput only: keep the RSS rows
        result["rss"] = json.loads((RESULTS / "memory.json").read_text())["rss"]
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / "memory.md").write_text(table)
    if chart(result, RESULTS / "memory.png"):
        print(f"chart: {RESULTS / 'memory.png'}")
    print(table)
    return 0
