"""SIGTERM/SIGINT: the first asks for a graceful stop, the second exits at once.

As uvicorn does: a drain that takes too long can always be cut short by a
second signal; nothing uncommitted is lost then, only redone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger("worker")

EXIT_FORCED = 130


class Signals:
    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._received = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                return

    def _on_signal(self, sig: signal.Signals) -> None:
        self._received += 1
        if self._received > 1:
            log.warning("event=forced_exit signal=%s note='uncommitted work will be redone'",
                        sig.name)  # fmt: skip
            os._exit(EXIT_FORCED)
        log.info("event=stop_requested signal=%s", sig.name)
        self._stop()
