"""The IoT pipeline: readings decoded and validated, anomalies alerted, every valid reading
stored, idempotently.

A reading is the load generator's telemetry:
    {"device_id": "dev-00042", "seq": 17, "ts": 1764000000.123,
     "metrics": {"temperature": 21.4, "humidity": 40.1, "battery": 0.93}}

- Malformed (not JSON, a field missing or of the wrong type): fails only itself,
  through the partial result, so the worker retries and then dead-letters it.
- Anomalies raise an alert, sent with `batch.send` to `IOT_ALERTS_TOPIC` for that
  reading (`record=`): temperature above `IOT_TEMPERATURE_MAX`, battery below
  `IOT_BATTERY_MIN`, or a device whose seq jumps: its previous reading (the highest seq
  below this one, stored or earlier in the batch) is older than seq - 1. Judged from
  the table, not from process memory, so a retry or a restart decides the same way.
  With `outputs.exactly_once` an alert is committed once with its reading.
- Every valid reading goes to the table `readings` (device_id, seq, ts, temperature,
  humidity, battery), primary key (device_id, seq), written with an upsert in one
  transaction per batch: a redelivered batch changes nothing. SQLite
  (`IOT_DATABASE_URL=sqlite:///PATH`, default `sqlite:///iot.db` in the working
  directory) on one thread of its own, so the database never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

CREATE = """CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    temperature REAL NOT NULL, humidity REAL NOT NULL, battery REAL NOT NULL,
    PRIMARY KEY (device_id, seq))"""
UPSERT = """INSERT INTO readings (device_id, seq, ts, temperature, humidity, battery)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (device_id, seq) DO UPDATE SET ts = excluded.ts,
    temperature = excluded.temperature, humidity = excluded.humidity,
    battery = excluded.battery"""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    alerts_topic: str
    temperature_max: float
    battery_min: float

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            env("IOT_DATABASE_URL", "sqlite:///iot.db"),
            env("IOT_ALERTS_TOPIC", "telemetry-alerts"),
            float(env("IOT_TEMPERATURE_MAX", "80")),
            float(env("IOT_BATTERY_MIN", "0.1")),
        )


Row = tuple[str, int, float, float, float, float]


def decode(raw: bytes | None) -> Row | None:
    """The reading as a table row, or None if it is malformed."""
    try:
        r: Any = orjson.loads(raw)  # type: ignore[arg-type]
        m = r["metrics"]
        device, seq = r["device_id"], r["seq"]
        if not isinstance(device, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return None
        return (device, seq, float(r["ts"]), float(m["temperature"]), float(m["humidity"]),
                float(m["battery"]))  # fmt: skip
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class SqliteStore:
    """One connection, used from one thread only (sqlite3's rule), off the event loop."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="iot-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self._path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(CREATE)
        return self._db

    def _write(self, rows: list[Row]) -> dict[str, int | None]:
        db = self._connect()
        firsts: dict[str, int] = {}
        for device, seq, *_ in rows:
            if seq < firsts.get(device, seq + 1):
                firsts[device] = seq
        with db:  # one transaction per batch
            prev = {d: db.execute("SELECT MAX(seq) FROM readings WHERE device_id = ? AND "
                                  "seq < ?", (d, s)).fetchone()[0]
                    for d, s in firsts.items()}  # fmt: skip
            db.executemany(UPSERT, rows)
        return prev

    async def write(self, rows: list[Row]) -> dict[str, int | None]:
        """Store the rows; returns, per device, its highest stored seq below the batch's."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._write, rows)

    def count(self) -> int:
        """Rows stored (blocking: for tests and the demo's report)."""
        return self._thread.submit(self._count).result()

    def _count(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM readings").fetchone()[0]


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = settings.database_url
        if not url.startswith("sqlite:///"):
            raise ValueError(f"IOT_DATABASE_URL {url!r}: expected sqlite:///PATH")
        self.store = SqliteStore(url.removeprefix("sqlite:///"))

    def anomalies(self, row: Row, prev: int | None) -> list[str]:
        _, seq, _, temperature, _, battery = row
        s, found = self.settings, []
        if temperature > s.temperature_max:
            found.append("temperature_high")
        if battery < s.battery_min:
            found.append("battery_low")
        if prev is not None and seq > prev + 1:
            found.append("seq_jump")
        return found

    async def __call__(self, batch: Any) -> list[Any]:
        rows, valid, failed = [], [], []
        for record in batch.records:
            row = decode(record.value)
            if row is None:
                failed.append(record)
            else:
                rows.append(row)
                valid.append(record)
        if not rows:
            return failed
        prev = await self.store.write(rows)  # raises: the batch fails and is retried
        for row, record in sorted(zip(rows, valid, strict=True), key=lambda x: x[0][:2]):
            device, seq = row[0], row[1]
            before = prev.get(device)
            for kind in self.anomalies(row, before):
                alert = {"device_id": device, "seq": seq, "ts": row[2], "alert": kind,
                         "temperature": row[3], "battery": row[5]}  # fmt: skip
                batch.send(self.settings.alerts_topic, orjson.dumps(alert),
                           key=device, record=record)  # fmt: skip
            if before is None or seq > before:
                prev[device] = seq
        return failed


_pipeline: Pipeline | None = None


async def handle(batch: Any) -> list[Any]:
    global _pipeline
    if _pipeline is None:
        _pipeline = Pipeline(Settings.from_env())
    return await _pipeline(batch)
