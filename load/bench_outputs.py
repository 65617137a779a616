"""The outputs scenario: one output per input, none vs at least once vs exactly once,
and the IoT pipeline into SQLite.

The handler's own rate would flatter the modes with outputs (a partition may run up to
`runtime.max_buffered_records` ahead of its commits), so the rate here is the group's
committed rate, polled from the broker: records committed per second between 10% and
100% of the topic, each mode in its own process and group, rounds interleaved.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from load.produce import create_topic

MODES = {
    "no outputs": ("handler.target=load.bench_handlers:noop",),
    "at least once": ("handler.target=load.bench_handlers:send_each",),
    "exactly once": ("handler.target=load.bench_handlers:send_each",
                     "outputs.exactly_once=true"),
    # The IoT pipeline: every reading upserted into SQLite (rows/s = records/s here: the
    # generator's readings are all valid), alerts at least once.
    "iot pipeline, SQLite": ("handler.target=handlers.iot_pipeline:handle",),
}  # fmt: skip


async def _committed(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:
        return 0
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


def _rate(env: Any, topic: str, out: str, records: int, settings: tuple[str, ...]) -> float:
    from load.bench import worker_cmd

    group = f"bench-out-{uuid.uuid4().hex[:8]}"
    cmd = worker_cmd(env.bootstrap, topic, "noop", "batching.batch_size=500",
                     f'outputs.topics=["{out}"]', f"source.group_id={group}",
                     *settings)  # later --set win  # fmt: skip
    penv = {
        **os.environ,
        "BENCH_OUTPUT_TOPIC": out,
        "BENCH_COUNT": "0",
        "IOT_DATABASE_URL": f"sqlite:///{env.tmp / group}.db",
        "IOT_ALERTS_TOPIC": out,
    }
    proc = subprocess.Popen(cmd, env=penv, stdout=subprocess.DEVNULL)
    try:
        t0 = n0 = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = asyncio.run(_committed(env.bootstrap, group))
            if t0 is None and done >= records // 10:
                t0, n0 = time.monotonic(), done
            if done >= records and t0 is not None and n0 is not None:
                return (done - n0) / (time.monotonic() - t0)
            time.sleep(0.1)
        raise TimeoutError("the worker did not commit the topic in 900 s")
    finally:
        proc.terminate()
        proc.wait(30)


def outputs(env: Any, records: int, rounds: int = 3) -> None:
    from load.bench import fill

    print("outputs: one output per input (committed records/s)", flush=True)
    fill(env, "bench-outputs", 4, records)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode, settings in MODES.items():
            out = f"bench-out-{uuid.uuid4().hex[:6]}"
            asyncio.run(create_topic(env.bootstrap, out, 4))
            rate = _rate(env, "bench-outputs", out, records, settings)
            rates[mode].append(rate)
            print(f"  round {r + 1}: {mode:<14} {rate:>10,.0f} rec/s", flush=True)
    base = statistics.median(rates["no outputs"])
    env.results["outputs"] = [
        {"mode": mode, "records_per_s": round(statistics.median(v)),
         "ratio": round(statistics.median(v) / base, 3), "rounds": [round(x) for x in v]}
        for mode, v in rates.items()
    ]  # fmt: skip


if __name__ == "__main__":  # python -m load.bench_outputs [RECORDS] [ROUNDS]
    import tempfile
    from pathlib import Path

    from load.bench import Env
    from scripts import kafka_broker

    tmp = Path(tempfile.mkdtemp(prefix="streamworker-bench-outputs-"))
    broker = kafka_broker.start(tmp / "kafka")
    try:
        env = Env(broker.bootstrap, tmp)
        outputs(env, int(sys.argv[1]) if len(sys.argv) > 1 else 200_000,
                int(sys.argv[2]) if len(sys.argv) > 2 else 3)  # fmt: skip
        for row in env.results["outputs"]:
            print(row)
    finally:
        broker.stop()
