"""Liveness and readiness, as `/healthz` and `/readyz` answer them.

Liveness fails only for what a restart cures and waiting does not: a
partition halted by the dead-letter guard. Readiness also fails while
starting, stopping, after a supervised task died, and when the commit
watchdog saw commits stall with records waiting.
"""

from __future__ import annotations

from worker.observe.view import WorkerView
from worker.observe.watchdog import CommitWatchdog


class Health:
    def __init__(self, view: WorkerView, watchdog: CommitWatchdog) -> None:
        self._view = view
        self._watchdog = watchdog

    def health(self) -> tuple[bool, str]:
        halted = [f"{p.label}: {p.halted}" for p in self._view.partition_stats() if p.halted]
        if halted:
            return False, "halted by the dead-letter guard: " + "; ".join(halted)
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        healthy, why = self.health()
        if not healthy:
            return False, why
        if self._watchdog.stalled:
            return False, self._watchdog.stalled
        reason = self._view.not_ready_reason()
        if reason is not None:
            return False, reason
        return True, f"ready: {len(self._view.partition_stats())} partitions"
