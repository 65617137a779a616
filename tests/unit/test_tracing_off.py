"""Tracing off (the default) needs no OpenTelemetry and builds nothing; on without the
extra, the start fails with one clear line.

Run in a child interpreter where `import opentelemetry` fails, as on an install
without the `otel` extra (the dev install has the SDK for the tracing tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
from worker.errors import StartError
from worker.testing import MemoryBroker, running_worker

broker = MemoryBroker()
broker.create_topic("t", 1)
for i in range(50):
    broker.produce("t", b"%d" % i, partition=0)
seen = []

async def handler(batch):
    seen.extend(r.offset for r in batch.records)

async def main():
    async with running_worker(handler, broker, ["t"]) as w:
        assert w.committer._tracing is None
        while len(seen) < 50:
            await asyncio.sleep(0.01)
    assert "opentelemetry" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
    try:
        async with running_worker(handler, broker, ["t"], {"tracing": {"enabled": True}}):
            pass
    except StartError as exc:
        print("start error:", exc)

asyncio.run(main())
print("handled", len(seen))
"""


def test_tracing_off_runs_without_opentelemetry_and_on_without_it_says_what_to_install():
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "handled 50" in out.stdout
    assert "start error: tracing.enabled needs OpenTelemetry: pip install 'streamworker[otel]'" in (
        out.stdout
    )
