"""One owned shard's lease on this worker, from the take to its end: the keeper task.

It renews the lease every third of its duration (`renewal.renew_in_time`) and
waits for no other shard, so draining one shard never lets the others' leases
expire. Each renewal's answer says whether another worker asked for the lease;
if so, a hand-off runs beside the keeper (which goes on renewing, so the lease
cannot expire while the shard drains): stop reading, let the pipeline drain and
commit the shard (`on_revoked`: no new batch, in-flight ones finish within
`runtime.rebalance_timeout_s`), then hand the lease over in one conditional
write. The asker reads the shard only once the table names it owner.

The asker confirms its request every lease round (`pending_rounds` moves), and
the keeper notes, at each renewal, when that number last moved. An asker that
has not confirmed for `lease_duration_s` when the drain is over is taken for
dead: the lease is released instead of handed over (its checkpoint written
first), so any live worker takes it within a lease round, instead of a dead
owner holding it until it expires. An asker that died less than
`lease_duration_s` before the drain ended still gets the lease; it then expires
as any lease of a dead worker does. Either way the shard waits at most the drain
plus about `lease_duration_s` and a lease round.

A lease found taken (fenced: a renewal, checkpoint or hand-over the table
refused) stops its shard at once, whichever write found out and even in the
middle of a hand-off: the reader stops, the lane starts no new batch, batches
in flight are abandoned (`on_lost`) and nothing more is committed (the holder
refuses every write), because the new owner is already reading from the last
checkpoint. No request is answered once the worker is shutting down
(`may_hand_off` is false): its release gives the lease up instead. A
lease that lapsed (not renewed in time) stops its reader and fails the keeper,
which ends the worker. A closed shard whose records are all handled and
committed is checkpointed SHARD_END and released, which lets its children start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from worker.backoff import Backoff
from worker.sources.base import AssignmentListener
from worker.sources.kinesis.balance import Seen
from worker.sources.kinesis.leases import SHARD_END, LeaseLost
from worker.sources.kinesis.renewal import LeaseLapsed, renew_in_time
from worker.sources.kinesis.shard import Shard
from worker.sources.kinesis.transient import retryable

log = logging.getLogger("worker.source.kinesis")

HAND_OVER_ATTEMPTS = 5
HAND_OVER_BACKOFF = Backoff(100, 1_000)


class LeaseKeeper:
    def __init__(self, shard: Shard, listener: AssignmentListener, duration_s: float,
                 count: Callable[[str, str], None], forget: Callable[[Shard], None],
                 may_hand_off: Callable[[], bool] = lambda: True) -> None:  # fmt: skip
        """`count(family, result)`: a lease event ("event", name) or a renewal's result
        ("renewal", result); `forget(shard)`: the source no longer has the shard;
        `may_hand_off()`: whether a request for the lease may be answered now."""
        self._may_hand_off = may_hand_off
        #: The asker's confirmations as last seen, and when (time.monotonic) they moved.
        self._asker: Seen | None = None
        self._shard = shard
        self._listener = listener
        self._duration_s = duration_s
        self._count = count
        self._forget = forget

    async def run(self) -> None:
        shard = self._shard
        holder = shard.holder
        interval = self._duration_s / 3
        try:
            while True:
                await holder.until_fenced(max(holder.renewed_at + interval - time.monotonic(), 0))
                if holder.fenced:
                    await self._lost()
                    return
                if shard.finished and not shard.handing_off:
                    await self._end()
                    return
                try:
                    await self._renew()
                except LeaseLost:
                    if holder.fenced:
                        await self._lost()
                    return  # otherwise handed over or released: nothing more to keep
                self._note_asker()
                wanted = holder.lease.pending and self._may_hand_off()
                if wanted and not shard.handing_off:
                    shard.hand_off(self._listener.spawn, self._hand_off())
        except Exception:
            holder.give_up("its keeper failed")
            await shard.reader.stop()
            raise

    async def _renew(self) -> None:
        shard = self._shard
        try:
            await renew_in_time(shard.holder, self._duration_s,
                                lambda result: self._count("renewal", result))  # fmt: skip
        except LeaseLapsed as exc:
            await shard.reader.stop()
            self._count("event", "lapsed")
            log.error("event=lease_lapsed shard=%s error=%r note='could not renew it: stopped "
                      "reading the shard, nothing more of it is committed; the worker exits so "
                      "that another takes it over'", shard.shard_id, str(exc))  # fmt: skip
            raise

    async def _lost(self) -> None:
        """Another worker owns the lease: stop the shard at once, commit nothing more."""
        shard = self._shard
        log.warning("event=lease_lost shard=%s note='stopped at once: batches in flight "
                    "abandoned, nothing more committed'", shard.shard_id)  # fmt: skip
        self._count("event", "lost")
        await shard.reader.stop()
        await self._listener.on_lost([shard.shard_id])
        self._forget(shard)

    async def _hand_off(self) -> None:
        """Another worker asked for the lease: drain, commit, and hand it over."""
        shard = self._shard
        to = shard.holder.lease.pending
        log.info("event=lease_handoff_started shard=%s to=%s", shard.shard_id, to)
        await shard.reader.stop()
        await self._listener.on_revoked([shard.shard_id])
        try:
            if self._asker_gone():
                log.warning("event=lease_handoff_dropped shard=%s to=%s note='the asker has "
                            "not confirmed its request for lease_duration_s: released for a "
                            "live worker to take'", shard.shard_id, to)  # fmt: skip
                self._count("event", "ask_expired")
                await self._hand_over(shard.holder.release)
            else:
                await self._hand_over(shard.holder.hand_over)
        finally:
            self._forget(shard)

    def _note_asker(self) -> None:
        lease = self._shard.holder.lease
        if lease.pending is None:
            self._asker = None
        elif self._asker is None or self._asker.counter != lease.asked:
            self._asker = Seen(lease.asked, time.monotonic())

    def _asker_gone(self) -> bool:
        asker = self._asker
        return asker is not None and time.monotonic() - asker.since >= self._duration_s

    async def _hand_over(self, write: Callable[[], Awaitable[None]]) -> None:
        """Hand the lease over (or release it), retrying what may pass."""
        shard = self._shard
        for attempt in range(1, HAND_OVER_ATTEMPTS + 1):
            try:
                await write()
            except LeaseLost as exc:  # taken by force meanwhile (or it lapsed): fenced off
                log.warning("event=lease_handoff_failed shard=%s error=%r", shard.shard_id,
                            str(exc))  # fmt: skip
                return
            except Exception as exc:
                if not retryable(exc):
                    raise
                if attempt == HAND_OVER_ATTEMPTS:
                    shard.holder.give_up("could not hand it over")
                    log.warning("event=lease_handoff_failed shard=%s error=%r note='left to "
                                "expire'", shard.shard_id, str(exc))  # fmt: skip
                    return
                await asyncio.sleep(HAND_OVER_BACKOFF.delay_s(attempt))
                continue
            if shard.holder.lease.owner is not None:
                log.info("event=lease_handed_off shard=%s to=%s", shard.shard_id,
                         shard.holder.lease.owner)  # fmt: skip
                self._count("event", "handed_off")
            return

    async def _end(self) -> None:
        """All of a closed shard is handled and committed: mark SHARD_END so children start.

        A write that fails for a reason that may pass leaves the lease ours and open in the
        table: the coordinator then takes it back, reads the (empty) rest, and ends it again.
        """
        shard = self._shard
        await shard.reader.stop()
        await self._listener.on_revoked([shard.shard_id])
        try:
            await shard.holder.checkpoint(SHARD_END)
            await shard.holder.release()
        except LeaseLost:
            self._forget(shard)  # taken meanwhile: its new owner ends it
            return
        except Exception as exc:
            self._forget(shard)
            if not retryable(exc):
                raise
            log.warning("event=shard_end_failed shard=%s error=%r note='retried next round'",
                        shard.shard_id, str(exc))  # fmt: skip
            return
        self._forget(shard)
        log.info("event=shard_ended shard=%s", shard.shard_id)
        self._count("event", "ended")
