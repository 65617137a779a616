"""Handlers the benchmark runs inside `worker run`: no-op, decode each value, the IoT example.

Each counts records and, once `$BENCH_COUNT` were seen, writes the rate
(records/s from the start of the first batch to the end of the last) to
`$BENCH_OUT`. Counting is per batch, like everything else on the hot path.
"""

from __future__ import annotations

import os
import time

import orjson

from handlers.iot_telemetry import aggregate

_N = int(os.environ.get("BENCH_COUNT", "0"))
_OUT = os.environ.get("BENCH_OUT", "")
_seen = 0
_t0 = 0.0


def _account(n: int) -> None:
    global _seen, _t0
    if not _seen:
        _t0 = time.perf_counter()
    _seen += n
    if _seen >= _N and _OUT:
        with open(_OUT, "w") as fh:
            fh.write(f"{_seen / (time.perf_counter() - _t0)}\n")


async def noop(batch) -> None:
    _account(len(batch.records))


async def decode(batch) -> None:
    loads = orjson.loads
    for r in batch.records:
        loads(r.value)
    _account(len(batch.records))


async def iot(batch) -> None:
    aggregate([r.value for r in batch.records])
    _account(len(batch.records))
