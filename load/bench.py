"""The benchmark: the worker against the raw client and the peers, one broker, one run.

    python -m load bench [--records N] [--rounds R] [--backlog N] [--quick]

Starts the real Kafka broker, fills topics with IoT telemetry, and measures:
  throughput   raw aiokafka getmany+commit loop (the ceiling), the same with
               orjson decoding, `worker run` with a no-op / decoding / IoT
               handler, sentry-arroyo and quixstreams (each in its own
               virtualenv, librdkafka defaults and fetch.queue.backoff.ms=10);
               rounds interleaved, median reported, ratios to the raw loop;
  parallel     an I/O-bound handler (5 ms per batch) at parallelization 1/4/16,
               with per-device order checked by the handler;
  cpu          a CPU-bound handler with concurrency=process, processes 1 and 2;
  latency      produce -> handler, p50/p99, at 10k records/s offered, window 0, on
               each client;
  memory       the worker's RSS over a backlog of 1 KB records, slow handler.
Each contender runs in its own process with a fresh consumer group. Results:
load/results/latest.{json,md,png}. Timing goals are judged here, as ratios
within one run, never in the test suite.
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "load" / "results"
PEERS = Path(os.environ.get("STREAMWORKER_CACHE", Path.home() / ".cache" / "streamworker"))
PEER_VENVS = {
    "arroyo": (PEERS / "peers" / "arroyo", ["sentry-arroyo>=2.48", "confluent-kafka>=2.13.2"]),
    "quix": (PEERS / "peers" / "quix", ["quixstreams>=3.20,<4"]),
}
sys.path.insert(0, str(ROOT))

from scripts import kafka_broker  # noqa: E402

RAW, RAW_DECODE = "raw aiokafka getmany+commit", "raw aiokafka + orjson decode"
RD, RD_DECODE = "raw confluent consume(1000), GC tuned", "raw confluent + orjson, GC tuned"
RD_WORKER = "worker on librdkafka, no-op handler"
LIBRDKAFKA = "source.client=librdkafka"


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # raw | rdkafka | worker | arroyo | quix
    work: str  # raw/peers: noop|decode; worker: a handler in load.bench_handlers
    baseline: str
    #: worker: --set items; raw: "gc"; rdkafka: sync|thread|aio [gc]; peers: the backoff
    options: tuple[str, ...] = ()
    #: worker: run from this source tree instead of this one (`--build`, bench_select.py)
    build: Path | None = None


THROUGHPUT = [
    Contender(RAW, "raw", "noop", RAW),
    Contender(RAW_DECODE, "raw", "decode", RAW_DECODE),
    Contender("raw aiokafka loop, GC tuned as the worker", "raw", "noop", RAW, ("gc",)),
    Contender("worker, no-op handler", "worker", "noop", RAW),
    Contender("worker, orjson decode handler", "worker", "decode", RAW_DECODE),
    Contender("worker, IoT example handler", "worker", "iot", RAW_DECODE),
    # librdkafka (source.client): the raw loop three ways (see load/bench_raw_rdkafka.py),
    # then the worker on it; every row in the same interleaved rounds.
    Contender(RD, "rdkafka", "noop", RD, ("sync", "gc")),
    Contender(RD_DECODE, "rdkafka", "decode", RD_DECODE, ("sync", "gc")),
    Contender(
        "raw confluent, own thread around consume(1000)", "rdkafka", "noop", RD, ("thread", "gc")
    ),
    Contender("raw confluent AIOConsumer.consume(1000)", "rdkafka", "noop", RD, ("aio", "gc")),
    Contender(RD_WORKER, "worker", "noop", RD, (LIBRDKAFKA,)),
    Contender("worker on librdkafka, orjson decode", "worker", "decode", RD_DECODE, (LIBRDKAFKA,)),
    Contender(
        "worker on librdkafka, Lambda-style no-op",
        "worker",
        "lambda_noop",
        RD_WORKER,
        (LIBRDKAFKA, "handler.style=lambda"),
    ),
    Contender("arroyo, no-op (defaults)", "arroyo", "noop", RAW, ("default",)),
    Contender("arroyo, no-op (backoff 10 ms)", "arroyo", "noop", RAW, ("10",)),
    Contender("arroyo, decode (backoff 10 ms)", "arroyo", "decode", RAW_DECODE, ("10",)),
    Contender("quixstreams, bytes (defaults)", "quix", "noop", RAW, ("default",)),
    Contender("quixstreams, bytes (backoff 10 ms)", "quix", "noop", RAW, ("10",)),
    Contender("quixstreams, json (backoff 10 ms)", "quix", "decode", RAW_DECODE, ("10",)),
]


@dataclass
class Env:
    bootstrap: str
    tmp: Path
    results: dict = field(default_factory=dict)


# -- running one contender ----------------------------------------------------------------
def _wait_result(out: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while not (out.exists() and out.stat().st_size):
        if proc.poll() is not None and not out.exists():
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} without a result")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not finish in {timeout_s}s")
        time.sleep(0.05)
    text = out.read_text().strip()
    return json.loads(text) if text.startswith("{") else {"rate": float(text)}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_cmd(bootstrap: str, topic: str, handler: str, *settings: str) -> list[str]:
    """The worker on the bench's Kafka topic, unless `settings` name another source.kind
    (whose config refuses Kafka's keys)."""
    kafka = not any(s.startswith("source.kind=") for s in settings)
    source = [f'source.bootstrap_servers=["{bootstrap}"]', f'source.topics=["{topic}"]',
              f"source.group_id=bench-{uuid.uuid4().hex[:8]}"] if kafka else []  # fmt: skip
    sets = [
        *source,
        "batching.batch_size=10000",
        "batching.maximum_batching_window_ms=0",
        f"handler.target=load.bench_handlers:{handler}",
        "metrics.listen=127.0.0.1:0",
        "runtime.log_level=WARNING",
        *settings,
    ]
    cmd = [sys.executable, "-m", "worker", "run"]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def run_contender(c: Contender, env: Env, topic: str, count: int) -> dict:
    out = env.tmp / f"result-{uuid.uuid4().hex[:8]}"
    penv = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_COUNT": str(count), "BENCH_OUT": str(out)}
    if c.kind == "raw":
        cmd = [sys.executable, "-m", "load.bench_raw", env.bootstrap, topic, str(count), c.work]
        cmd += [str(out), *c.options]
    elif c.kind == "rdkafka":
        cmd = [sys.executable, "-m", "load.bench_raw_rdkafka", env.bootstrap, topic, str(count)]
        cmd += [c.work, str(out), *c.options]
    elif c.kind == "worker":
        cmd = worker_cmd(env.bootstrap, topic, c.work, *c.options)
        if c.build is not None:  # its worker package first; load.bench_handlers from here
            penv["PYTHONPATH"] = os.pathsep.join([str(c.build), str(ROOT)])
    else:
        python = PEER_VENVS[c.kind][0] / "bin" / "python"
        script = ROOT / "load" / "peers" / f"{c.kind}_bench.py"
        cmd = [str(python), str(script), env.bootstrap, topic, str(count), c.work, c.options[0]]
        cmd.append(str(out))
    proc = subprocess.Popen(cmd, cwd=c.build or ROOT, env=penv, stdout=subprocess.DEVNULL)
    try:
        return _wait_result(out, proc, timeout_s=900)
    finally:
        _stop(proc)


def ensure_peers() -> list[str]:
    """Create each peer's virtualenv once (they need conflicting confluent-kafka versions)."""
    ready: list[str] = []
    if os.environ.get("BENCH_PEERS") == "0":  # the peers left out of this run
        return ready
    for name, (venv, packages) in PEER_VENVS.items():
        python = venv / "bin" / "python"
        if not python.exists():
            print(f"installing {name} into {venv} (once)", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(python), "-m", "pip", "install", "-q", *packages, "orjson"]
            if subprocess.run(pip).returncode != 0:
                print(f"  {name}: install failed; left out of this run", flush=True)
                continue
        ready.append(name)
    return ready


# -- topics ----------------------------------------------------------------------------------
async def _fill(bootstrap: str, topic: str, partitions: int, count: int, **kw: object) -> None:
    from load.produce import create_topic, produce

    await create_topic(bootstrap, topic, partitions)
    if count:
        await produce(bootstrap, topic, devices=2000, count=count, **kw)  # type: ignore[arg-type]


def fill(env: Env, topic: str, partitions: int, count: int, **kw: object) -> None:
    started = time.monotonic()
    asyncio.run(_fill(env.bootstrap, topic, partitions, count, **kw))
    print(f"  {topic}: {count:,} records in {time.monotonic() - started:.1f}s", flush=True)


# -- scenarios -------------------------------------------------------------------------------
def throughput(env: Env, records: int, rounds: int, peer_records: int,
               rows: list[str] | None = None, builds: list[str] | None = None) -> None:  # fmt: skip
    from load.bench_select import add_builds, keep_rows

    print("throughput", flush=True)
    fill(env, "bench", 8, records)
    peers = ensure_peers()
    ours = ("raw", "rdkafka", "worker")
    contenders = [c for c in THROUGHPUT if c.kind in ours or c.kind in peers]
    contenders = add_builds(keep_rows(contenders, rows), builds or [])
    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
    cpus: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders:
            count = records if c.kind in ours else peer_records
            result = run_contender(c, env, "bench", count)
            rates[c.name].append(result["rate"])
            if "cpu_s_per_m" in result:
                cpus[c.name].append(result["cpu_s_per_m"])
            cpu = result.get("cpu_s_per_m", float("nan"))
            print(f"  round {r + 1}: {c.name:<48} {result['rate']:>10,.0f} rec/s "
                  f"{cpu:5.2f} CPU s/M", flush=True)  # fmt: skip
    medians = {name: statistics.median(v) for name, v in rates.items()}
    env.results["throughput"] = [
        {
            "contender": c.name,
            "records_per_s": round(medians[c.name]),
            "ratio": round(medians[c.name] / medians[c.baseline], 3),
            "vs": c.baseline,
            "rounds": [round(x) for x in rates[c.name]],
            **paired(rates[c.name], rates[c.baseline]),
            # The process's CPU (all its threads) per million records, median of the rounds.
            "cpu_s_per_m": round(statistics.median(cpus[c.name]), 3) if cpus[c.name] else None,
            "cpu_ratio": cpu_ratio(cpus[c.name], cpus[c.baseline]),
        }
        for c in contenders
    ]


def paired(rates: list[float], baseline: list[float]) -> dict[str, object]:
    """The ratio of each round to its baseline's run in the same round: its median and
    range. On this machine one run's rate moves by up to 1.8x from round to round (noisy
    neighbours), and two contenders run seconds apart share most of a round's weather, so
    the median of paired ratios moves less from run to run than the ratio of medians."""
    ratios = [a / b for a, b in zip(rates, baseline, strict=True)]
    return {"paired_ratio": round(statistics.median(ratios), 3),
            "paired_range": [round(min(ratios), 3), round(max(ratios), 3)]}  # fmt: skip


def cpu_ratio(cpus: list[float], baseline: list[float]) -> float | None:
    """The baseline's CPU per record over the row's (medians): the throughput ratio the row
    would reach were CPU all it waited for; steadier than records/s."""
    if not cpus or not baseline:
        return None
    return round(statistics.median(baseline) / statistics.median(cpus), 3)


def fetch_tuning(env: Env, records: int) -> None:
    """The worker (no-op handler) under the fetch settings worth trying, on the same topic."""
    print("fetch settings (worker, no-op handler)", flush=True)
    if "throughput" not in env.results:
        fill(env, "bench", 8, records)
    variants = {
        "defaults (2 MiB per partition, 50 MiB, crc on)": (),
        "max_partition_fetch_bytes 256 KiB": ("source.max_partition_fetch_bytes=262144",),
        "max_partition_fetch_bytes 1 MiB": ("source.max_partition_fetch_bytes=1048576",),
        "max_partition_fetch_bytes 4 MiB": ("source.max_partition_fetch_bytes=4194304",),
        "fetch_max_records 1000": ("source.fetch_max_records=1000",),
        "check_crcs off": ("source.check_crcs=false",),
    }
    rows = []
    for name, options in variants.items():
        c = Contender(name, "worker", "noop", "", options)
        rate = statistics.median(run_contender(c, env, "bench", records)["rate"] for _ in range(2))
        rows.append({"settings": name, "records_per_s": round(rate)})
        print(f"  {name:<48} {rate:>10,.0f} rec/s", flush=True)
    for row in rows:
        row["ratio"] = round(row["records_per_s"] / rows[0]["records_per_s"], 3)
    env.results["fetch"] = rows


def parallel(env: Env, records: int) -> None:
    print("parallel lanes, I/O-bound handler (5 ms per batch of 10)", flush=True)
    fill(env, "bench-io", 2, records)
    rows = []
    for factor in (1, 4, 16):
        c = Contender(
            f"parallelization {factor}", "worker", "io_bound", "",
            ("batching.batch_size=10", f"handler.parallelization_factor={factor}"),
        )  # fmt: skip
        result = run_contender(c, env, "bench-io", records)
        rows.append({"parallelization_factor": factor, "records_per_s": round(result["rate"]),
                     "order_violations": result["order_violations"]})  # fmt: skip
        print(f"  {c.name:<20} {result['rate']:>10,.0f} rec/s, "
              f"order violations {result['order_violations']}", flush=True)  # fmt: skip
    for row in rows:
        row["ratio_to_1"] = round(row["records_per_s"] / rows[0]["records_per_s"], 2)
    env.results["parallel"] = rows


def cpu(env: Env, records: int) -> None:
    print("CPU-bound handler in a process pool", flush=True)
    fill(env, "bench-cpu", 4, records)
    rows = []
    for processes in (1, 2):
        out = env.tmp / f"cpu-{processes}"
        cmd = worker_cmd(
            env.bootstrap, "bench-cpu", "cpu_bound", "batching.batch_size=200",
            "handler.concurrency=process", f"handler.processes={processes}",
        )  # fmt: skip
        penv = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_OUT": str(out)}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=subprocess.DEVNULL)
        try:
            rate = _wait_cpu_shares(out, records, proc)
        finally:
            _stop(proc)
        rows.append({"processes": processes, "records_per_s": round(rate)})
        print(f"  processes={processes}: {rate:>10,.0f} rec/s", flush=True)
    rows[1]["ratio_to_1"] = round(rows[1]["records_per_s"] / rows[0]["records_per_s"], 2)
    env.results["cpu"] = rows


def _wait_cpu_shares(out: Path, records: int, proc: subprocess.Popen[bytes]) -> float:
    deadline = time.monotonic() + 600
    while True:
        lines = [
            ln.split()
            for p in out.parent.glob(out.name + ".*")
            for ln in p.read_text().splitlines()
        ]
        done = sum(int(n) for n, _, _ in lines)
        if done >= records:
            start = min(float(s) for _, s, _ in lines)
            end = max(float(e) for _, _, e in lines)
            return done / (end - start)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"cpu contender stopped at {done} of {records} records")
        time.sleep(0.1)


