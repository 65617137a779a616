"""Kinesis source on aiobotocore: shards owned by lease, read with GetRecords, checkpointed
by conditional writes to the lease table.

The pipeline sees shards as partitions and sequence numbers as positions
(`int(sequence_number)`: they are ordered within a shard). A coordinator task
renews this worker's leases, takes free, expired or (for balance) stolen
ones, and discovers new shards; each owned shard has a reader task that
stays within AWS's per-shard limits (5 GetRecords calls/s) and backs off
with jitter when throttled. A shard that ends (no NextShardIterator) is
drained and committed through the normal revoke path, then checkpointed
SHARD_END, which is what lets its children start. A lease found lost on
renewal is revoked the same way; its checkpoint writes then fail, so nothing
is committed by a worker that no longer owns the shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from worker.backoff import Backoff
from worker.observe.metrics import Metrics
from worker.sources.base import AssignmentListener, OwnershipLost, SourceStartError
from worker.sources.kinesis.balance import Seen, plan
from worker.sources.kinesis.config import KinesisSourceConfig
from worker.sources.kinesis.leases import SHARD_END, Lease, LeaseLost, LeaseTable
from worker.sources.kinesis.metrics import KinesisMetrics
from worker.sources.kinesis.record import TRAITS, KinesisRecord

log = logging.getLogger("worker.source.kinesis")

MIN_CALL_INTERVAL_S = 0.2  # GetRecords: 5 calls per second per shard
MAX_READ_BYTES_PER_S = 2_000_000  # and 2 MB per second per shard
IDLE_POLL_S = 0.5
THROTTLES = {"ProvisionedThroughputExceededException", "LimitExceededException"}
THROTTLE_BACKOFF = Backoff(250, 10_000)
_SIZE = attrgetter("size")


class _Shard:
    """An owned shard: its lease, its reader task and the records waiting to be fetched."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.chunks: asyncio.Queue[list[KinesisRecord]] = asyncio.Queue(maxsize=2)
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.reader: asyncio.Task[None] | None = None
        self.last_read: str | None = lease.checkpoint if lease.checkpoint != SHARD_END else None
        self.ended = False  # the reader saw the end; the lease ends once all is committed
        self.behind_ms = 0  # MillisBehindLatest of the last GetRecords

    @property
    def waiting(self) -> bool:
        """Records are queued here, or the stream's tip is ahead of what was read."""
        return self.behind_ms > 0 or not self.chunks.empty()


