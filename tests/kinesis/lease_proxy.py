"""An HTTP proxy in front of moto's DynamoDB that injects lease-table faults for worker
processes: dropped connections and throttling.

The workers under test are `worker run` processes, so a botocore hook in the test's
own session cannot reach them; the fault sits on the wire instead. Each worker slot
gets a listening port of its own (`url(slot)`, its `lease_endpoint_url`), so a fault
can hit one worker (an outage of its lease table: the others keep theirs and take
its leases once they expire) or all of them.

Only the lease data calls are faulted (UpdateItem, PutItem, GetItem, Scan, Query);
CreateTable and DescribeTable always pass, so a worker's start is never the fault.
- **reset**: the connection is aborted before any answer (botocore sees the
  connection closed: a network error the worker retries);
- **throttle**: HTTP 400 with DynamoDB's `ProvisionedThroughputExceededException`
  (a throttle botocore and the worker retry with backoff).
Everything else is forwarded unchanged (moto checks no signatures, and its CRC32
header is kept with the body it belongs to). Counts of each injected fault per slot
are in `injected`.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

import aiohttp
from aiohttp import web

from scripts.kafka_broker import free_port

FAULTED = {"UpdateItem", "PutItem", "GetItem", "Scan", "Query"}
DROPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding",
                   "content-encoding"}  # fmt: skip
THROTTLED = (
    b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",'
    b'"message":"injected by the test proxy"}'
)


class LeaseProxy(threading.Thread):
    def __init__(self, upstream: str, slots: int, seed: int) -> None:
        super().__init__(name="lease-proxy", daemon=True)
        self._upstream = upstream.rstrip("/")
        self.ports = [free_port() for _ in range(slots)]
        self._slot_of = {port: slot for slot, port in enumerate(self.ports)}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._throttle_p = self._reset_p = 0.0
        self._outage_until = [0.0] * slots  # monotonic
        self.injected: Counter[tuple[int, str]] = Counter()
        self.forwarded = 0
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def url(self, slot: int) -> str:
        return f"http://127.0.0.1:{self.ports[slot]}"

    def set_rates(self, throttle_p: float, reset_p: float) -> None:
        """Every worker's faulted calls: throttled with `throttle_p`, reset with `reset_p`."""
        with self._lock:
            self._throttle_p, self._reset_p = throttle_p, reset_p

    def outage(self, slot: int, seconds: float) -> None:
        """Drop every faulted call of `slot` for the next `seconds`."""
        with self._lock:
            self._outage_until[slot] = time.monotonic() + seconds

    def start_and_wait(self) -> None:
        self.start()
        if not self._ready.wait(30):
            raise RuntimeError("the lease proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(15)

    # -- the proxy's own loop ---------------------------------------------------------------
    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            self._client = client
            for port in self.ports:
                await web.TCPSite(runner, "127.0.0.1", port).start()
            self._ready.set()
            await self._stopping.wait()
            await runner.cleanup()

    def _fault(self, slot: int, operation: str) -> str | None:
        if operation not in FAULTED:
            return None
        with self._lock:
            if time.monotonic() < self._outage_until[slot]:
                kind = "outage"
            else:
                draw = self._rng.random()
                kind = ("throttle" if draw < self._throttle_p else
                        "reset" if draw < self._throttle_p + self._reset_p else None)  # fmt: skip
            if kind is not None:
                self.injected[(slot, kind)] += 1
            return kind

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        slot = self._slot_of[request.transport.get_extra_info("sockname")[1]]
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        body = await request.read()
        fault = self._fault(slot, operation)
        if fault in ("reset", "outage"):
            request.transport.abort()  # no answer at all: the client sees the connection drop
            return web.Response(status=503)
        if fault == "throttle":
            return web.Response(status=400, body=THROTTLED,
                                content_type="application/x-amz-json-1.0")  # fmt: skip
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED_HEADERS}
        async with self._client.request(
            request.method, self._upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in DROPPED_HEADERS}
        with self._lock:
            self.forwarded += 1
        return web.Response(status=answer.status, body=data, headers=kept)
