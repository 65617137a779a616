"""The worker's state at a glance: what `/status.json`, the status page and `worker status` show.

A snapshot per partition: committed position, lag, iterator age, commit rate
over the last few seconds, buffered records, paused, dead-lettered, and the
batch it is retrying (position, attempts, error, since when); plus
readiness, in-flight batches and the last errors. Everything comes from the
stats the partitions publish; rates from a sampler that reads their committed
counts once a second, so a snapshot costs nothing on the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.observe.errors import RecentErrors
from worker.observe.terminal import printable
from worker.observe.view import RetryingBatch, WorkerView

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


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What the status shows about the worker itself, fixed at start."""

    source: str
    group: str
    handler: str
    started_at: float = field(default_factory=time.monotonic)


class Status:
    def __init__(
        self,
        view: WorkerView,
        info: StatusInfo,
        readiness: Callable[[], tuple[bool, str]],
        errors: RecentErrors,
    ) -> None:
        self._view = view
        self._info = info
        self._readiness = readiness
        self._errors = errors
        self.sampler = RateSampler()

    async def run_sampler(self) -> None:
        while True:
            committed = {p.label: float(p.committed_records) for p in self._view.partition_stats()}
            self.sampler.sample(committed, time.monotonic())
            await asyncio.sleep(1.0)

    def snapshot(self) -> dict[str, Any]:
        ready, why = self._readiness()
        rates = self.sampler.rates()
        stats = sorted(self._view.partition_stats(), key=lambda p: p.label)
        partitions = [
            {
                "partition": p.label,
                "committed": p.shown_committed,
                "lag": self._view.lag(p.key),
                "iterator_age_s": round(p.iterator_age_s, 3),
                "rate_per_s": round(rates.get(p.label, 0.0), 1),
                "buffered": p.buffered,
                "paused": p.paused,
                "dead_lettered": p.dead_lettered,
                "retrying": _retrying(p.retrying),
            }
            for p in stats
        ]
        info = self._info
        return {
            "source": info.source,
            "group": info.group,
            "handler": info.handler,
            "ready": ready,
            "readiness": why,
            "uptime_s": round(time.monotonic() - info.started_at, 1),
            "inflight_batches": sum(p.inflight for p in stats),
            "partitions": partitions,
            "last_errors": self._errors.snapshot(),
        }


def _retrying(batches: tuple[RetryingBatch, ...]) -> dict[str, Any] | None:
    """The partition's retry, shown by its longest-failing batch (None: not retrying)."""
    if not batches:
        return None
    b = min(batches, key=lambda b: b.since)
    return {
        "position": b.position,
        "records": b.records,
        "attempts": b.attempts,
        "error": b.error,
        "where": b.where,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.since)),
        "for_s": round(max(time.time() - b.since, 0.0), 1),
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
    retrying = [(p["partition"], p["retrying"]) for p in status["partitions"] if p.get("retrying")]
    if retrying:
        lines += [
            "",
            "retrying (nothing past these is committed until they succeed or are given up):",
        ]
        lines += [
            f"  {label} retrying position {r['position']} ({r['records']} records): "
            f"{r['attempts']} attempts since {r['since']} ({r['for_s']:.0f}s): {r['error']}"
            f"{' at ' + r['where'] if r.get('where') else ''}"
            for label, r in retrying
        ]
    if status["last_errors"]:
        lines += ["", "last errors:"]
        lines += [_error_line(e) for e in status["last_errors"]]
    return "\n".join(map(printable, lines))  # errors quote records: no escapes reach the tty


def _error_line(e: dict[str, Any]) -> str:
    count = e.get("count", 1)
    seen = f" x{count} since {e['first_seen']}" if count > 1 else ""
    where = f"@{e['position']}" if e.get("position") else ""
    at = f" at {e['where']}" if e.get("where") else ""
    return f"  {e['at']} {e['partition']}{where}: {e['error']}{at}{seen}"
