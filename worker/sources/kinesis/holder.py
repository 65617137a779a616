"""One shard's lease as this worker holds it: the only writer of that lease.

Renewals (the lease's keeper task) and checkpoints (the committer) both write
the lease, and each write is conditional on the counter last seen. Two writes
in flight at once would each start from the same copy, and whichever answered
last would put back a stale one: a checkpoint's answer rolling the counter
back (the next renewal then fails and the shard is dropped although the table
still names this worker), or a renewal's answer restoring the checkpoint
before the last (a closed shard then never reaches SHARD_END). So every write
of a lease goes through its holder, one at a time (an asyncio lock), and the
holder's copy is replaced by the table's answer to each write (`ALL_NEW`).

A refused write whose refusal shows the table still naming this worker means
an earlier write of ours moved the counter but its answer never arrived (a
timeout): the holder carries on from the table's copy. Any other refusal is a
lost lease, and so is a lease the keeper gave up on (it could not be renewed
in time): the holder then refuses every further write without asking the
table, so nothing more of that shard is committed by this worker. A lease the
table refused (another worker owns it now, or nobody does) is *fenced*: the
holder says so at once (`until_fenced`), whichever write found out, so the
keeper stops the shard's lane without waiting for its next renewal.

Each write holds the lock for at most a third of the lease's duration (it then
fails with TimeoutError, which callers retry), so a hung checkpoint cannot keep
the renewal behind it waiting until the lease lapses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from worker.sources.kinesis.leases import Lease, LeaseLost, LeaseTable


class LeaseHolder:
    def __init__(self, table: LeaseTable, lease: Lease, taken_at: float,
                 duration_s: float) -> None:  # fmt: skip
        """`taken_at`: when (time.monotonic) the take that returned `lease` was sent."""
        self._table = table
        self._lease = lease
        self._lock = asyncio.Lock()
        self._duration_s = duration_s
        self._renewed_at = taken_at
        self._lost: str | None = None
        self._fenced = asyncio.Event()

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def renewed_at(self) -> float:
        """When the last write that moved the counter was sent (time.monotonic)."""
        return self._renewed_at

    @property
    def valid_until(self) -> float:
        """From then on another worker may find the lease expired and take it."""
        return self._renewed_at + self._duration_s

    @property
    def lost(self) -> str | None:
        """Why this worker no longer counts the lease as its own, if it does not."""
        return self._lost

    @property
    def fenced(self) -> bool:
        """The table refused a write: another worker owns the lease now (or nobody)."""
        return self._fenced.is_set()

    async def until_fenced(self, timeout_s: float) -> None:
        """Wait up to `timeout_s`, less if a write of the lease is refused meanwhile."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._fenced.wait()

    def give_up(self, why: str) -> None:
        """Count the lease as lost from now on: no further write of it is sent."""
        self._lost = self._lost or why

    async def renew(self) -> None:
        await self._write(self._table.renew, moves_counter=True)

    async def checkpoint(self, sequence: str, note: str | None = None) -> None:
        """Record `sequence` (or SHARD_END) as done; LeaseLost if the lease is not ours."""
        await self._write(lambda lease: self._table.checkpoint(lease, sequence, note=note))

    async def start_at(self, sequence: str) -> None:
        """Pin a `latest` start AT `sequence`; LeaseLost if the lease is not ours."""
        await self._write(lambda lease: self._table.start_at(lease, sequence))

    async def write_note(self, note: str) -> None:
        await self._write(lambda lease: self._table.write_note(lease, note))

    async def release(self) -> None:
        await self._write(self._table.release, moves_counter=True)
        self.give_up("released")

    async def hand_over(self) -> None:
        """Give the lease to the worker that asked for it (after the last checkpoint)."""
        await self._write(self._table.hand_over, moves_counter=True)
        self.give_up("handed over")

    async def _write(self, op: Callable[[Lease], Awaitable[Lease]],
                     moves_counter: bool = False) -> None:  # fmt: skip
        async with self._lock:
            if self._lost is not None:
                raise LeaseLost(f"lease of {self._lease.shard_id}: {self._lost}")
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self._duration_s / 3):
                    try:
                        self._lease = await op(self._lease)
                    except LeaseLost as exc:
                        current = exc.current
                        if current is None or current.owner != self._table.worker_id:
                            raise
                        # Still ours: a write of ours moved the counter, its answer was lost.
                        self._lease = await op(current)
            except LeaseLost:
                self.give_up("taken by another worker or released")
                self._fenced.set()
                raise
            if moves_counter:
                self._renewed_at = sent
