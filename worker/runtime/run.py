"""The daemon in this process: uvloop, GC tuning and signals around one `Worker`."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from worker.config import WorkerConfig
from worker.observe.tracing import configure_provider
from worker.runtime.deadline import MIN_STEP_S, Backstop
from worker.runtime.signals import Signals
from worker.runtime.worker import Worker

log = logging.getLogger("worker")

#: How long past its shutdown budget the daemon may take before the backstop ends it.
BACKSTOP_GRACE_S = 1.0
#: The least a shutdown takes whatever its budget: in a broker outage the final commit and
#: the client's close each wait out the MIN_STEP_S they get of a spent budget.
SPENT_BUDGET_STEPS_S = 2 * MIN_STEP_S


def backstop_after_s(budget_s: float) -> float:
    """When the backstop ends the daemon: a little after the budget, and never before the
    least time the shutdown's steps take (with a budget of 0 or 0.1 s, the backstop at the
    budget + 1 s ended librdkafka's worker in an outage before `shutdown_complete`)."""
    return max(budget_s, SPENT_BUDGET_STEPS_S) + BACKSTOP_GRACE_S


def tune_gc(config: WorkerConfig) -> None:
    """Keep the cyclic garbage collector from rescanning buffered records.

    Records hold no reference cycles, but with Python's default thresholds the
    collector runs every 700 allocations and, as buffered records survive,
    rescans them in ever older generations: measured here, that alone cost the
    worker 10-20% of its throughput against a raw consume loop. Objects alive
    after start-up are frozen out of collection; the thresholds are raised.
    """
    if config.runtime.gc_freeze:
        gc.freeze()
    gc.set_threshold(*config.runtime.gc_threshold)


def run(config: WorkerConfig) -> int:
    """Run the worker on uvloop until a signal; returns the process exit code."""
    import uvloop

    if config.tracing.enabled:  # before any client exists: a bad exporter leaves none open
        configure_provider()

    async def main() -> int:
        worker = Worker(config)
        tune_gc(config)
        Signals(worker.request_exit).install()
        serving = asyncio.create_task(worker.serve(), name="worker")
        await worker.should_exit.wait()
        # Past the budget the daemon ends whatever the loop is doing (a broker outage, a
        # wedged thread): an orchestrator would SIGKILL it soon after anyway.
        backstop = Backstop(backstop_after_s(worker.shutdown_budget_s()), lambda: worker.exit_code)
        backstop.arm()
        try:
            return await serving
        finally:
            backstop.disarm()

    started = time.monotonic()
    code = uvloop.run(main())
    log.info("event=exited uptime_s=%.1f", time.monotonic() - started)
    return code
