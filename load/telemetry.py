"""Realistic IoT telemetry readings: per-device sequence numbers, drifting sensor values."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator

import orjson


def device_id(i: int) -> str:
    return f"dev-{i:05d}"


def readings(
    devices: int, seed: int = 7, value_bytes: int | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Endless (key, value) pairs, devices in round-robin, each with its own seq counter.

    `value_bytes` pads each reading (with a "pad" field) to about that size.
    """
    pad = ""
    rng = random.Random(seed)
    seq = [0] * devices
    base = [(rng.uniform(15, 30), rng.uniform(30, 70)) for _ in range(devices)]
    keys = [device_id(i).encode() for i in range(devices)]
    i = 0
    while True:
        d = i % devices
        s = seq[d]
        seq[d] = s + 1
        t, h = base[d]
        now = time.time()
        reading = {
            "device_id": device_id(d),
            "seq": s,
            "ts": now,
            "metrics": {
                "temperature": round(t + 2 * math.sin(s / 50) + rng.gauss(0, 0.2), 2),
                "humidity": round(h + rng.gauss(0, 0.5), 2),
                "battery": round(max(0.0, 1.0 - s * 1e-5), 4),
            },
        }
        if value_bytes:
            pad = pad or "x" * max(value_bytes - len(orjson.dumps(reading)) - 10, 0)
            reading["pad"] = pad
        value = orjson.dumps(reading)
        yield keys[d], value
        i += 1
