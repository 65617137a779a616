"""Fault injection at the botocore boundary for the Kinesis tests: event hooks on a session.

`LeaseCalls(session)` tags every lease-table UpdateItem the session makes with the
write it is (take, ask, still_asking, hand_over, renew, checkpoint, start_at, release) and its
shard, in the call's context, and runs the test's async hooks: `before(kind, shard)` before the call
is sent (raising there fails the call as botocore raises to its caller once its
own retries are spent; awaiting there holds the call back), and `after(kind,
shard, status)` once the table's answer (HTTP `status`) arrived and before the
caller sees it (awaiting there holds the answer back, after the table applied
the write).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import EndpointConnectionError

Before = Callable[[str, str], Awaitable[None]]
After = Callable[[str, str, int], Awaitable[None]]


def write_kind(params: dict[str, Any]) -> str:
    """Which lease write an UpdateItem is, from its update expression."""
    expression = params.get("UpdateExpression", "")
    if expression.startswith("SET #owner = #pending"):
        return "hand_over"
    if expression.startswith("SET #pending"):
        return "ask"
    if expression.startswith("SET #asked"):
        return "still_asking"
    if expression.startswith("SET #owner"):
        return "take"
    if expression.startswith("REMOVE #owner"):
        return "release"
    if "#checkpoint" in expression:
        return "checkpoint"
    if expression.startswith("SET #start"):
        return "start_at"
    return "renew"


def unreachable(endpoint: str = "http://lease-table.invalid") -> EndpointConnectionError:
    return EndpointConnectionError(endpoint_url=endpoint)


async def no_hook(*_: object) -> None:
    return None


class LeaseCalls:
    def __init__(self, session: Any, before: Before = no_hook, after: After = no_hook) -> None:
        self.before = before
        self.after = after
        session.register("before-parameter-build.dynamodb.UpdateItem", self._before)
        session.register("after-call.dynamodb.UpdateItem", self._after)

    async def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        kind, shard = write_kind(params), params["Key"]["shard_id"]["S"]
        context["lease_write"] = (kind, shard)
        await self.before(kind, shard)

    async def _after(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if "lease_write" in context:
            await self.after(*context["lease_write"], http_response.status_code)


async def hold(event: asyncio.Event, at_most_s: float) -> bool:
    """Wait for `event`, at most `at_most_s`; then let the loop run what it woke.

    True if it was set: the fixed code never sets some of them (a lock keeps the
    awaited write from starting), so every such wait is bounded."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), at_most_s)
    for _ in range(5):  # the woken caller stores its answer before this one goes on
        await asyncio.sleep(0)
    return event.is_set()
