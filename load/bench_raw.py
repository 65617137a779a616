"""The ceiling: a bare aiokafka getmany + commit loop (optionally decoding each value).

python -m load.bench_raw BOOTSTRAP TOPIC COUNT {noop|decode} OUT [gc]

`$BENCH_STEADY` ("0.2,0.8") times that part of the records only (the sweep's steady
state). With "gc", the loop first applies the worker's GC settings (freeze, thresholds), to show
how much of the worker's lead over the plain loop is that alone.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer

from worker.config import WorkerConfig
from worker.sources.kafka.config import KafkaSourceConfig


def _steady() -> tuple[float, float]:
    """The part of the records timed: `$BENCH_STEADY` "from,to" (fractions; default 0.1,1)."""
    low, high = os.environ.get("BENCH_STEADY", "0.1,1").split(",")
    return float(low), float(high)


async def main(bootstrap: str, topic: str, count: int, work: str) -> dict[str, float]:
    d = KafkaSourceConfig(topics=[topic])  # the worker's defaults, so both fetch alike
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=d.fetch_max_bytes,
        max_partition_fetch_bytes=d.max_partition_fetch_bytes,
        fetch_max_wait_ms=d.fetch_max_wait_ms,
        check_crcs=d.check_crcs,
    )
    await consumer.start()
    loads = orjson.loads
    steady = _steady()
    seen, t0, n0, c0 = 0, 0.0, 0, 0.0
    try:
        while seen < count * steady[1]:
            chunks = await consumer.getmany(timeout_ms=1000, max_records=d.fetch_max_records)
            if not t0 and seen >= count * steady[0]:  # steady state, as for every contender
                t0, n0, c0 = time.perf_counter(), seen, time.process_time()
            for records in chunks.values():
                if work == "decode":
                    for r in records:
                        loads(r.value)
                seen += len(records)
            if chunks:
                await consumer.commit()
        rate = (seen - n0) / (time.perf_counter() - t0)
        cpu = (time.process_time() - c0) / (seen - n0) * 1e6
    finally:
        await consumer.stop()
    return {"rate": rate, "cpu_s_per_m": cpu}


if __name__ == "__main__":
    b, t, n, w, o = sys.argv[1:6]
    if sys.argv[6:] == ["gc"]:
        from worker.runtime.run import tune_gc

        tune_gc(WorkerConfig.model_validate({"source": {"topics": [t]}}))
    Path(o).write_bytes(orjson.dumps(uvloop.run(main(b, t, int(n), w))))