#: The latency runs: each client, its results key.
LATENCY_CLIENTS = (("aiokafka", "latency"), ("librdkafka", "latency_librdkafka"))


def latency(env: Env, rate: int, seconds: int) -> None:
    for client, key in LATENCY_CLIENTS:
        print(f"latency on {client} at {rate:,} records/s offered, batching window 0", flush=True)
        result = _latency_run(env, rate, seconds, client)
        env.results[key] = {
            "client": client,
            "offered_per_s": rate,
            "records": rate * seconds,
            "p50_ms": round(result["p50_ms"], 2),
            "p99_ms": round(result["p99_ms"], 2),
        }
        print(f"  p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms", flush=True)


def _latency_run(env: Env, rate: int, seconds: int, client: str) -> dict:
    """One worker on a topic of its own (a worker reads a topic from its start) while
    `rate` records/s arrive."""
    topic = f"bench-lat-{client}"
    fill(env, topic, 4, 0)
    count = rate * seconds
    out = env.tmp / f"latency-{client}"
    port = kafka_broker.free_port()
    cmd = worker_cmd(env.bootstrap, topic, "latency", "batching.batch_size=100",
                     f"metrics.listen=127.0.0.1:{port}", f"source.client={client}")  # fmt: skip
    penv = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_COUNT": str(count), "BENCH_OUT": str(out)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=penv)
    try:
        _wait_ready(port, proc)
        from load.produce import produce

        asyncio.run(produce(env.bootstrap, topic, devices=2000, rate=rate,
                            duration_s=seconds, linger_ms=0))  # fmt: skip
        return _wait_result(out, proc, timeout_s=120)
    finally:
        _stop(proc)


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until /readyz says the worker has its partitions."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError("the worker did not become ready")


