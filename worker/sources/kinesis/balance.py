"""Which leases this worker should take next: a pure function, so it is tested without AWS.

Each worker converges to its fair share, ceil(open shards / live workers). It
takes free or expired leases first; if it is still below its share it steals
at most one lease per round from the most loaded worker, and only when that
worker holds at least two more than this one will after taking: every steal
narrows the gap, so workers settle within one of even (a late joiner too, say
4 shards held 2/2 when a third worker arrives) instead of trading leases back
and forth. A child shard is eligible only once every
parent lease it knows of has reached SHARD_END, which keeps per-key order
across splits and merges.

A steal can be a request (`asks`): the lease is marked with this worker as its
pending owner, and its owner drains the shard, checkpoints and hands it over;
only a hand-off not done within `asks.timeout_s` is taken by force. Leases asked
for count towards this worker's share while they are on their way.

A lease the table names as this worker's but that
this worker does not hold (a take or renewal whose answer was lost, a shard it
stopped while the table still named it) is taken back first: no other worker
would ever take it while it is renewed by nobody but "owned" by a live worker.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from worker.sources.kinesis.leases import Lease


@dataclass
class Seen:
    """The last counter this worker saw for a lease, and when (its own clock) it changed."""

    counter: int
    since: float


def expired(lease: Lease, seen: dict[str, Seen], now: float, duration_s: float) -> bool:
    """Free, or its counter has not moved for a lease duration (its owner stopped renewing)."""
    if lease.owner is None:
        return True
    last = seen.get(lease.shard_id)
    if last is None or last.counter != lease.counter:
        seen[lease.shard_id] = Seen(lease.counter, now)
        return False
    return now - last.since >= duration_s


@dataclass
class Asks:
    """The hand-offs this worker asked for: since when (its clock) each is pending, and how
    long an owner may take to hand a lease over before it is taken by force."""

    timeout_s: float
    since: dict[str, float] = field(default_factory=dict)

    def asked(self, shard_id: str, at: float) -> None:
        self.since[shard_id] = at

    def overdue(self, shard_id: str, now: float) -> bool:
        """Pending for `timeout_s` (counted from now if this worker did not know it asked)."""
        return now - self.since.setdefault(shard_id, now) >= self.timeout_s

    def keep_only(self, pending: set[str]) -> None:
        for gone in set(self.since) - pending:
            del self.since[gone]


def plan(
    leases: list[Lease],
    me: str,
    seen: dict[str, Seen],
    now: float,
    duration_s: float,
    holding: Collection[str] | None = None,
    asks: Asks | None = None,
) -> list[tuple[Lease, str]]:
    """The leases to try to take this round, each with why: reclaim, handed (a hand-off
    this worker asked for is done), free, expired, ask (for balance), force (a hand-off
    overdue), or steal (for balance, at once: without `asks`).

    `holding`: the shards this worker has now, those it is still draining included (None:
    look for none to reclaim).
    """
    by_id = {lease.shard_id: lease for lease in leases}
    open_leases = [
        lease
        for lease in leases
        if not lease.ended and all(by_id[p].ended for p in lease.parents if p in by_id)
    ]
    dead = {lease.shard_id for lease in open_leases if expired(lease, seen, now, duration_s)}
    held = Counter(
        lease.owner for lease in open_leases if lease.owner and lease.shard_id not in dead
    )
    workers = set(held) | {me}
    share = math.ceil(len(open_leases) / len(workers)) if open_leases else 0
    reclaim = [] if holding is None else [
        lease for lease in open_leases if lease.owner == me and lease.shard_id not in holding
    ]  # fmt: skip
    coming = [] if asks is None else [
        lease for lease in open_leases
        if lease.pending == me and lease.owner not in (None, me) and lease.shard_id not in dead
    ]  # fmt: skip
    handed = set()
    if asks is not None:
        handed = {lease.shard_id for lease in reclaim if lease.shard_id in asks.since}
        asks.keep_only({lease.shard_id for lease in coming})
    mine = held.get(me, 0) + sum(lease.shard_id in dead for lease in reclaim) + len(coming)
    here = set(holding or ())  # held, or still being drained: never taken a second time
    wanted = [
        lease
        for lease in open_leases
        if lease.shard_id in dead and lease.owner != me and lease.shard_id not in here
    ]
    takes = [(lease, "expired" if lease.owner else "free") for lease in wanted]
    takes = takes[: max(share - mine, 0)]
    if mine + len(takes) < share:
        owner, count = max(
            ((o, n) for o, n in held.items() if o != me), key=lambda kv: kv[1], default=(None, 0)
        )
        if owner is not None and count >= mine + len(takes) + 2:
            victim = next(
                (lease for lease in open_leases
                 if lease.owner == owner and lease.shard_id not in dead and lease.pending is None),
                None,
            )  # fmt: skip
            if victim is not None:
                takes.append((victim, "steal" if asks is None else "ask"))
    if asks is not None:
        takes += [(lease, "force") for lease in coming if asks.overdue(lease.shard_id, now)]
    return [
        (lease, "handed" if lease.shard_id in handed else "reclaim") for lease in reclaim
    ] + takes
