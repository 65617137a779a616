"""The sweep's handler: a no-op that times the steady state, 20% to 80% of the records.

Imported as the top-level module `sweep_handler` (load/ is put on the path), so that a
worker run from another source tree (an older commit) times itself exactly alike.
Writes {"rate": ...} as JSON to `$BENCH_OUT` once `$BENCH_COUNT` * 0.8 were seen.
"""

from __future__ import annotations

import os
import time

_N = int(os.environ.get("BENCH_COUNT", "0"))
_OUT = os.environ.get("BENCH_OUT", "")
_LO, _HI = _N // 5, _N * 4 // 5
_seen = 0
_t0 = 0.0
_n0 = 0
_done = False


def _account(n: int) -> None:
    global _seen, _t0, _n0, _done
    _seen += n
    if not _t0 and _seen >= _LO:
        _t0, _n0 = time.perf_counter(), _seen
    elif _seen >= _HI and not _done and _OUT:
        _done = True
        rate = (_seen - _n0) / (time.perf_counter() - _t0)
        with open(_OUT, "w") as fh:
            fh.write(f'{{"rate": {rate}}}')


async def noop(batch) -> None:
    _account(len(batch.records))
