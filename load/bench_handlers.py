"""Handlers the benchmark runs inside `worker run`.

Each counts records per batch and, once `$BENCH_COUNT` were seen, writes its
result (records/s from the start of the first batch to the end of the last,
plus anything it measured) as JSON to `$BENCH_OUT`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from typing import Any

import orjson

from handlers.iot_telemetry import aggregate

_N = int(os.environ.get("BENCH_COUNT", "0"))
_OUT = os.environ.get("BENCH_OUT", "")
_seen = 0
_t0 = 0.0
_c0 = 0.0
_n0 = 0
#: Lambda-style handlers run in threads: one count for all of them.
_lock = threading.Lock()
_extra: dict[str, Any] = {}
_last_seq: dict[str, int] = {}
_latencies: list[float] = []


def _account(n: int) -> None:
    """Steady state: the rate from the first batch past 10% of the records to the last."""
    global _seen, _t0, _c0, _n0
    _seen += n
    if not _t0 and _seen >= _N // 10:
        _t0, _c0, _n0 = time.perf_counter(), time.process_time(), _seen
    if _seen >= _N and _OUT:
        done = _seen - _n0
        result = {
            "rate": done / (time.perf_counter() - _t0),
            # Every thread's CPU (the client's own threads too), per million records.
            "cpu_s_per_m": (time.process_time() - _c0) / done * 1e6,
            **_extra,
        }
        if _latencies:
            ordered = sorted(_latencies)
            result["p50_ms"] = ordered[len(ordered) // 2] * 1000
            result["p99_ms"] = ordered[int(len(ordered) * 0.99)] * 1000
        with open(_OUT, "wb") as fh:
            fh.write(orjson.dumps(result))


async def noop(batch) -> None:
    _account(len(batch.records))


def lambda_noop(event: dict[str, Any], context: Any) -> None:
    """An AWS Lambda Kafka handler that does nothing: what the event costs to build."""
    with _lock:
        _account(sum(len(records) for records in event["records"].values()))


async def decode(batch) -> None:
    loads = orjson.loads
    for r in batch.records:
        loads(r.value)
    _account(len(batch.records))


async def iot(batch) -> None:
    aggregate([r.value for r in batch.records])
    _account(len(batch.records))


async def io_bound(batch) -> None:
    """5 ms of waiting per batch (a database write, say), checking per-device order."""
    await asyncio.sleep(0.005)
    for r in batch.records:
        reading = orjson.loads(r.value)
        device, seq = reading["device_id"], reading["seq"]
        if seq <= _last_seq.get(device, -1):
            _extra["order_violations"] = _extra.get("order_violations", 0) + 1
        _last_seq[device] = seq
    _extra.setdefault("order_violations", 0)
    _account(len(batch.records))


def cpu_bound(batch) -> None:
    """About 100 µs of hashing per record; runs in a process pool.

    Each child process sees only its share, so every batch appends
    "records start end" to `$BENCH_OUT.<pid>` and the harness adds them up.
    """
    started = time.time()
    for r in batch.records:
        h = r.value
        for _ in range(250):
            h = hashlib.sha256(h).digest()
    with open(f"{_OUT}.{os.getpid()}", "a") as fh:
        fh.write(f"{len(batch.records)} {started} {time.time()}\n")


async def latency(batch) -> None:
    """Produce-to-handler latency from each reading's own timestamp."""
    now = time.time()
    _latencies.extend(now - orjson.loads(r.value)["ts"] for r in batch.records)
    _account(len(batch.records))


async def send_each(batch) -> None:
    """One output per input (the outputs scenario; `$BENCH_OUTPUT_TOPIC`)."""
    topic = os.environ["BENCH_OUTPUT_TOPIC"]
    send = batch.send
    for r in batch.records:
        send(topic, r.value, key=r.key)
