"""KCL-style shard leases and checkpoints in a DynamoDB table.

One item per shard: `shard_id`, `owner`, `counter` (bumped by every take,
renew and release), `checkpoint` (the last sequence number done, or
SHARD_END), `start_at` (while there is no checkpoint: the sequence number a
`latest` start was pinned at, read AT it; see `reader`), `start` (where a
shard with no checkpoint starts, decided when its lease is made: `oldest` for a
shard that appeared after the mapping started; see `start`), `sub_checkpoint`
(for KPL aggregation later), `parents`, and
`pending_owner` while another worker asks for the lease (a graceful hand-off,
after KCL 3's: the asker marks the lease without moving its counter, so the
owner keeps renewing while it drains, then hands it over in one write). Every
write that depends on owning the lease is conditional on `owner` and
`counter` being what this worker last saw, so a worker that lost its lease
(taken over after it stopped renewing, say) can never checkpoint: its write
fails and it drops the shard without committing. Expiry is judged as KCL does,
by a counter that has not moved for `lease_duration_s` on this worker's clock.

Every write returns the item as the table now holds it (`ALL_NEW`), and a
refused write carries the item that refused it (`ALL_OLD`), so the caller's
view of a lease is always the table's answer to its last write, never a copy
patched up in memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

SHARD_END = "SHARD_END"
#: `start` of a lease made after the mapping started: read from the oldest record (`start`).
OLDEST = "oldest"
#: `start` of a lease made at the mapping's start: read from `starting_position`.
CONFIGURED = "configured"


class LeaseLost(Exception):
    """A conditional write failed: the lease is not as this worker last saw it.

    `current` is the lease as the table held it when it refused (None if it did not say):
    owned by another worker, released, or still this worker's with a counter moved by a
    write of its own whose answer never arrived.
    """

    def __init__(self, message: str, current: Lease | None = None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class Lease:
    shard_id: str
    owner: str | None
    counter: int
    checkpoint: str | None
    parents: tuple[str, ...] = ()
    #: The worker that asked for the lease (a graceful hand-off in progress), if any.
    pending: str | None = None
    #: How many lease rounds the asker has confirmed its request since it asked: a
    #: number that stops moving tells the owner the asker is gone.
    asked: int = 0
    #: The note written with the checkpoints (the dead-letter guard's counts), if any.
    note: str = ""
    #: Where a `latest` start was pinned: the first record of the first page read, which
    #: nothing was handed out before. Read AT it while there is no checkpoint; a checkpoint
    #: (the last done) always wins. Rows without it read as before.
    start_at: str | None = None
    #: Where the shard starts while there is no checkpoint, decided when the lease was made:
    #: OLDEST (it appeared after the mapping started) or CONFIGURED; None in rows made before
    #: the attribute existed (read as CONFIGURED).
    start: str | None = None

    @property
    def ended(self) -> bool:
        return self.checkpoint == SHARD_END


def _item(lease: Lease) -> dict[str, Any]:
    item: dict[str, Any] = {
        "shard_id": {"S": lease.shard_id},
        "counter": {"N": str(lease.counter)},
        "parents": {"L": [{"S": p} for p in lease.parents]},
    }
    if lease.owner:
        item["owner"] = {"S": lease.owner}
    if lease.checkpoint:
        item["checkpoint"] = {"S": lease.checkpoint}
    if lease.start:
        item["start"] = {"S": lease.start}
    return item


def _lease(item: dict[str, Any]) -> Lease:
    return Lease(
        shard_id=item["shard_id"]["S"],
        owner=item.get("owner", {}).get("S"),
        counter=int(item["counter"]["N"]),
        checkpoint=item.get("checkpoint", {}).get("S"),
        parents=tuple(p["S"] for p in item.get("parents", {}).get("L", [])),
        pending=item.get("pending_owner", {}).get("S"),
        asked=int(item.get("pending_rounds", {}).get("N", "0")),
        note=item.get("guard_note", {}).get("S", ""),
        start_at=item.get("start_at", {}).get("S"),
        start=item.get("start", {}).get("S"),
    )


_PENDING = {"#pending": "pending_owner", "#asked": "pending_rounds"}


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class LeaseTable:
    def __init__(self, client: Any, table: str, worker_id: str) -> None:
        self._db = client
        self.table = table
        self.worker_id = worker_id

    async def ensure(self) -> None:
        """Create the table if it is missing, and wait until it is active."""
        try:
            await self._db.create_table(
                TableName=self.table,
                KeySchema=[{"AttributeName": "shard_id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "shard_id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        for _ in range(120):
            described = await self._db.describe_table(TableName=self.table)
            if described["Table"]["TableStatus"] == "ACTIVE":
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"lease table {self.table} did not become ACTIVE")

    async def add_shard(
        self, shard_id: str, parents: tuple[str, ...], oldest: bool = False
    ) -> None:
        """Create a shard's lease unless it exists (every worker may race to do this; the
        first create wins, with its `start`). `oldest`: the shard appeared after the mapping
        started, so it is read from its oldest record (`start.new_leases` decides)."""
        start = OLDEST if oldest else CONFIGURED
        try:
            await self._db.put_item(
                TableName=self.table,
                Item=_item(Lease(shard_id, None, 0, None, parents, start=start)),
                ConditionExpression="attribute_not_exists(shard_id)",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise

    async def mark_oldest(self, lease: Lease) -> Lease:
        """Write `start = oldest` on a row an older worker made without it (`start.unmarked`),
        if it is still never taken and unmarked; LeaseLost otherwise."""
        return await self._update(
            lease, "SET #start = :oldest", {":oldest": {"S": OLDEST}}, {"#start": "start"},
            mine=False, also=" AND attribute_not_exists(#owner) AND attribute_not_exists(#start)",
        )  # fmt: skip

    async def all(self) -> list[Lease]:
        leases, kwargs = [], {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = await self._db.scan(**kwargs)
            leases += [_lease(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return sorted(leases, key=lambda lease: lease.shard_id)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def _update(self, lease: Lease, expression: str, values: dict[str, Any],
                      names: dict[str, str] | None = None, mine: bool = True,
                      also: str = "", counted: bool = True) -> Lease:  # fmt: skip
        condition = ("#counter = :seen" if counted else "attribute_exists(#counter)") + (
            " AND #owner = :me" if mine else "") + also  # fmt: skip
        values = {**({":seen": {"N": str(lease.counter)}} if counted else {}), **values}
        if mine:
            values[":me"] = {"S": self.worker_id}
        try:
            answer = await self._db.update_item(
                TableName=self.table,
                Key={"shard_id": {"S": lease.shard_id}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={
                    "#counter": "counter",
                    "#owner": "owner",
                    **(names or {}),
                },
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                item = exc.response.get("Item")
                current = _lease(item) if item else None
                raise LeaseLost(f"lease of {lease.shard_id} changed under us", current) from None
            raise
        return _lease(answer["Attributes"])

    async def take(self, lease: Lease) -> Lease:
        """Own a free, expired or stolen lease, if it is still as we last saw it (a hand-off
        asked for it is called off)."""
        return await self._update(
            lease,
            "SET #owner = :me, #counter = #counter + :one REMOVE #pending, #asked",
            {":me": {"S": self.worker_id}, ":one": {"N": "1"}},
            _PENDING,
            mine=False,
        )

    async def ask(self, lease: Lease) -> Lease:
        """Ask the owner for the lease: mark this worker as its pending owner, the counter
        unchanged (the owner keeps renewing), if the lease is still as we last saw it and
        nobody asked first."""
        return await self._update(
            lease,
            "SET #pending = :me, #asked = :zero",
            {":me": {"S": self.worker_id}, ":owner": {"S": lease.owner or ""},
             ":zero": {"N": "0"}},
            _PENDING,
            mine=False,
            also=" AND #owner = :owner AND attribute_not_exists(#pending)",
        )  # fmt: skip

    async def still_asking(self, lease: Lease) -> Lease:
        """Confirm this worker's request (every lease round while it waits): the owner hands
        over only to an asker whose confirmations keep coming. Not conditional on the
        counter, which the owner moves all the while; LeaseLost once the request is gone."""
        return await self._update(
            lease,
            "SET #asked = #asked + :one",
            {":me": {"S": self.worker_id}, ":owner": {"S": lease.owner or ""},
             ":one": {"N": "1"}},
            _PENDING,
            mine=False,
            also=" AND #owner = :owner AND #pending = :me",
            counted=False,
        )  # fmt: skip

    async def hand_over(self, lease: Lease) -> Lease:
        """Give the lease to the worker that asked for it, in one write (after the last
        checkpoint): owner becomes the pending owner, the counter moves."""
        return await self._update(
            lease,
            "SET #owner = #pending, #counter = #counter + :one REMOVE #pending, #asked",
            {":one": {"N": "1"}, ":to": {"S": lease.pending or ""}},
            _PENDING,
            also=" AND #pending = :to",
        )

    async def renew(self, lease: Lease) -> Lease:
        return await self._update(lease, "SET #counter = #counter + :one", {":one": {"N": "1"}})

    async def checkpoint(
        self, lease: Lease, sequence: str, sub_sequence: int = 0, note: str | None = None
    ) -> Lease:
        """Record `sequence` (or SHARD_END) as done, with `note` if given; LeaseLost if we
        no longer own it.

        `sub_sequence` is kept for KPL-aggregated records (always 0 until those are read).
        """
        values = {":cp": {"S": sequence}, ":sub": {"N": str(sub_sequence)}}
        names = {"#checkpoint": "checkpoint", "#sub": "sub_checkpoint"}
        expression = "SET #checkpoint = :cp, #sub = :sub"
        if note is not None:
            values[":note"], names["#note"] = {"S": note}, "guard_note"
            expression += ", #note = :note"
        return await self._update(lease, expression, values, names)

    async def start_at(self, lease: Lease, sequence: str) -> Lease:
        """Pin the shard's start AT `sequence` (nothing of it done yet); LeaseLost if we no
        longer own it, so a worker whose lease was taken cannot move its new owner's start."""
        return await self._update(
            lease, "SET #start = :at", {":at": {"S": sequence}}, {"#start": "start_at"}
        )

    async def write_note(self, lease: Lease, note: str) -> Lease:
        """Keep `note` with the lease (its checkpoint unchanged); LeaseLost if not ours."""
        return await self._update(
            lease, "SET #note = :note", {":note": {"S": note}}, {"#note": "guard_note"}
        )

    async def release(self, lease: Lease) -> Lease:
        """Give the lease up (after the last checkpoint), so another worker takes it at once;
        a request for it goes too (it was made of this owner, and the lease is free now)."""
        return await self._update(lease,
                                  "REMOVE #owner, #pending, #asked SET #counter = #counter + :one",
                                  {":one": {"N": "1"}}, _PENDING)  # fmt: skip
