"""The batching sweep: the worker against the GC-tuned raw loop as partitions grow.

    python -m load bench --sweep [--partitions 8 64 256] [--batch-sizes 10 100 500 10000]
                         [--windows 0 500] [--records N] [--rounds R] [--build LABEL=DIR]
                         [--bootstrap HOST:PORT]

For each partition count, one topic of IoT readings (~190 B); on it, every round, the
GC-tuned raw aiokafka loop and the worker (no-op handler) at every batch size x window,
rounds interleaved, medians reported. The rate is the steady state: records 20% to 80%,
so neither the start nor the last window's wait counts. `--build` also runs the worker
from another source tree (an older commit) at 8 partitions, for before/after in one run.
The machine may be shared: compare ratios within one run, never absolute rates across
runs. Results: load/results/latest.md (the sweep's section), sweep.json, sweep.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from load.bench import RESULTS, ROOT, Env, _stop, _wait_result, fill
from scripts import kafka_broker

STEADY = "0.2,0.8"


def _worker_cmd(env: Env, topic: str, batch_size: int, window_ms: int) -> list[str]:
    sets = [
        f'source.bootstrap_servers=["{env.bootstrap}"]', f'source.topics=["{topic}"]',
        f"source.group_id=sweep-{uuid.uuid4().hex[:8]}", f"batching.batch_size={batch_size}",
        f"batching.maximum_batching_window_ms={window_ms}", "handler.target=sweep_handler:noop",
        "metrics.listen=127.0.0.1:0", "runtime.log_level=ERROR",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "worker", "run"]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def _run(cmd: list[str], tree: Path, count: int, env: Env) -> float:
    out = env.tmp / f"sweep-{uuid.uuid4().hex[:8]}"
    path = os.pathsep.join([str(tree), str(ROOT / "load"), str(ROOT)])
    penv = {**os.environ, "PYTHONPATH": path, "BENCH_COUNT": str(count), "BENCH_OUT": str(out),
            "BENCH_STEADY": STEADY}  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tree, env=penv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        return float(_wait_result(out, proc, timeout_s=600)["rate"])
    finally:
        _stop(proc)


def raw_rate(env: Env, topic: str, count: int) -> float:
    out = env.tmp / f"raw-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "load.bench_raw", env.bootstrap, topic, str(count), "noop",
           str(out), "gc"]  # fmt: skip
    penv = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_STEADY": STEADY}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=subprocess.DEVNULL)
    try:
        return float(_wait_result(out, proc, timeout_s=600)["rate"])
    finally:
        _stop(proc)


async def _records_in(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts or ()])
        return sum(ends.values())
    finally:
        await consumer.stop()


def topic_for(env: Env, partitions: int, records: int) -> str:
    """`sweep-N`, filled once with `records` readings (kept on a broker given to reuse)."""
    topic = f"sweep-{partitions}"
    have = asyncio.run(_records_in(env.bootstrap, topic))
    if have < records:
        fill(env, topic, partitions, records - have)
    return topic


def sweep(env: Env, partitions: list[int], batch_sizes: list[int], windows: list[int],
          records: int, rounds: int, builds: dict[str, Path]) -> dict:  # fmt: skip
    """Every round runs every contender once; returns the medians and every round."""
    topics = {n: topic_for(env, n, records) for n in partitions}
    runs: dict[tuple, list[float]] = {}
    for r in range(rounds):
        for n in partitions:
            keys: list[tuple] = [("raw", n, 0, 0)]
            keys += [("this tree", n, b, w) for b in batch_sizes for w in windows]
            if n == min(partitions):  # before/after, at the headline's partition count
                keys += [(label, n, b, w) for label in builds for b in batch_sizes
                         for w in windows]  # fmt: skip
            for key in keys if r % 2 == 0 else reversed(keys):  # interleaved both ways
                kind, _, b, w = key
                if kind == "raw":
                    rate = raw_rate(env, topics[n], records)
                else:
                    tree = ROOT if kind == "this tree" else builds[kind]
                    rate = _run(_worker_cmd(env, topics[n], b, w), tree, records, env)
                runs.setdefault(key, []).append(rate)
                print(f"  round {r + 1}: {kind:<10} partitions={n:<4} batch={b:<5} "
                      f"window={w:<3} {rate:>10,.0f} rec/s", flush=True)  # fmt: skip
    rows = []
    for (kind, n, b, w), rates in runs.items():
        median = statistics.median(rates)
        raw = statistics.median(runs[("raw", n, 0, 0)])
        rows.append({"build": kind, "partitions": n, "batch_size": b, "window_ms": w,
                     "records_per_s": round(median), "vs_raw": round(median / raw, 3),
                     "rounds": [round(x) for x in rates]})  # fmt: skip
    return {"records": records, "rounds": rounds, "steady": STEADY, "rows": rows}


def markdown(result: dict) -> str:
    rows = result["rows"]
    by = {(r["build"], r["partitions"], r["batch_size"], r["window_ms"]): r for r in rows}
    lines = [
        f"**Batching sweep** ({result['machine']}; {result['records']:,} readings per topic, "
        f"steady state = records 20%..80%, median of {result['rounds']} interleaved rounds; "
        "worker with a no-op handler vs the GC-tuned raw aiokafka loop on the same topic)",
        "",
        "| build | partitions | batch size | window ms | records/s | vs raw | vs same at "
        "fewest partitions |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fewest = min(r["partitions"] for r in rows)
    for r in sorted(rows, key=lambda r: (r["build"] != "raw", r["build"], r["partitions"],
                                         r["batch_size"], r["window_ms"])):  # fmt: skip
        base = by.get((r["build"], fewest, r["batch_size"], r["window_ms"]))
        scale = f"{r['records_per_s'] / base['records_per_s']:.2f}" if base else ""
        size = r["batch_size"] or "-"
        lines.append(f"| {r['build']} | {r['partitions']} | {size} | {r['window_ms']} | "
                     f"{r['records_per_s']:,} | {r['vs_raw']:.2f} | {scale} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> bool:
    """Rate vs partitions, one line per batch size (solid: window 0, dashed: 500 ms)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r["build"] in ("this tree", "raw")]
    fig, ax = plt.subplots(figsize=(9, 5))
    raw = sorted((r["partitions"], r["records_per_s"] / 1000) for r in rows if r["build"] == "raw")
    ax.plot(*zip(*raw, strict=True), "k-", linewidth=2, label="raw aiokafka (GC tuned)")
    series = sorted({(r["batch_size"], r["window_ms"]) for r in rows if r["build"] != "raw"})
    for size, window in series:
        points = sorted((r["partitions"], r["records_per_s"] / 1000) for r in rows
                        if (r["batch_size"], r["window_ms"]) == (size, window)
                        and r["build"] != "raw")  # fmt: skip
        style = "-o" if window == 0 else "--s"
        ax.plot(*zip(*points, strict=True), style, label=f"batch {size}, window {window} ms")
    ax.set_xscale("log", base=2)
    counts = sorted({r["partitions"] for r in rows})
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("partitions")
    ax.set_ylabel("thousand records per second (steady state)")
    ax.set_title(f"worker vs raw aiokafka as partitions grow: {result['machine']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(partitions: list[int], batch_sizes: list[int], windows: list[int], records: int,
         rounds: int, builds: list[str], bootstrap: str | None) -> int:  # fmt: skip
    trees = {}
    for item in builds:
        label, _, directory = item.partition("=")
        trees[label] = Path(directory).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="streamworker-sweep-"))
    broker = None if bootstrap else kafka_broker.start(tmp / "kafka")
    env = Env(bootstrap or broker.bootstrap, tmp)  # type: ignore[union-attr]
    try:
        result = sweep(env, partitions, batch_sizes, windows, records, rounds, trees)
    finally:
        if broker is not None:
            broker.stop()
    result["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, "
                         f"Python {platform.python_version()}")  # fmt: skip
    result["when"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    latest = RESULTS / "latest.md"
    text = latest.read_text() if latest.exists() else ""
    head = text.split("**Batching sweep**")[0].rstrip()
    latest.write_text((head + "\n\n" if head else "") + table)
    if chart(result, RESULTS / "sweep.png"):
        print(f"chart: {RESULTS / 'sweep.png'}")
    print()
    print(table)
    return 0
