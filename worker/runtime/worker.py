"""The worker's lifecycle: serve -> startup -> main_loop -> shutdown.

The main loop is the only reader of the source: it fetches chunks and feeds
each owned partition, which batches and runs them on its own tasks. The
committer checkpoints finished work; assignment changes arrive through
`Assignments`, which the source awaits, so a revoked partition is drained
and committed before it is released. The worker is also the read-only view
(`observe.view.WorkerView`) that health, the watchdog and status read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from worker.config import WorkerConfig
from worker.destinations import Destination, make_destination
from worker.observe.endpoints import Endpoints
from worker.observe.errors import RecentErrors
from worker.observe.health import Health
from worker.observe.metrics import Metrics
from worker.observe.status import Status, StatusInfo
from worker.observe.view import PartitionStats
from worker.observe.watchdog import EXIT_STALLED, CommitWatchdog, LoopMonitor
from worker.outputs.make import make_output_sink
from worker.outputs.sink import OutputSink
from worker.partition.partition import Partition
from worker.runtime.assignments import Assignments
from worker.runtime.backpressure import Backpressure
from worker.runtime.build import (
    PartitionFactory,
    StepChain,
    make_invoker,
    warn_about_failures,
)
from worker.runtime.committer import Committer
from worker.runtime.deadline import Deadline, ExitRequest, bounded, unless_stopped
from worker.runtime.tasks import TaskSupervisor
from worker.sources import make_source
from worker.sources.base import Source, SourceFailed

log = logging.getLogger("worker")

FETCH_TIMEOUT_S = 0.2
POLL_ERROR_BACKOFF_S = 1.0
EXIT_SOURCE_FAILED = 1
#: After the watchdog tripped, a batch in flight is wedged: do not wait for it.
STALLED_SHUTDOWN_S = 1.0
#: Of the shutdown budget, what the drain and final commit leave for closing the source,
#: the destination and the endpoints (at most half the budget).
CLOSE_RESERVE_S = 1.0


async def feed(chunks: Mapping[Hashable, Sequence[Any]], source: Source, owned: Assignments,
               backpressure: Backpressure) -> None:  # fmt: skip
    """Hand each owned partition its chunk, then check the budget: the work is per
    partition the fetch touched, never per partition owned. Then yield: a fetch of
    prefetched data returns without yielding, and unless the lanes take what was fed (and
    what buffer pressure cut) before the next one, the buffers only grow until every
    partition pauses."""
    touched = []
    for key, records in chunks.items():
        partition = owned.get(key)
        if partition is None or not records:
            continue  # revoked meanwhile: the next owner reads it again
        backpressure.fed(partition, partition.feed(records))
        partition.report_lag(source.lag(key))
        touched.append(partition)
    backpressure.apply_budget(touched, owned.partitions)
    # Before yielding, so that every record the client returned is in its partition: a
    # settled one is then committed past the transaction markers the client skipped.
    owned.settler.after_fetch()
    await asyncio.sleep(0)


class Worker:
    def __init__(self, config: WorkerConfig, source: Source | None = None,
                 handler: Callable[..., Any] | None = None, metrics: Metrics | None = None,
                 destination: Destination | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 outputs: OutputSink | None = None) -> None:  # fmt: skip
        self.config, rt = config, config.runtime
        self.source = source or make_source(config.source)
        self.metrics = metrics or Metrics()
        self.source.attach(self.metrics)
        self.tasks = TaskSupervisor(self.request_exit)
        self.invoker, parse = make_invoker(config, self.source, handler, self.metrics)
        self.destination = (
            destination if destination is not None else make_destination(config, self.metrics)
        )
        errors = RecentErrors()
        steps = StepChain(config, self.source, self.invoker, parse, self.destination,
                          self.metrics, errors)  # fmt: skip
        self.outputs = outputs or make_output_sink(config, self.metrics, self.source.name)
        self.committer = Committer(self.source, config.source.commit_interval_ms / 1000.0,
                                   self.metrics, steps.tracing, self.outputs)  # fmt: skip
        self.backpressure = backpressure = Backpressure(self.source, rt.memory_budget_bytes,
                                                        self.metrics)  # fmt: skip
        self.assignments = Assignments(
            self.source, PartitionFactory(config, self.source, self.metrics, steps, clock),
            self.committer, backpressure, self.tasks, self.metrics, rt.rebalance_timeout_s,
            self.invoker, self.source.revoke_hold_s, self.request_exit,
        )  # fmt: skip
        self.watchdog = CommitWatchdog(self, rt.stall_timeout_s, self.request_exit)
        self.health = Health(self, self.watchdog)
        info = StatusInfo(self.source.name, config.source.group_id, config.handler.target)
        self.status = Status(self, info, self.health.readiness, errors)
        self.endpoints: Endpoints | None = None
        self.should_exit = ExitRequest()
        self.exit_code = 0
        #: Why the source could not go on, if it could not.
        self.failure: str | None = None
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------
    async def serve(self) -> int:
        try:
            await unless_stopped(self.startup(), self.should_exit)  # SIGTERM ends a wait
            await self.main_loop()
        except Exception:
            self.exit_code = self.exit_code or EXIT_SOURCE_FAILED  # never log exit_code=0
            raise
        finally:
            await self.shutdown()
        return self.exit_code

    async def startup(self) -> None:
        mc, rt, spawn = self.config.metrics, self.config.runtime, self.tasks.spawn
        if mc.enabled:
            h = self.health
            self.endpoints = Endpoints(self.metrics.registry, h.health, h.readiness,
                                       self.status.snapshot, mc.host, mc.port,
                                       mc.status_page)  # fmt: skip
            await self.endpoints.start()
            spawn(self.status.run_sampler(), "rate sampler")
        for sink in (self.destination, self.outputs):  # their topics exist, they connect
            if sink is not None:
                await sink.start()
        warn_about_failures(self.config, self.destination)
        spawn(self.committer.run(), "committer")
        loop_lag = self.metrics.loop_lag.labels(self.source.name)
        warn_s = self.config.source.loop_delay_budget_s
        spawn(LoopMonitor(loop_lag, warn_s, rt.stall_timeout_s).run(), "loop monitor")
        if rt.stall_timeout_s:
            spawn(self.watchdog.run(), "commit watchdog")
        await self.source.start(self.assignments)
        self._started = True
        port = self.endpoints.port if self.endpoints else None
        log.info("event=started source=%s handler=%s metrics_port=%s", self.source.name,
                 self.config.handler.target, port)  # fmt: skip

    async def main_loop(self) -> None:
        source, owned, backpressure = self.source, self.assignments, self.backpressure
        poll_errors = self.metrics.poll_errors.labels(source.name)  # at 0 from the start
        while not self.should_exit.is_set():
            try:
                chunks = await source.fetch(FETCH_TIMEOUT_S)
            except SourceFailed as exc:
                log.error("event=source_failed error=%r note='stopping: partitions this "
                          "worker cannot process must go to another'", str(exc))  # fmt: skip
                self.failure = str(exc)
                self.request_exit(EXIT_SOURCE_FAILED)
                break
            except Exception as exc:  # the client retries internally; keep going
                poll_errors.inc()
                log.warning("event=poll_failed error=%r", exc)
                await asyncio.sleep(POLL_ERROR_BACKOFF_S)
                continue
            await feed(chunks, source, owned, backpressure)

    def shutdown_budget_s(self) -> float:
        """SIGTERM: `shutdown_timeout_s`. The watchdog's exit: at once, the loop is stuck."""
        if self.exit_code == EXIT_STALLED:
            return STALLED_SHUTDOWN_S
        return self.config.runtime.shutdown_timeout_s

    async def shutdown(self) -> None:
        """Every step within what is left of the budget: stop taking, drain, final commit,
        source, destination; a step that runs out is logged, the next one still runs."""
        log.info("event=shutdown_started partitions=%d", len(self.assignments.partitions()))
        self.should_exit.set()
        deadline = Deadline(self.shutdown_budget_s() - self.should_exit.waited_s())
        if self._started:  # before releasing: a lease taken now would only be given up
            await bounded(self.source.stop_taking(), deadline.left(), "stop_taking")
        await self.assignments.release_all(deadline.keeping(CLOSE_RESERVE_S))
        await self.tasks.cancel_all()
        if self._started and self.assignments.stuck:  # give nothing away beside the call
            log.warning("event=source_not_stopped reason=revoke_hold_exceeded")
        elif self._started:
            await bounded(self.source.stop(), deadline.left(), "source_stop")
        if self.destination is not None:
            await bounded(self.destination.stop(), deadline.left(), "destination_stop")
        if self.outputs is not None:
            await bounded(self.outputs.stop(), deadline.left(), "outputs_stop")
        self.invoker.close()
        if self.endpoints is not None:
            await bounded(self.endpoints.stop(), deadline.left(), "endpoints_stop")
        log.info("event=shutdown_complete exit_code=%d", self.exit_code)

    def request_exit(self, code: int = 0) -> None:
        self.exit_code = self.exit_code or code
        self.should_exit.set()

    # -- the read-only view ---------------------------------------------------------------
    def partition(self, key: Hashable) -> Partition | None:
        return self.assignments.get(key)

    def partition_stats(self) -> list[PartitionStats]:
        return self.assignments.stats()

    def waiting(self, key: Hashable) -> bool:
        return self.source.waiting(key)

    def lag(self, key: Hashable) -> int | None:
        return self.source.lag(key)

    def not_ready_reason(self) -> str | None:
        if self.tasks.crashed or self.failure:
            return self.tasks.crashed or self.failure
        if self.should_exit.is_set():
            return "shutting down"
        if not self._started or not self.assignments.assigned_once:
            return "waiting for the first assignment"
        return None
