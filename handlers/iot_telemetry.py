"""Example handler: IoT telemetry readings, decoded, validated and aggregated per device.

Each record's value is a JSON reading such as
    {"device_id": "dev-0042", "seq": 17, "ts": 1764000000.123,
     "metrics": {"temperature": 21.4, "humidity": 40.1, "battery": 0.93}}
A reading that is not JSON or misses a field is counted as invalid and
skipped (a real pipeline might reject it instead, failing the batch into
the dead-letter path). Per batch the handler logs one summary line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger("handlers.iot_telemetry")

FIELDS = ("temperature", "humidity", "battery")


@dataclass(slots=True)
class DeviceStats:
    readings: int = 0
    last_seq: int = -1
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0.0))

    def mean(self, name: str) -> float:
        return self.sums[name] / self.readings if self.readings else 0.0


@dataclass(slots=True)
class Summary:
    devices: dict[str, DeviceStats] = field(default_factory=dict)
    valid: int = 0
    invalid: int = 0
    out_of_order: int = 0


def aggregate(values: list[bytes | None], into: Summary | None = None) -> Summary:
    """Fold raw JSON readings into per-device statistics."""
    summary = into or Summary()
    devices = summary.devices
    loads = orjson.loads
    for raw in values:
        try:
            reading: Any = loads(raw)  # type: ignore[arg-type]
            device = reading["device_id"]
            seq = reading["seq"]
            metrics = reading["metrics"]
            values_ = [float(metrics[name]) for name in FIELDS]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            summary.invalid += 1
            continue
        stats = devices.get(device)
        if stats is None:
            stats = devices[device] = DeviceStats()
        if seq <= stats.last_seq:
            summary.out_of_order += 1
        stats.last_seq = seq
        stats.readings += 1
        sums = stats.sums
        for name, v in zip(FIELDS, values_, strict=True):
            sums[name] += v
        summary.valid += 1
    return summary


async def handle(batch: Any) -> None:
    """Native-style handler: aggregate the batch and log one summary line."""
    summary = aggregate([r.value for r in batch.records])
    hottest = max(summary.devices.items(), key=lambda kv: kv[1].mean("temperature"), default=None)
    log.info(
        "event=telemetry_batch partition=%s readings=%d invalid=%d devices=%d hottest=%s temp=%.1f",
        batch.partition,
        summary.valid,
        summary.invalid,
        len(summary.devices),
        hottest[0] if hottest else "-",
        hottest[1].mean("temperature") if hottest else 0.0,
    )
