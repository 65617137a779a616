"""Kinesis source on aiobotocore: shards owned by lease, read with GetRecords, checkpointed
by conditional writes to the lease table. DynamoDB Streams is read by the same
machinery through its own `ShardApi` (`worker.sources.dynamodb`).

The pipeline sees shards as partitions and sequence numbers as positions
(`int(sequence_number)`: they are ordered within a shard). Every long-lived
task runs under the worker's task supervisor (`AssignmentListener.spawn`), so
one that dies turns the worker not ready and ends it instead of leaving it
half-working and ready:

- the coordinator takes free or expired leases, asks for one (for balance)
  from the most loaded worker (a graceful hand-off, see `keeper`) and takes it
  by force only if the owner does not hand it over within `handoff_timeout_s`,
  takes back a lease the table names as this worker's that no shard here holds,
  and discovers new shards. A round that fails for a reason that may pass (see
  `transient`) is retried with backoff.
- per shard, a keeper (`keeper.py`): renewals, hand-offs, the shard's end. A
  lease that could not be renewed in time is given up before any other worker
  can find it expired: its reader stops, nothing more of it is committed, and
  the keeper fails, which ends the worker (status 1, `event=lease_lapsed`).
- per shard, a reader (`reader.py`).

Each lease is written only through its `LeaseHolder`, one write at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from worker.backoff import Backoff
from worker.observe.metrics import Metrics
from worker.sources.base import AssignmentListener, OwnershipLost, RecordTraits, SourceStartError
from worker.sources.kinesis.api import KinesisApi, ShardApi
from worker.sources.kinesis.balance import Asks, Seen, plan
from worker.sources.kinesis.config import LeasedStreamSettings
from worker.sources.kinesis.holder import LeaseHolder
from worker.sources.kinesis.keeper import LeaseKeeper
from worker.sources.kinesis.leases import Lease, LeaseLost, LeaseTable
from worker.sources.kinesis.metrics import KinesisMetrics
from worker.sources.kinesis.preflight import check_stream
from worker.sources.kinesis.reader import ShardReader
from worker.sources.kinesis.record import TRAITS
from worker.sources.kinesis.shard import Shard
from worker.sources.kinesis.start import new_leases, start_of, unmarked
from worker.sources.kinesis.transient import retryable, until_it_answers

log = logging.getLogger("worker.source.kinesis")

ROUND_BACKOFF = Backoff(250, 10_000)
RELEASE_TIMEOUT_S = 5.0
#: Lease-table calls: bounded, so a hung connection cannot hold a checkpoint for minutes.
LEASE_CLIENT = AioConfig(connect_timeout=5, read_timeout=10,
                         retries={"mode": "standard", "max_attempts": 3})  # fmt: skip
_EVENTS = {"free": "taken", "expired": "expired", "steal": "stolen", "reclaim": "reclaimed",
           "handed": "stolen", "force": "stolen"}  # fmt: skip


class KinesisSource:
    #: Not yet tied to `handoff_timeout_s`: a thread still running at the revoke's
    #: deadline makes the worker fail stop (exit 3) before the lease is handed over.
    revoke_hold_s = None

    def __init__(self, config: LeasedStreamSettings, session: Any = None,
                 api: ShardApi | None = None, traits: RecordTraits = TRAITS) -> None:  # fmt: skip
        """`session`: an aiobotocore session to use (default: a new one with the standard
        AWS credential chain); tests pass one with event hooks to inject faults. `api`
        and `traits`: the stream's calls and records (default: Kinesis's)."""
        self._config = config
        self._session = session or get_session()
        self._api: ShardApi = api or KinesisApi(config)  # type: ignore[arg-type]
        self.name = self._api.name
        self.traits = traits
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._shards: dict[str, Shard] = {}
        self._seen: dict[str, Seen] = {}
        self._asks = Asks(config.handoff_deadline_s)
        self._arrived = asyncio.Event()
        #: Set once the worker shuts down: no more takes, asks or hand-offs.
        self._stopping = asyncio.Event()
        self._stack = AsyncExitStack()
        self._coordinator: asyncio.Task[None] | None = None
        self._listener: AssignmentListener | None = None
        self._leases: LeaseTable | None = None
        self._m: KinesisMetrics | None = None
        self._notes: dict[str, str] = {}

    def attach(self, metrics: Metrics) -> None:
        self._m = KinesisMetrics(metrics)

    # Notes (the dead-letter guard's counts) live in the lease item beside the checkpoint,
    # written with each checkpoint, or alone when a halt changed them and nothing moved.
    def keep_notes(self) -> None:
        return None  # notes are written only when remembered

    def remember(self, partition: str, note: str) -> None:
        self._notes[partition] = note

    def recall(self, partition: str) -> str:
        shard = self._shards.get(partition)
        return shard.holder.lease.note if shard is not None else ""

    async def flush_notes(self) -> None:
        for shard_id, note in list(self._notes.items()):
            shard = self._shards.get(shard_id)
            if shard is None:
                del self._notes[shard_id]
            elif note != shard.holder.lease.note:
                try:
                    await shard.holder.write_note(note)
                except LeaseLost:
                    self._notes.pop(shard_id, None)  # its next owner counts from the table
                except Exception as exc:
                    if retryable(exc):
                        raise ConnectionError(f"{self.name}: writing a note: {exc}") from exc
                    raise

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, listener: AssignmentListener) -> None:
        try:
            await self._start(listener)
        except SourceStartError:
            await self._stack.aclose()
            raise
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            await self._stack.aclose()
            reason = " ".join(str(exc).split())  # botocore's parameter errors span lines
            raise SourceStartError(f"{self.name}: stream {self._api.stream}: {reason}") from None

    async def _start(self, listener: AssignmentListener) -> None:
        self._listener = listener
        c = self._config
        session = self._session
        client = await self._stack.enter_async_context(
            session.create_client(self._api.service, region_name=c.region,
                                  endpoint_url=c.endpoint_url)
        )  # fmt: skip
        dynamodb = await self._stack.enter_async_context(
            session.create_client("dynamodb", region_name=c.region,
                                  endpoint_url=c.lease_endpoint, config=LEASE_CLIENT)
        )  # fmt: skip
        self._leases = LeaseTable(dynamodb, c.lease_table or f"{c.group_id}-leases", self.worker_id)

        async def open_stream() -> None:
            await self._api.open(client)

        for step in (open_stream, self._leases.ensure, self._discover, self._coordinate_once):
            await until_it_answers(step)
        if not self._shards:  # nothing to take now: say so, so the worker turns ready
            await listener.on_assigned([])
        self._coordinator = listener.spawn(self._coordinate(), f"{self.name} coordinator")

    async def check(self) -> None:
        """`worker check-config --connect`: the stream and the lease table answer."""
        await check_stream(self._api, self._config, self._session)

    async def stop_taking(self) -> None:
        """Take, ask for and hand over no more leases. The round under way ends first (a
        lease it takes is released with the rest), then so do the hand-offs under way
        (drained, committed, handed over), which the worker's shutdown must not cancel
        half-way: the drain's commit would be lost and its work redone."""
        self._stopping.set()
        if self._coordinator is not None:
            await asyncio.wait({self._coordinator})
        await asyncio.gather(*(shard.hand_off_done() for shard in list(self._shards.values())))

    async def stop(self) -> None:
        """Stop every task of the source, release the leases (bounded), close the clients."""
        if self._coordinator is not None:
            self._coordinator.cancel()
            await asyncio.gather(self._coordinator, return_exceptions=True)
        shards = list(self._shards.values())
        self._shards.clear()
        await asyncio.gather(*(shard.stop() for shard in shards))
        try:  # another worker takes a released lease at once, an unreleased one on expiry
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await asyncio.gather(*(self._release(shard) for shard in shards))
        except TimeoutError:
            log.warning("event=lease_release_failed error='timed out' note='they expire'")
        await self._stack.aclose()

    async def _release(self, shard: Shard) -> None:
        try:
            await shard.holder.release()
        except LeaseLost:
            return
        except Exception as exc:  # stopping anyway: the lease then expires instead
            log.warning("event=lease_release_failed shard=%s error=%r note='it expires after "
                        "lease_duration_s'", shard.shard_id, str(exc))  # fmt: skip

    # -- taking leases ------------------------------------------------------------------------
    async def _discover(self) -> None:
        """Add a lease for every shard of the stream that has none: listed first (paged as
        the service pages them), then the table read, so that a shard made after the
        mapping started is read from its oldest record (`start`)."""
        assert self._leases is not None
        listed = [shard async for shard in self._api.shards()]
        leases = await self._leases.all()
        for shard_id, parents, oldest in new_leases(listed, leases):
            await self._leases.add_shard(shard_id, parents, oldest)

    async def _coordinate(self) -> None:
        """A round every third of a lease duration; new shards every third round."""
        interval = self._config.lease_duration_s / 3
        rounds = failures = 0
        while True:
            with suppress(TimeoutError):
                wait_s = ROUND_BACKOFF.delay_s(failures) if failures else interval
                await asyncio.wait_for(self._stopping.wait(), wait_s)
            if self._stopping.is_set():
                return
            rounds += 1
            try:
                if rounds % 3 == 0:
                    await self._discover()  # children of a reshard, new shards
                await self._coordinate_once()
            except Exception as exc:
                if not retryable(exc):
                    log.error("event=lease_round_failed error=%r note='not retryable: the "
                              "worker stops'", str(exc))  # fmt: skip
                    raise
                failures += 1
                log.warning("event=lease_round_failed error=%r attempt=%d", str(exc), failures)
                continue
            failures = 0

    async def _coordinate_once(self) -> None:
        assert self._leases is not None
        leases = await self._leases.all()
        for lease in unmarked(leases):  # made by an older worker: marked before any take here
            with suppress(LeaseLost):  # taken or marked meanwhile
                await self._leases.mark_oldest(lease)
        for lease in leases:  # the requests this worker waits on: still wanted
            if lease.pending == self.worker_id and lease.owner not in (None, self.worker_id):
                with suppress(LeaseLost):  # answered or called off meanwhile
                    await self._leases.still_asking(lease)
        for lease, why in plan(leases, self.worker_id, self._seen, time.monotonic(),
                               self._config.lease_duration_s, self._shards,
                               self._asks):  # fmt: skip
            if self._stopping.is_set():
                return
            if why == "ask":
                await self._ask(lease)
            else:
                await self._take(lease, why)

    async def _ask(self, lease: Lease) -> None:
        """Ask the owner to hand the lease over; it is read here once the table says so."""
        assert self._leases is not None
        try:
            await self._leases.ask(lease)
        except LeaseLost:
            return  # it changed meanwhile, or another worker asked first
        self._asks.asked(lease.shard_id, time.monotonic())
        log.info("event=lease_handoff_asked shard=%s owner=%s", lease.shard_id, lease.owner)
        self._count("event", "asked")

    async def _take(self, lease: Lease, why: str) -> None:
        assert self._leases is not None and self._listener is not None
        sent = time.monotonic()
        try:
            taken = await self._leases.take(lease)
        except LeaseLost:
            return  # someone else was quicker
        log.info("event=lease_taken shard=%s reason=%s from=%s", lease.shard_id, why,
                 lease.owner)  # fmt: skip
        holder = LeaseHolder(self._leases, taken, sent, self._config.lease_duration_s)
        # A `latest` start with no checkpoint is pinned before its records flow (`reader`);
        # a shard made after the mapping started is read from its oldest record (`start`).
        at = start_of(taken, self._api.starts_at_tip)
        reader = ShardReader(self._api, lease.shard_id, at.after, self._arrived.set, self._m,
                             at=at.at, pin=holder.start_at if at.pin else None,
                             oldest=at.oldest,
                             overhead_bytes=self.traits.overhead_bytes)  # fmt: skip
        shard = self._shards[lease.shard_id] = Shard(holder, reader)
        self._count("event", _EVENTS[why])
        # The pipeline must own the shard before any record of it can arrive: a record
        # fetched for a shard it does not know would be dropped, and later commits
        # would pass over it.
        await self._listener.on_assigned([lease.shard_id])
        keeper = LeaseKeeper(shard, self._listener, self._config.lease_duration_s, self._count,
                             self._forget, lambda: not self._stopping.is_set())  # fmt: skip
        shard.start(self._listener.spawn, keeper.run())

    def _forget(self, shard: Shard) -> None:
        if self._shards.get(shard.shard_id) is shard:
            del self._shards[shard.shard_id]
        if self._m is not None:
            self._m.leases_held.labels(self.name).set(len(self._shards))

    # -- the source contract ------------------------------------------------------------
    async def fetch(self, timeout_s: float) -> Mapping[str, Sequence[Any]]:
        out = self._queued()
        if out:
            return out
        self._arrived.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        return self._queued()

    def _queued(self) -> dict[str, list[Any]]:
        out = {}
        for shard_id, shard in self._shards.items():
            if records := shard.reader.take():
                out[shard_id] = records
        return out

    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        """Each shard's reader gets an equal part of the share and asks each GetRecords for
        as many records as a page of that part holds (`page_fit`); returns what the readers
        may hold at most together. Called by `on_assigned` (a new shard's reader is fitted
        before it reads)."""
        part = share_bytes // max(partitions, 1)
        return sum(shard.reader.page_fit.fit(part) for shard in self._shards.values())

    def pause(self, partition: str) -> None:
        if (shard := self._shards.get(partition)) is not None:
            shard.reader.pause()

    def resume(self, partition: str) -> None:
        if (shard := self._shards.get(partition)) is not None:
            shard.reader.resume()

    async def commit(self, positions: Mapping[str, int]) -> None:
        """Checkpoint every shard still owned (all at once); then report the ones that were
        not. A write that may pass on retry fails the call as a ConnectionError, which the
        committer retries; any other error is raised as it is."""
        items = list(positions.items())
        results = await asyncio.gather(*(self._checkpoint(s, p) for s, p in items),
                                       return_exceptions=True)  # fmt: skip
        lost, failed = [], None
        for (shard_id, _), result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                if not retryable(result):
                    raise result
                failed = failed or result
            elif not result:
                lost.append(shard_id)
        if failed is not None:
            why = str(failed) or type(failed).__name__
            raise ConnectionError(f"lease table: {why}") from failed
        if lost:
            raise OwnershipLost(f"leases lost: {', '.join(lost)}", lost)

    async def _checkpoint(self, shard_id: str, position: int) -> bool:
        """Checkpoint one shard; False if this worker does not own it (any more)."""
        shard = self._shards.get(shard_id)
        if shard is None:
            return False
        try:
            await shard.holder.checkpoint(str(position), self._notes.get(shard_id))
        except LeaseLost:
            self._checkpoint_written("conditional_failure")
            return False
        except Exception:
            self._checkpoint_written("error")
            raise
        self._checkpoint_written("ok")
        return True

    def label(self, partition: str) -> str:
        return partition

    def lag(self, partition: str) -> int | None:
        return None  # the stream gives a time behind its tip, not a record count

    def read_through(self, partition: str) -> None:
        """Nothing to pass: every sequence number of a shard is a record delivered."""

    def waiting(self, partition: str) -> bool:
        shard = self._shards.get(partition)
        return shard is not None and shard.reader.waiting

    # -- metrics (per round or per call, never per record) ---------------------------
    def _count(self, family: str, result: str) -> None:
        """A lease event ("event", name) or a renewal's result ("renewal", result)."""
        if self._m is None:
            return
        if family == "renewal":
            self._m.renewals.labels(self.name, result).inc()
            return
        self._m.lease_events.labels(self.name, result).inc()
        self._m.leases_held.labels(self.name).set(len(self._shards))

    def _checkpoint_written(self, result: str) -> None:
        if self._m is not None:
            self._m.checkpoints.labels(self.name, result).inc()
