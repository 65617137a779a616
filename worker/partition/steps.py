"""The per-batch path: one narrow interface every step implements, so steps compose.

A partition hands each batch it cuts to the head of its step chain
(filter -> window -> failure policy, as configured). A step resolves the
batch, possibly by handing a smaller one on, and returns the ends (last fed
positions) of the batches that are now safe to commit; a tumbling window
holds ends back until its final invoke. `poll` does time-driven work while
the partition is idle and `deadline` says when that is due. A new step is a
new class and a line where the chain is built, never an edit of the partition.

A step stops early by raising `Abandoned` (the partition is stopping; the
batch stays uncommitted) or `PartitionHalted` (the dead-letter guard refuses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.observe.metrics import PartitionMetrics
from worker.outputs.outbox import Output
from worker.records import Batch


class Abandoned(Exception):
    """The partition stopped while the batch was unresolved; it must not be committed."""


class PartitionHalted(Exception):
    """The dead-letter guard stopped this partition."""


@dataclass(frozen=True, slots=True)
class PartitionContext:
    """What a partition's steps know of it; the partition owns it and sets `stopping`."""

    key: Hashable
    label: str
    source: str
    metrics: PartitionMetrics
    #: Set when the partition stops taking batches: a step waiting on a retry gives up.
    stopping: asyncio.Event
    #: Keep a resolved batch's outputs (its first and last position) until the checkpoint
    #: covering it (the partition's ledger); called before the step returns its end.
    keep_outputs: Callable[[int, int, list[Output]], None]


class Step(Protocol):
    async def submit(self, batch: Batch, end: int) -> Sequence[int]:
        """Resolve `batch`, fed up to position `end`; return batch ends now safe to commit."""
        ...

    async def poll(self) -> Sequence[int]:
        """Time-driven work while idle (an idle window closing); batch ends now safe."""
        ...

    def deadline(self) -> float | None:
        """Wall-clock time (epoch seconds) at which `poll` has work, or None."""
        ...


StepFactory = Callable[[PartitionContext], Step]


async def stopped_within(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s`, returning True early if `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        return False
    return True
