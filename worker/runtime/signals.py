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


class StoppedBeforeStart(BaseException):
    """A SIGTERM or SIGINT came while the worker was still loading: nothing was read. A
    BaseException, as KeyboardInterrupt is: a step that turns any error into its own
    (the handler's import) must not catch it."""


def stop_while_loading() -> Callable[[], None]:
    """Until the loop's handlers replace these (`Signals.install`), a signal ends the
    loading (the config, the handler's module, the clients) with one line and exit 0.
    Python's defaults ended it with no line at all (SIGTERM, exit -15) or a traceback
    (SIGINT), and a handler module that loads a model for seconds is just where a
    rollout's SIGTERM finds a starting pod. Raising is what interrupts such an import.
    Returns what puts the handlers found back."""

    def _stop(signum: int, _frame: object) -> None:
        _received.append(signal.Signals(signum).name)  # kept: a bare `except:` may eat it
        raise StoppedBeforeStart(_received[0])

    _received.clear()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for sig in previous:
            signal.signal(sig, _stop)
    except ValueError:  # not the main thread (called in-process): nothing to catch
        pass

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


#: The signals `stop_while_loading` raised for, in order (its own: one run a process).
_received: list[str] = []


def stopped_while_loading() -> None:
    """Raise `StoppedBeforeStart` if a signal came while loading: a loading step that
    caught its exception (a handler module's bare `except:`) went on as if none had come,
    and the worker started and ran until the SIGKILL. Asked once loading is done (after
    the handler's import, and at `Signals.install`, the last moment before the loop's
    handlers take over)."""
    if _received:
        raise StoppedBeforeStart(_received[0])


class Signals:
    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._received = 0

    def install(self) -> None:
        stopped_while_loading()
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
