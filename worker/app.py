"""The worker's lifecycle: serve -> startup -> main_loop -> shutdown.

The main loop is the only reader of the source: it fetches chunks and feeds
each partition's lane, pausing partitions whose buffer is full. Lanes run
their batches concurrently, one at a time per partition. The committer
checkpoints finished work. Assignment changes arrive through `on_assigned` /
`on_revoked`, which the source awaits, so a revoked partition is drained and
committed before it is released.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from worker.config import WorkerConfig
from worker.destinations import Destination, make_destination
from worker.endpoints import Endpoints
from worker.lambda_compat.adapter import lambda_style
from worker.metrics import Metrics, PartitionMetrics
from worker.pipeline.batcher import Batcher
from worker.pipeline.committer import Committer
from worker.pipeline.dlq_guard import DeadLetterGuard
from worker.pipeline.failure_policy import FailurePolicy
from worker.pipeline.filtering import RecordFilter
from worker.pipeline.invoker import Invoker, load_handler
from worker.pipeline.lane import PartitionLane
from worker.pipeline.partial import failed_indexes
from worker.pipeline.process_pool import ProcessPool
from worker.pipeline.windows import TumblingWindows
from worker.sources.base import Source
from worker.status import RateSampler, run_sampler, snapshot
from worker.watchdog import CommitWatchdog, LoopMonitor

log = logging.getLogger("worker")

FETCH_TIMEOUT_S = 0.2
POLL_ERROR_BACKOFF_S = 1.0


def make_source(config: WorkerConfig) -> Source:
    if config.source.kind == "kafka":
        from worker.sources.kafka import KafkaSource

        return KafkaSource(config.source)
    if config.source.kind == "kinesis":
        from worker.sources.kinesis.source import KinesisSource

        return KinesisSource(config.source)
    raise ValueError(f"source.kind {config.source.kind!r} needs a source object passed in")


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        source: Source | None = None,
        handler: Callable[..., Any] | None = None,
        metrics: Metrics | None = None,
        destination: Destination | None = None,
    ) -> None:
        self.config = config
        self.source = source or make_source(config)
        self.metrics = metrics or Metrics()
        self.source.attach(self.metrics)
        fn = handler or load_handler(config.handler.target)
        parse_result = failed_indexes
        if config.handler.style == "lambda":
            fn, parse_result = lambda_style(fn, config, self.source.name)
        processes = None
        if config.handler.concurrency == "process":
            processes = ProcessPool(
                config.handler.target,
                config.handler.style,
                config.model_dump_json(),
                self.source.name,
                config.handler.processes,
            )
        self.invoker = Invoker(fn, config.handler, processes)
        self.destination = destination if destination is not None else make_destination(config)
        self.policy = FailurePolicy(
            self.invoker,
            config.errors,
            self.destination,
            self.metrics,
            self.source.name,
            self.source.record_timestamp_ms,
            parse_result,
        )
        patterns = config.filter.patterns
        self.record_filter = RecordFilter(patterns, self.source.name) if patterns else None
        self.lanes: dict[Hashable, PartitionLane] = {}
        self.committer = Committer(
            self.source,
            lambda: list(self.lanes.values()),
            config.source.commit_interval_ms / 1000.0,
            self.metrics,
        )
        self.endpoints: Endpoints | None = None
        self.should_exit = asyncio.Event()
        self.started_at = time.monotonic()
        #: True between a revoke and the next assignment: no commit is expected then.
        self.rebalancing = False
        self.watchdog = CommitWatchdog(self, config.runtime.stall_timeout_s)
        self._rates = RateSampler()
        self.exit_code = 0
        self._assigned_once = False
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._signals = 0
        self._m_assigned = self.metrics.assigned_partitions.labels(self.source.name)
        self._m_rebalances = self.metrics.rebalances.labels(self.source.name)
        self._m_poll_errors = self.metrics.poll_errors.labels(self.source.name)
        self._m_buffered_bytes = self.metrics.buffered_bytes.labels(self.source.name)

    # -- lifecycle ----------------------------------------------------------------
    async def serve(self) -> int:
        try:
            await self.startup()
            await self.main_loop()
        finally:
            await self.shutdown()
        return self.exit_code

    async def startup(self) -> None:
        mc = self.config.metrics
        if mc.enabled:
            self.endpoints = Endpoints(
                self.metrics.registry,
                self.health,
                self.readiness,
                lambda: snapshot(self, self._rates),
                mc.host,
                mc.port,
            )
            await self.endpoints.start()
            self._spawn(run_sampler(self, self._rates), "rate sampler")
        if self.destination is not None:
            await self.destination.start()
        self._warn_about_dropping()
        self._spawn(self.committer.run(), "committer")
        rt = self.config.runtime
        heartbeat_s = self.config.source.heartbeat_interval_ms / 1000.0
        self._spawn(LoopMonitor(self, heartbeat_s, rt.stall_timeout_s).run(), "loop monitor")
        if rt.stall_timeout_s:
            self._spawn(self.watchdog.run(), "commit watchdog")
        await self.source.start(self)
        self._started = True
        log.info(
            "event=started source=%s handler=%s metrics_port=%s",
            self.source.name,
            self.config.handler.target,
            self.endpoints.port if self.endpoints else None,
        )

    async def main_loop(self) -> None:
        fetch = self.source.fetch
        while not self.should_exit.is_set():
            try:
                chunks = await fetch(FETCH_TIMEOUT_S)
            except Exception as exc:  # the client retries internally; keep going
                self._m_poll_errors.inc()
                log.warning("event=poll_failed error=%r", exc)
                await asyncio.sleep(POLL_ERROR_BACKOFF_S)
                continue
            for key, records in chunks.items():
                lane = self.lanes.get(key)
                if lane is None or not records:
                    continue  # revoked meanwhile: the next owner reads it again
                lane.metrics.polled.inc(len(records))
                if lane.feed(records):
                    self._pause(lane)
                lag = self.source.lag(key)
                if lag is not None:
                    lane.metrics.lag.set(lag)
            self._apply_memory_budget()

    async def shutdown(self) -> None:
        log.info("event=shutdown_started partitions=%d", len(self.lanes))
        self.should_exit.set()
        timeout = self.config.runtime.shutdown_timeout_s
        await self._release(list(self.lanes), timeout, reason="shutdown")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._started:
            await self.source.stop()
        if self.destination is not None:
            await self.destination.stop()
        self.invoker.close()
        if self.endpoints is not None:
            await self.endpoints.stop()
        log.info("event=shutdown_complete exit_code=%d", self.exit_code)

    def request_exit(self, code: int = 0) -> None:
        self.exit_code = self.exit_code or code
        self.should_exit.set()

    # -- assignment (called by the source) --------------------------------------------
    async def on_assigned(self, partitions: Sequence[Hashable]) -> None:
        self._assigned_once = True
        self.rebalancing = False
        self._m_rebalances.inc()
        for key in partitions:
            if key not in self.lanes:
                lane = self.lanes[key] = self._new_lane(key)
                for task in lane.start():
                    self._watch(task, f"lane {lane.label}")
        self._m_assigned.set(len(self.lanes))
        log.info("event=assigned partitions=%s", ",".join(self.source.label(k) for k in partitions))

    async def on_revoked(self, partitions: Sequence[Hashable]) -> None:
        self.rebalancing = True
        self._m_rebalances.inc()
        owned = [k for k in partitions if k in self.lanes]
        await self._release(owned, self.config.runtime.rebalance_timeout_s, reason="revoked")
        log.info("event=revoked partitions=%s", ",".join(self.source.label(k) for k in partitions))

    async def _release(self, keys: list[Hashable], timeout_s: float, reason: str) -> None:
        """Drain the lanes of `keys` within `timeout_s`, commit their finished work, drop them."""
        lanes = [self.lanes[k] for k in keys if k in self.lanes]
        if not lanes:
            return
        await asyncio.gather(*(lane.stop(timeout_s) for lane in lanes))
        if not await self.committer.commit_now(lanes):
            log.warning("event=final_commit_failed reason=%s partitions=%d", reason, len(lanes))
        for lane in lanes:
            del self.lanes[lane.key]
            lane.metrics.forget(self.metrics)
        self._m_assigned.set(len(self.lanes))

    def _new_lane(self, key: Hashable) -> PartitionLane:
        b, rt = self.config.batching, self.config.runtime
        label = self.source.label(key)
        return PartitionLane(
            key=key,
            label=label,
            source_name=self.source.name,
            batchers=[
                Batcher(
                    b.batch_size,
                    b.maximum_batch_bytes,
                    b.maximum_batching_window_ms / 1000.0,
                    self.source.record_size,
                )
                for _ in range(self.config.handler.parallelization_factor)
            ],
            policy=self.policy,
            metrics=PartitionMetrics(self.metrics, self.source.name, label),
            max_records=rt.max_buffered_records,
            max_bytes=rt.max_buffered_bytes,
            on_progress=self.committer.notify,
            on_drained=self._resume,
            record_filter=self.record_filter,
            windows=self._new_windows(),
            guard=DeadLetterGuard(
                self.config.errors.max_dead_letter_ratio,
                self.config.errors.max_consecutive_dead_letters,
            ),
        )

    def _new_windows(self) -> TumblingWindows | None:
        b = self.config.batching
        if not b.tumbling_window_s:
            return None
        return TumblingWindows(
            self.policy,
            b.tumbling_window_s,
            grace_s=max(1.0, b.maximum_batching_window_ms / 1000.0),
            record_timestamp_ms=self.source.record_timestamp_ms,
            source=self.source.name,
        )

    # -- backpressure ----------------------------------------------------------------------
    def buffered_bytes(self) -> int:
        return sum(lane.buffered_bytes for lane in self.lanes.values())

    def _pause(self, lane: PartitionLane) -> None:
        if not lane.paused:
            self.source.pause(lane.key)
            lane.paused = True
            lane.metrics.paused.set(1)

    def _apply_memory_budget(self) -> None:
        """Pause every partition while all buffers together exceed the budget; resume
        the drained ones once they are back under half of it."""
        budget = self.config.runtime.memory_budget_bytes
        self._m_buffered_bytes.set(total := self.buffered_bytes())
        if total >= budget:
            for lane in self.lanes.values():
                self._pause(lane)
        elif total <= budget // 2:
            for lane in self.lanes.values():
                if lane.paused and lane.below_low_water():
                    self._resume(lane)

    def _resume(self, lane: PartitionLane) -> None:
        """Called by a lane that drained below its low water, and by the budget check."""
        if self.buffered_bytes() > self.config.runtime.memory_budget_bytes // 2:
            return  # the budget check in the main loop resumes it later
        if self.lanes.get(lane.key) is lane:
            self.source.resume(lane.key)
        lane.paused = False
        lane.metrics.paused.set(0)

    def _warn_about_dropping(self) -> None:
        e = self.config.errors
        limited = e.maximum_retry_attempts >= 0 or e.maximum_record_age_s >= 0
        if limited and self.destination is None:
            log.warning(
                "event=config_warning detail='retries or record age are limited and "
                "errors.on_failure is none: records that run out are dropped "
                "(counted in worker_records_dropped_total)'"
            )

    # -- health -------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """Liveness: the loop turns (this answers) and no partition is halted."""
        halted = [f"{lane.label}: {lane.halted}" for lane in self.lanes.values() if lane.halted]
        if halted:
            return False, "halted by the dead-letter guard: " + "; ".join(halted)
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        healthy, why = self.health()
        if not healthy:
            return False, why
        if self.watchdog.stalled:
            return False, self.watchdog.stalled
        if self.should_exit.is_set():
            return False, "shutting down"
        if not self._started or not self._assigned_once:
            return False, "waiting for the first assignment"
        return True, f"ready: {len(self.lanes)} partitions"

    # -- tasks and signals ----------------------------------------------------------------
    def _spawn(self, coro: Any, name: str) -> None:
        self._watch(asyncio.create_task(coro, name=name), name)

    def _watch(self, task: asyncio.Task[Any], name: str) -> None:
        """Keep a reference; a task that dies of an unexpected error stops the worker."""
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("event=task_crashed task=%s", name, exc_info=t.exception())
                self.request_exit(1)

        task.add_done_callback(done)

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: drain and exit 0. Second: exit at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                return

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning(
                "event=forced_exit signal=%s note='uncommitted work will be redone'", sig.name
            )
            os._exit(130)
        log.info("event=stop_requested signal=%s", sig.name)
        self.should_exit.set()


def tune_gc(config: WorkerConfig) -> None:
    """Keep the cyclic garbage collector from rescanning buffered records.

    Records hold no reference cycles, but with Python's default thresholds the
    collector runs every 700 allocations and, as buffered records survive,
    rescans them in ever older generations: measured here, that alone cost the
    worker 10-20% of its throughput against a raw consume loop. Objects alive
    after start-up are frozen out of collection; the thresholds are raised.
    """
    import gc

    if config.runtime.gc_freeze:
        gc.freeze()
    gc.set_threshold(*config.runtime.gc_threshold)


def run(config: WorkerConfig) -> int:
    """Run the worker on uvloop until a signal; returns the process exit code."""
    import uvloop

    async def main() -> int:
        worker = Worker(config)
        tune_gc(config)
        worker.install_signal_handlers()
        return await worker.serve()

    started = time.monotonic()
    code = uvloop.run(main())
    log.info("event=exited uptime_s=%.1f", time.monotonic() - started)
    return code
