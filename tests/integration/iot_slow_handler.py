"""The IoT pipeline, 10 ms slower per batch, so that a kill lands mid-run."""

from __future__ import annotations

import asyncio

from handlers.iot_pipeline import handle as pipeline


async def handle(batch):
    await asyncio.sleep(0.01)
    return await pipeline(batch)
