"""Renewing one lease in time, or giving it up before anyone else may take it.

Another worker may take a lease once its counter has not moved for
`lease_duration_s` on that worker's clock, which starts no earlier than the
renewal it last saw was sent. So a renewal that fails for a reason that may
pass (see `transient`) is retried with backoff, each attempt bounded by the
time left, until only a sixth of the lease's duration is left since the last
renewal was sent; then the lease is given up (its holder writes nothing more)
and `LeaseLapsed` is raised, leaving the caller that sixth to stop the shard
before the lease can move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from worker.backoff import Backoff
from worker.sources.kinesis.holder import LeaseHolder
from worker.sources.kinesis.leases import LeaseLost
from worker.sources.kinesis.transient import retryable

log = logging.getLogger("worker.source.kinesis")

RENEW_BACKOFF = Backoff(100, 1_000)
#: A lease not renewed while this share of its duration is left is given up.
GIVE_UP_WITH_LEFT = 1 / 6


class LeaseLapsed(Exception):
    """A lease could not be renewed in time: this worker must count it as lost."""


async def renew_in_time(holder: LeaseHolder, duration_s: float,
                        count: Callable[[str], None]) -> None:  # fmt: skip
    """Renew the holder's lease. LeaseLost if another worker has it; LeaseLapsed if time
    ran out; an error that will not pass as it is. `count` gets each attempt's result."""
    shard_id = holder.lease.shard_id
    give_up_at = holder.valid_until - duration_s * GIVE_UP_WITH_LEFT
    failures = 0
    while (left := give_up_at - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                await holder.renew()
        except LeaseLost:
            count("lost")
            raise
        except Exception as exc:
            if not retryable(exc):
                log.error("event=lease_renewal_failed shard=%s error=%r note='not retryable: "
                          "the worker stops'", shard_id, str(exc))  # fmt: skip
                raise
            failures += 1
            count("error")
            delay = min(RENEW_BACKOFF.delay_s(failures), max(give_up_at - time.monotonic(), 0))
            log.warning("event=lease_renewal_failed shard=%s error=%r attempt=%d retry_in_s=%.2f",
                        shard_id, str(exc) or type(exc).__name__, failures, delay)  # fmt: skip
            await asyncio.sleep(delay)
            continue
        count("ok")
        return
    unrenewed_s = time.monotonic() - holder.renewed_at
    holder.give_up("not renewed in time")
    raise LeaseLapsed(f"lease of {shard_id} not renewed for {unrenewed_s:.1f} s "
                      f"(lease_duration_s = {duration_s})")  # fmt: skip
