"""The worker's state at a glance: what `/status.json`, the status page and `worker status` show.

A snapshot per partition: committed position, lag, iterator age, commit rate
over the last few seconds, buffered records, paused, dead-lettered; plus
readiness, in-flight batches and the last errors. Rates come from a sampler
that reads the committed counters once a second, so a snapshot costs nothing
on the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.app import Worker

RATE_WINDOW_S = 5.0


@dataclass
class RateSampler:
    """Committed records per partition, sampled each second, for a rate over a short window."""

    samples: deque[tuple[float, dict[str, float]]] = field(
        default_factory=lambda: deque(maxlen=int(RATE_WINDOW_S) + 1)
    )

    def sample(self, committed: dict[str, float], now: float) -> None:
        self.samples.append((now, committed))

    def rates(self) -> dict[str, float]:
        if len(self.samples) < 2:
            return {}
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        return {p: (n - first.get(p, 0.0)) / (t1 - t0) for p, n in last.items()}


async def run_sampler(worker: Worker, sampler: RateSampler) -> None:
    while True:
        committed = {
            lane.label: _sample(worker, "worker_records_committed_total", lane.label)
            for lane in worker.lanes.values()
        }
        sampler.sample(committed, time.monotonic())
        await asyncio.sleep(1.0)


def _sample(worker: Worker, name: str, partition: str) -> float:
    labels = {"source": worker.source.name, "partition": partition}
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


def snapshot(worker: Worker, sampler: RateSampler) -> dict[str, Any]:
    ready, why = worker.readiness()
    rates = sampler.rates()
    partitions = []
    for lane in sorted(worker.lanes.values(), key=lambda lane: lane.label):
        label = lane.label
        partitions.append(
            {
                "partition": label,
                "committed": None if lane.committed is None else lane.committed + 1,
                "lag": worker.source.lag(lane.key),
                "iterator_age_s": round(_sample(worker, "worker_iterator_age_seconds", label), 3),
                "rate_per_s": round(rates.get(label, 0.0), 1),
                "buffered": lane.buffered_records,
                "paused": lane.paused,
                "dead_lettered": int(_sample(worker, "worker_records_dead_lettered_total", label)),
            }
        )
    inflight = worker.metrics.registry.get_sample_value(
        "worker_inflight_batches", {"source": worker.source.name}
    )
    return {
        "source": worker.source.name,
        "group": worker.config.source.group_id,
        "handler": worker.config.handler.target,
        "ready": ready,
        "readiness": why,
        "uptime_s": round(time.monotonic() - worker.started_at, 1),
        "inflight_batches": int(inflight or 0),
        "partitions": partitions,
        "last_errors": list(worker.policy.recent_errors),
    }


def render_text(status: dict[str, Any]) -> str:
    """The terminal picture `worker status` prints."""
    lines = [
        f"{status['source']} group={status['group']} handler={status['handler']}",
        f"ready={status['ready']} ({status['readiness']})  uptime={status['uptime_s']}s  "
        f"in-flight batches={status['inflight_batches']}",
        "",
        f"{'partition':<28} {'committed':>12} {'lag':>10} {'age s':>8} {'rate/s':>10} "
        f"{'buffered':>9} {'dlq':>6}  paused",
    ]
    for p in status["partitions"]:
        lines.append(
            f"{p['partition']:<28} {p['committed'] if p['committed'] is not None else '-':>12} "
            f"{p['lag'] if p['lag'] is not None else '-':>10} {p['iterator_age_s']:>8.1f} "
            f"{p['rate_per_s']:>10,.0f} {p['buffered']:>9} {p['dead_lettered']:>6}  "
            f"{'yes' if p['paused'] else ''}"
        )
    if status["last_errors"]:
        lines += ["", "last errors:"]
        lines += [f"  {e['at']} {e['partition']}: {e['error']}" for e in status["last_errors"]]
    return "\n".join(lines)