def kinesis(env: Env, records: int, shards: int = 4) -> None:
    """Records/s per shard on Kinesis (kinesalite, fast enough to measure), leases on moto."""
    from scripts.emulators import start_dynamodb, start_kinesalite

    print(f"kinesis: {records:,} readings over {shards} shards (kinesalite)", flush=True)
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    os.environ.update(aws)
    stream_emulator, lease_emulator = start_kinesalite(), start_dynamodb()
    try:
        stream = f"bench-{uuid.uuid4().hex[:6]}"
        value_bytes = asyncio.run(_fill_kinesis(stream_emulator.url, stream, shards, records))
        c = Contender(
            "worker on kinesis", "worker", "noop", "",
            ("source.kind=kinesis", f"source.stream_name={stream}", "source.region=us-east-1",
             f"source.endpoint_url={stream_emulator.url}",
             f"source.lease_endpoint_url={lease_emulator.url}",
             f"source.lease_table=bench-{uuid.uuid4().hex[:6]}"),
        )  # fmt: skip
        rate = run_contender(c, env, "unused", records)["rate"]
    finally:
        stream_emulator.stop()
        lease_emulator.stop()
    per_shard = rate / shards
    env.results["kinesis" if shards == 4 else f"kinesis_{shards}"] = {
        "shards": shards,
        "records": records,
        "records_per_s": round(rate),
        "records_per_s_per_shard": round(per_shard),
        "mb_per_s_per_shard": round(per_shard * value_bytes / 1e6, 2),
        "aws_read_limit_mb_per_s_per_shard": 2.0,
    }
    mb = per_shard * value_bytes / 1e6
    print(f"  {rate:,.0f} rec/s, {per_shard:,.0f} per shard ({mb:.2f} MB/s; AWS allows 2)")


