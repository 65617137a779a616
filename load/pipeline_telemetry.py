"""Telemetry for the IoT pipeline (`handlers/iot_pipeline.py`) with its answers known:
which readings are anomalies, how many are valid, how many malformed.

The demo and the pipeline's kill -9 test both check what landed against these: one
row per valid reading, one alert per anomaly, one dead letter per malformed reading.
Devices report in turn, each with its own seq; the few anomalies are:
- a temperature of 99.5 (above the default `IOT_TEMPERATURE_MAX` of 80) now and then,
- one device's battery at 0.02 (below the default `IOT_BATTERY_MIN` of 0.1) once,
- one reading never sent, so the next seq of that device jumps,
- malformed readings (cut short, not JSON), after which that device's seq jumps too
  (the malformed one is never stored).
"""

from __future__ import annotations

import asyncio

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

#: An anomaly as the pipeline's alert names it: (device_id, seq, alert).
Anomaly = tuple[str, int, str]


def telemetry(
    devices: int, per_device: int
) -> tuple[list[tuple[bytes, bytes]], set[Anomaly], int, int]:
    """(key, value) per reading in sending order; the anomalies; valid and malformed counts."""
    out: list[tuple[bytes, bytes]] = []
    anomalies: set[Anomaly] = set()
    malformed = 0
    width = max(3, len(str(devices - 1)))
    for seq in range(per_device):
        for d in range(devices):
            device = f"dev-{d:0{width}d}"
            if d == 7 and seq == 60:
                anomalies.add((device, 61, "seq_jump"))
                continue
            temperature, battery = 21.0 + (seq % 5), 0.9
            if d % 10 == 3 and seq % 50 == 25:
                temperature = 99.5
                anomalies.add((device, seq, "temperature_high"))
            if d == 11 and seq == per_device * 2 // 3:
                battery = 0.02
                anomalies.add((device, seq, "battery_low"))
            metrics = {"temperature": temperature, "humidity": 50.0, "battery": battery}
            value = orjson.dumps({"device_id": device, "seq": seq, "ts": seq, "metrics": metrics})
            if d == 5 and seq % 40 == 10:
                value, malformed = value[:20], malformed + 1  # cut short: malformed
                if seq + 1 < per_device:
                    anomalies.add((device, seq + 1, "seq_jump"))  # never stored: a gap
            out.append((device.encode(), value))
    return out, anomalies, len(out) - malformed, malformed


async def send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Every reading, in order, acknowledged by all replicas."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                max_batch_size=1 << 20)  # fmt: skip
    await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, name: str, partitions: int, isolation_level: str = "read_uncommitted"
) -> list[bytes]:
    """Every value in the topic now (up to its last stable offset with read_committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation_level,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # the LSO with read_committed
        values: list[bytes] = []
        left = set(tps)
        while left:
            batch = await consumer.getmany(timeout_ms=1000)
            values.extend(r.value for records in batch.values() for r in records)
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        return values
    finally:
        await consumer.stop()
