"""The memory benchmark's handler: 50 ms of waiting per batch (a slow database write).

A top-level module (the benchmark puts `load/` on the path), so builds of other commits
run it unchanged: `memory_handler:handle`.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def handle(batch: Any) -> None:
    await asyncio.sleep(0.05)
