"""The HTTP side of the worker: /metrics, /healthz, /readyz, and the status page at /.

The port is meant for the cluster network only (see the README): nothing it serves is
secret, but the status page names partitions, the handler and its errors' messages
(their first 200 characters). `metrics.status_page = false` serves none of that: `/`
and `/status.json` answer 404.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.errors import StartError


class Endpoints:
    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], dict[str, Any]],
        host: str,
        port: int,
        status_page: bool = True,
    ) -> None:
        self._registry = registry
        self._health = health
        self._ready = ready
        self._status = status
        self._page = files("worker.observe").joinpath("status_page.html").read_bytes()
        self._host = host
        self._port = port
        self._status_page_on = status_page
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._status_page_on:
            app.router.add_get("/status.json", self._status_json)
            app.router.add_get("/", self._status_page)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartError(
                f"metrics.listen {self._host}:{self._port}: "
                f"{exc.strerror or exc} (another process has the port? choose another in "
                "metrics.listen, or port 0 for any free one)"
            ) from None
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop turns; a halted partition makes it fail.
        ok, why = self._health()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def _status_json(self, _: web.Request) -> web.Response:
        return web.json_response(self._status())

    async def _status_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html")

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self._ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)