class KinesisSource:
    name = "kinesis"
    traits = TRAITS

    def __init__(self, config: KinesisSourceConfig, session: Any = None) -> None:
        """`session`: an aiobotocore session to use (default: a new one with the standard
        AWS credential chain); tests pass one with event hooks to inject faults."""
        self._config = config
        self._session = session or get_session()
        self._stream = config.stream
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._shards: dict[str, _Shard] = {}
        self._seen: dict[str, Seen] = {}
        self._arrived = asyncio.Event()
        self._stack = AsyncExitStack()
        self._coordinator: asyncio.Task[None] | None = None
        self._listener: AssignmentListener | None = None
        self._kinesis: Any = None
        self._leases: LeaseTable | None = None
        self._m: KinesisMetrics | None = None

    def attach(self, metrics: Metrics) -> None:
        self._m = KinesisMetrics(metrics)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, listener: AssignmentListener) -> None:
        try:
            await self._start(listener)
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            await self._stack.aclose()
            raise SourceStartError(f"kinesis: stream {self._stream}: {exc}") from None

    async def _start(self, listener: AssignmentListener) -> None:
        self._listener = listener
        c = self._config
        session = self._session
        self._kinesis = await self._stack.enter_async_context(
            session.create_client("kinesis", region_name=c.region, endpoint_url=c.endpoint_url)
        )
        dynamodb = await self._stack.enter_async_context(
            session.create_client(
                "dynamodb", region_name=c.region, endpoint_url=c.lease_endpoint_url
            )
        )
        self._leases = LeaseTable(dynamodb, c.lease_table or f"{c.group_id}-leases", self.worker_id)
        await self._leases.ensure()
        await self._discover()
        await self._coordinate_once()
        if not self._shards:  # nothing to take now: say so, so the worker turns ready
            await listener.on_assigned([])
        self._coordinator = asyncio.create_task(self._coordinate(), name="kinesis-leases")

    async def stop(self) -> None:
        if self._coordinator is not None:
            self._coordinator.cancel()
            await asyncio.gather(self._coordinator, return_exceptions=True)
        for shard_id in list(self._shards):
            shard = self._shards.pop(shard_id)
            await self._stop_reader(shard)
            with contextlib.suppress(LeaseLost, ClientError):
                assert self._leases is not None
                await self._leases.release(shard.lease)  # another worker takes it at once
        await self._stack.aclose()

    # -- leases -----------------------------------------------------------------------------
    async def _discover(self) -> None:
        """Add a lease for every shard of the stream (ListShards, paged as AWS pages it)."""
        assert self._leases is not None
        kwargs: dict[str, Any] = {"StreamName": self._stream}
        while True:
            page = await self._kinesis.list_shards(**kwargs)
            for shard in page["Shards"]:
                parents = tuple(
                    p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
                )
                await self._leases.add_shard(shard["ShardId"], parents)
            if not page.get("NextToken"):
                return
            kwargs = {"NextToken": page["NextToken"]}

    async def _coordinate(self) -> None:
        interval = self._config.lease_duration_s / 3
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            rounds += 1
            try:
                if rounds % 3 == 0:
                    await self._discover()  # children of a reshard, new shards
                await self._coordinate_once()
            except ClientError as exc:
                log.warning("event=lease_round_failed error=%r", str(exc))

    async def _coordinate_once(self) -> None:
        assert self._leases is not None and self._listener is not None
        for shard_id, shard in list(self._shards.items()):
            if shard.ended and shard.chunks.empty() and shard.lease.checkpoint == shard.last_read:
                # Everything read was handled and committed: only now may the shard end.
                await self._end_shard(shard_id)
                continue
            try:
                shard.lease = await self._leases.renew(shard.lease)
            except LeaseLost:
                log.warning("event=lease_lost shard=%s note='stopped without committing'", shard_id)
                self._event("lost")
                await self._drop(shard_id)
        leases = await self._leases.all()
        now = time.monotonic()
        for lease, why in plan(leases, self.worker_id, self._seen, now,
                               self._config.lease_duration_s):  # fmt: skip
            try:
                taken = await self._leases.take(lease)
            except LeaseLost:
                continue  # someone else was quicker
            log.info("event=lease_taken shard=%s reason=%s from=%s", lease.shard_id, why,
                     lease.owner)  # fmt: skip
            self._event({"free": "taken", "expired": "expired", "steal": "stolen"}[why])
            shard = self._shards[lease.shard_id] = _Shard(taken)
            # The pipeline must own the shard before any record of it can arrive: a record
            # fetched for a shard it does not know would be dropped, and later commits
            # would pass over it.
            await self._listener.on_assigned([lease.shard_id])
            shard.reader = asyncio.create_task(self._read(lease.shard_id, shard))

    async def _drop(self, shard_id: str) -> None:
        """Stop a shard: the pipeline drains it (its commits fail if the lease is gone)."""
        shard = self._shards.get(shard_id)
        if shard is None:
            return
        await self._stop_reader(shard)
        assert self._listener is not None
        await self._listener.on_revoked([shard_id])
        self._shards.pop(shard_id, None)
        if self._m is not None:
            self._m.leases_held.labels(self.name).set(len(self._shards))

    async def _end_shard(self, shard_id: str) -> None:
        """All of a closed shard is handled and committed: mark SHARD_END so children start."""
        shard = self._shards[shard_id]
        await self._drop(shard_id)
        assert self._leases is not None
        with contextlib.suppress(LeaseLost):
            lease = await self._leases.checkpoint(shard.lease, SHARD_END)
            await self._leases.release(lease)
            log.info("event=shard_ended shard=%s", shard_id)
            self._event("ended")

    # -- reading ----------------------------------------------------------------------------
    async def _iterator(self, shard_id: str, after: str | None) -> str:
        c = self._config
        kwargs: dict[str, Any] = {"StreamName": self._stream, "ShardId": shard_id}
        if after:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        elif c.starting_position == "latest":
            kwargs["ShardIteratorType"] = "LATEST"
        elif c.starting_position == "at_timestamp":
            at = datetime.fromtimestamp(c.starting_position_timestamp, UTC)
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=at)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return (await self._kinesis.get_shard_iterator(**kwargs))["ShardIterator"]

    async def _read(self, shard_id: str, shard: _Shard) -> None:
        iterator = await self._iterator(shard_id, shard.last_read)
        throttled = 0
        while iterator:
            await shard.resumed.wait()
            started = time.monotonic()
            try:
                page = await self._kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "ExpiredIteratorException":
                    self._calls(shard_id, "expired_iterator")
                    iterator = await self._iterator(shard_id, shard.last_read)
                    continue
                if code in THROTTLES:
                    self._calls(shard_id, "throttled")
                    throttled += 1
                    delay = THROTTLE_BACKOFF.delay_s(throttled)
                    log.warning("event=throttled shard=%s code=%s retry_in_s=%.2f",
                                shard_id, code, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    continue
                raise
            throttled = 0
            self._calls(shard_id, "ok")
            if "MillisBehindLatest" in page:
                shard.behind_ms = page["MillisBehindLatest"]
                if self._m is not None:
                    self._m.behind_latest.labels(self.name, shard_id).set(shard.behind_ms / 1000)
            stream = self._stream
            records = [KinesisRecord.from_api(stream, shard_id, r) for r in page["Records"]]
            if records:
                shard.last_read = records[-1].sequence_number
                await shard.chunks.put(records)
                self._arrived.set()
            iterator = page.get("NextShardIterator")
            pause = MIN_CALL_INTERVAL_S if records else IDLE_POLL_S
            # What this call read counts against the shard's 2 MB/s before the next one.
            pause = max(pause, sum(map(_SIZE, records)) / MAX_READ_BYTES_PER_S)
            await asyncio.sleep(max(pause - (time.monotonic() - started), 0.0))
        shard.ended = True

    async def _stop_reader(self, shard: _Shard) -> None:
        if shard.reader is not None:
            shard.reader.cancel()
            await asyncio.gather(shard.reader, return_exceptions=True)

    # -- the source contract ------------------------------------------------------------
    async def fetch(self, timeout_s: float) -> Mapping[str, Sequence[KinesisRecord]]:
        out = self._take()
        if out:
            return out
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        return self._take()

    def _take(self) -> dict[str, list[KinesisRecord]]:
        out: dict[str, list[KinesisRecord]] = {}
        for shard_id, shard in self._shards.items():
            while not shard.chunks.empty():
                out.setdefault(shard_id, []).extend(shard.chunks.get_nowait())
        return out

    def pause(self, partition: str) -> None:
        if (shard := self._shards.get(partition)) is not None:
            shard.resumed.clear()

    def resume(self, partition: str) -> None:
        if (shard := self._shards.get(partition)) is not None:
            shard.resumed.set()

    async def commit(self, positions: Mapping[str, int]) -> None:
        """Checkpoint every shard still owned; then report the ones that were not."""
        assert self._leases is not None
        lost = []
        for shard_id, position in positions.items():
            shard = self._shards.get(shard_id)
            if shard is None:
                lost.append(shard_id)
                continue
            try:
                shard.lease = await self._leases.checkpoint(shard.lease, str(position))
            except LeaseLost:
                self._checkpoint("conditional_failure")
                lost.append(shard_id)
                continue
            except ClientError as exc:  # throttled or unreachable: the committer retries
                raise ConnectionError(f"lease table: {exc}") from exc
            self._checkpoint("ok")
        if lost:
            raise OwnershipLost(f"leases lost: {', '.join(lost)}", lost)

    def label(self, partition: str) -> str:
        return partition

    # -- metrics (per round or per call, never per record) ---------------------------
    def _event(self, event: str) -> None:
        if self._m is not None:
            self._m.lease_events.labels(self.name, event).inc()
            self._m.leases_held.labels(self.name).set(len(self._shards))

    def _calls(self, shard_id: str, result: str) -> None:
        if self._m is not None:
            self._m.get_records.labels(self.name, shard_id, result).inc()

    def _checkpoint(self, result: str) -> None:
        if self._m is not None:
            self._m.checkpoints.labels(self.name, result).inc()

    def lag(self, partition: str) -> int | None:
        return None  # Kinesis gives time behind (MillisBehindLatest), not a record count

    def waiting(self, partition: str) -> bool:
        shard = self._shards.get(partition)
        return shard is not None and shard.waiting