async def _fill_kinesis(url: str, stream: str, shards: int, records: int) -> int:
    """Create the stream and put the readings; returns the average value size."""
    from itertools import islice

    from aiobotocore.session import get_session

    from load.telemetry import readings

    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=url
    ) as client:
        await client.create_stream(StreamName=stream, ShardCount=shards)
        for _ in range(300):  # kinesalite is told to create streams at once; be patient anyway
            summary = await client.describe_stream_summary(StreamName=stream)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.1)
        total = 0
        source = readings(2000)
        for start in range(0, records, 500):
            batch = list(islice(source, min(500, records - start)))
            total += sum(len(v) for _, v in batch)
            await client.put_records(
                StreamName=stream,
                Records=[{"Data": v, "PartitionKey": k.decode()} for k, v in batch],
            )
    return total // max(records, 1)


def memory(env: Env, backlog: int, seconds: float) -> None:
    print(f"memory: backlog of {backlog:,} records of 1 KB, slow handler", flush=True)
    fill(env, "bench-mem", 8, backlog, value_bytes=1024)
    port = kafka_broker.free_port()
    cmd = worker_cmd(env.bootstrap, "bench-mem", "io_bound", "batching.batch_size=10",
                     f"metrics.listen=127.0.0.1:{port}")  # fmt: skip
    penv = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_COUNT": str(backlog * 10)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=subprocess.DEVNULL)
    samples = []
    try:
        _wait_ready(port, proc)
        baseline = _rss_mb(proc.pid)  # started, assigned, before the backlog fills buffers
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            samples.append(_rss_mb(proc.pid))
            time.sleep(0.25)
    finally:
        _stop(proc)
    env.results["memory"] = {
        "backlog_records": backlog,
        "record_bytes": 1024,
        "rss_ready_mb": round(baseline, 1),
        "rss_max_mb": round(max(samples), 1),
        "growth_mb": round(max(samples) - baseline, 1),
        "seconds": seconds,
    }
    print(f"  RSS {baseline:.0f} MB when ready, max {max(samples):.0f} MB", flush=True)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- reporting -------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}; Kafka {result['kafka']} (one KRaft node on loopback).",
        "",
    ]
    if "throughput" in result:
        lines += [
            f"**Throughput** ({result['records']:,} IoT readings of ~190 B in 8 partitions; "
            f"peers read {result['peer_records']:,}; median of {result['rounds']} rounds)",
            "",
            "ratio: of the medians; paired: the median (range) of each round's ratio to its "
            "baseline's run in that round; CPU ratio: the baseline's CPU per record over the "
            "row's.",
            "",
            "| contender | records/s | ratio | paired | compared with | CPU s per M records "
            "| CPU ratio |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for row in result["throughput"]:
            cpu, cpu_r, span = row.get("cpu_s_per_m"), row.get("cpu_ratio"), row.get("paired_range")
            pair = f"{row['paired_ratio']:.2f} ({span[0]:.2f}-{span[1]:.2f})" if span else ""
            lines.append(f"| {row['contender']} | {row['records_per_s']:,} | "
                         f"{row['ratio']:.2f} | {pair} | {row['vs']} | "
                         f"{'' if cpu is None else f'{cpu:.2f}'} | "
                         f"{'' if cpu_r is None else f'{cpu_r:.2f}'} |")  # fmt: skip
        lines.append("")
    if "fetch" in result:
        lines += ["**Fetch settings** (worker, no-op handler, median of 2)", "",
                  "| settings | records/s | ratio |", "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {r['settings']} | {r['records_per_s']:,} | {r['ratio']:.2f} |"
                  for r in result["fetch"]]  # fmt: skip
        lines.append("")
    if "parallel" in result:
        lines += ["**I/O-bound handler** (5 ms per batch of 10, 2 partitions)", "",
                  "| parallelization | records/s | vs factor 1 | per-key order violations |",
                  "|---:|---:|---:|---:|"]  # fmt: skip
        for row in result["parallel"]:
            lines.append(f"| {row['parallelization_factor']} | {row['records_per_s']:,} | "
                         f"{row['ratio_to_1']:.1f} | {row['order_violations']} |")  # fmt: skip
        lines.append("")
    if "cpu" in result:
        lines += ["**CPU-bound handler** (~100 µs per record, concurrency = process)", "",
                  "| processes | records/s |", "|---:|---:|"]  # fmt: skip
        lines += [f"| {r['processes']} | {r['records_per_s']:,} |" for r in result["cpu"]]
        lines += ["", f"processes 2 / processes 1 = {result['cpu'][1]['ratio_to_1']:.2f}", ""]
    for _, key in LATENCY_CLIENTS:
        if key in result:
            lat = result[key]
            lines += [f"**Latency** ({lat.get('client', 'aiokafka')}) produce → handler at "
                      f"{lat['offered_per_s']:,} records/s offered, batching window 0: "
                      f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms "
                      f"({lat['records']:,} records)", ""]  # fmt: skip
    kinesis_runs = sorted((k for k in result if k == "kinesis" or k.startswith("kinesis_")),
                          key=lambda k: result[k]["shards"])  # fmt: skip
    for name in kinesis_runs:
        k = result[name]
        lines += [f"**Kinesis** (kinesalite, {k['shards']} shards, {k['records']:,} readings, "
                  f"no-op handler): {k['records_per_s']:,} records/s, "
                  f"{k['records_per_s_per_shard']:,} per shard = {k['mb_per_s_per_shard']} MB/s "
                  f"per shard (AWS's read limit: 2 MB/s per shard)", ""]  # fmt: skip
    if "memory" in result:
        mem = result["memory"]
        lines += [f"**Memory** with a backlog of {mem['backlog_records']:,} records of 1 KB and a "
                  f"handler that cannot keep up: RSS {mem['rss_ready_mb']} MB when ready, at most "
                  f"{mem['rss_max_mb']} MB over {mem['seconds']:.0f} s "
                  f"(+{mem['growth_mb']} MB)", ""]  # fmt: skip
    return "\n".join(lines)


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result.get("throughput", [])
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    names = [r["contender"] for r in rows][::-1]
    rates = [r["records_per_s"] / 1000 for r in rows][::-1]
    colours = ["#2b6cb0" if n.startswith("worker") else "#a0aec0" for n in names]
    ax.barh(names, rates, color=colours)
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}k", va="center", fontsize=8)
    ax.set_xlabel("thousand records per second (one process)")
    ax.set_title(f"streamworker vs raw aiokafka and peers — {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(records: int, rounds: int, backlog: int, quick: bool, only: list[str] | None,
         shards: tuple[int, ...] = (4,), rows: list[str] | None = None,
         builds: list[str] | None = None) -> int:  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="streamworker-bench-"))
    broker = kafka_broker.start(tmp / "kafka")
    env = Env(broker.bootstrap, tmp)
    peer_records = min(records, 300_000)
    wanted = set(only or ["throughput", "fetch", "parallel", "cpu", "latency", "memory", "kinesis"])
    try:
        if "throughput" in wanted:
            throughput(env, records, rounds, peer_records, rows, builds)
        if "fetch" in wanted:
            fetch_tuning(env, records)
        if "parallel" in wanted:
            parallel(env, 20_000 if quick else 60_000)
        if "cpu" in wanted:
            cpu(env, 10_000 if quick else 80_000)
        if "latency" in wanted:
            latency(env, 10_000, 5 if quick else 10)
        if "memory" in wanted:
            memory(env, backlog, 20 if quick else 40)
        if "kinesis" in wanted:
            for n in shards:
                kinesis(env, 20_000 if quick else 100_000, n)
    finally:
        broker.stop()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "kafka": kafka_broker.KAFKA_VERSION,
        "records": records,
        "peer_records": peer_records,
        "rounds": rounds,
        "when": time.strftime("%Y-%m-%d"),
        **env.results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    if only and latest.exists():  # a partial run updates its scenarios, keeps the others
        result = {**json.loads(latest.read_text()), **result}
    latest.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / "latest.md").write_text(table)
    if chart(result, RESULTS / "latest.png"):
        print(f"chart: {RESULTS / 'latest.png'}")
    print()
    print(table)
    return 0
