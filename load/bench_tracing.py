"""What tracing costs: `python -m load.bench_tracing [--records N] [--rounds R]`.

One topic of 8 partitions whose every record carries a W3C `traceparent`
header (what a traced producer sends). Per round, alternating: the raw aiokafka
loop, the worker with the no-op handler and tracing off (the default), and the
same with `tracing.enabled` (the SDK's TracerProvider, no exporter:
`OTEL_TRACES_EXPORTER=none`, so what is measured is the worker's spans and one
link per record, up to `tracing.max_links`). Prints the medians, the no-op
ratio against the raw loop with tracing off and on, and the cost per record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from load.bench import RAW, Contender, Env, run_contender
from load.produce import create_topic
from scripts import kafka_broker

PARTITIONS = 8
CONTENDERS = [
    Contender(RAW, "raw", "noop", RAW),
    Contender("worker, no-op, tracing off", "worker", "noop", RAW),
    Contender("worker, no-op, tracing on", "worker", "noop", RAW, ("tracing.enabled=true",)),
]


async def fill(bootstrap: str, topic: str, count: int) -> None:
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, acks=1,
                                max_batch_size=1_048_576)  # fmt: skip
    await producer.start()
    try:
        value = b'{"device":"d1","temperature":21.5}'
        pending = []
        for i in range(count):
            trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
            headers = [("traceparent", f"00-{trace_id}-{span_id}-01".encode())]
            pending.append(await producer.send(topic, value, partition=i % PARTITIONS,
                                               headers=headers))  # fmt: skip
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["OTEL_TRACES_EXPORTER"] = "none"  # inherited by the worker processes
    tmp = Path(tempfile.mkdtemp(prefix="streamworker-bench-tracing-"))
    broker = kafka_broker.start(tmp / "kafka")
    env = Env(broker.bootstrap, tmp)
    rates: dict[str, list[float]] = {c.name: [] for c in CONTENDERS}
    try:
        started = time.monotonic()
        asyncio.run(fill(env.bootstrap, "traced", args.records))
        print(f"traced: {args.records:,} records in {time.monotonic() - started:.1f}s")
        for r in range(args.rounds):
            for c in CONTENDERS:
                rate = run_contender(c, env, "traced", args.records)["rate"]
                rates[c.name].append(rate)
                print(f"  round {r + 1}: {c.name:<28} {rate:>10,.0f} rec/s", flush=True)
    finally:
        broker.stop()
    med = {name: statistics.median(v) for name, v in rates.items()}
    off, on = med[CONTENDERS[1].name], med[CONTENDERS[2].name]
    result = {
        "records": args.records,
        "rounds": args.rounds,
        "records_per_s": {k: round(v) for k, v in med.items()},
        "noop_ratio_vs_raw_tracing_off": round(off / med[RAW], 3),
        "noop_ratio_vs_raw_tracing_on": round(on / med[RAW], 3),
        "tracing_cost_us_per_record": round((1 / on - 1 / off) * 1e6, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
