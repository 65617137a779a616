"""Token hooks that stall on the test's word, for SIGTERM while a token fetch is in
flight: `$OAUTH_DIR/hang` existing (or more than `$OAUTH_HANG_AFTER` calls) makes every
later call hang, a token service that stops answering. While one hangs, the file
`$OAUTH_DIR/librdkafka_waiting` appears once librdkafka's own `oauth_cb` call is among
the waiting (a thread inside `TokenCallback._fetch`): the SIGTERM then meets it."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

from tests.integration.oauth_tokens import short_lived

_calls = {"n": 0}


def _where() -> Path:
    return Path(os.environ["OAUTH_DIR"])


def _hang_now() -> bool:
    _calls["n"] += 1
    hang_after = int(os.environ.get("OAUTH_HANG_AFTER", "0") or 0)
    hang = (_where() / "hang").exists() or bool(hang_after and _calls["n"] > hang_after)
    if hang:
        (_where() / f"hanging.{_calls['n']}").write_text(threading.current_thread().name)
    return hang


def _see_librdkafka_waiting() -> None:
    """Mark when a thread waits inside the source's `oauth_cb` (librdkafka's call)."""
    for frame in sys._current_frames().values():
        while frame is not None:
            code = frame.f_code
            if code.co_name == "_fetch" and code.co_filename.endswith("librdkafka_oauth.py"):
                (_where() / "librdkafka_waiting").touch()
                return
            frame = frame.f_back


def stalls() -> tuple[str, float]:
    """A plain hook: blocks its thread for ever once told to."""
    if _hang_now():
        while True:
            _see_librdkafka_waiting()
            time.sleep(0.05)
    return short_lived()


async def stalls_async() -> tuple[str, float]:
    """An async hook: awaits for ever once told to."""
    if _hang_now():
        while True:
            _see_librdkafka_waiting()
            await asyncio.sleep(0.05)
    return short_lived()


def exits() -> tuple[str, float]:
    """A plain hook whose library calls `sys.exit()` once told to (SystemExit, not an
    Exception)."""
    if _hang_now():
        raise SystemExit(3)
    return short_lived()


async def exits_async() -> tuple[str, float]:
    """As `exits`, an async hook."""
    if _hang_now():
        raise SystemExit(3)
    return short_lived()
