"""The IoT pipeline on the memory broker: one row per valid reading (idempotent under
redelivery), alerts for exactly the anomalies, malformed readings dead-lettered."""

import sqlite3
from pathlib import Path

import orjson

from handlers.iot_pipeline import Pipeline, Settings
from worker.testing import MemoryBroker, fully_committed, make_batch, running_worker, wait_until


def reading(device: str, seq: int, temperature: float = 21.0, battery: float = 0.9) -> bytes:
    metrics = {"temperature": temperature, "humidity": 40.0, "battery": battery}
    return orjson.dumps({"device_id": device, "seq": seq, "ts": 1.0 + seq, "metrics": metrics})


def _stream() -> tuple[list[tuple[bytes, bytes]], set[tuple[str, int, str]], int]:
    """(key, value) per record, the anomalies (device, seq, kind), the valid readings."""
    out, anomalies, valid = [], set(), 0
    for d in range(6):
        device = f"dev-{d}"
        for seq in range(40):
            if d == 1 and seq == 20:
                continue  # a gap: seq 21 of dev-1 is a jump
            temperature = 95.0 if (d, seq) in {(2, 5), (3, 30)} else 21.0
            battery = 0.05 if (d, seq) == (4, 11) else 0.9
            out.append((device.encode(), reading(device, seq, temperature, battery)))
            valid += 1
        if d == 5:
            out.append((device.encode(), b'{"device_id": "dev-5", "seq": '))  # malformed
            out.append((device.encode(), b'{"device_id": "dev-5", "seq": "x", "metrics": {}}'))
    anomalies = {("dev-1", 21, "seq_jump"), ("dev-2", 5, "temperature_high"),
                 ("dev-3", 30, "temperature_high"), ("dev-4", 11, "battery_low")}  # fmt: skip
    return out, anomalies, valid


async def test_rows_alerts_and_dead_letters_are_exactly_what_was_produced(tmp_path: Path):
    db = tmp_path / "iot.db"
    broker = MemoryBroker()
    broker.create_topic("telemetry", 2)
    broker.create_topic("alerts", 1)
    stream, anomalies, valid = _stream()
    for key, value in stream * 2:  # everything delivered twice: the upserts change nothing
        broker.produce("telemetry", value, key=key)
    pipeline = Pipeline(Settings(f"sqlite:///{db}", "alerts", 80.0, 0.1))
    dlq = tmp_path / "dlq.jsonl"
    settings = {
        "outputs": {"topics": ["alerts"]},
        "batching": {"batch_size": 25},
        "errors": {"maximum_retry_attempts": 1, "on_failure": f"file://{dlq}"},
    }
    async with running_worker(pipeline, broker, ["telemetry"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["telemetry"]), 30)
    rows = sqlite3.connect(db).execute("SELECT COUNT(*), COUNT(DISTINCT device_id || seq) "
                                       "FROM readings").fetchone()  # fmt: skip
    assert rows == (valid, valid)
    alerts = [orjson.loads(r.value) for r in broker.topics["alerts"][0]]
    seen = {(a["device_id"], a["seq"], a["alert"]) for a in alerts}
    assert seen == anomalies
    assert len(alerts) == 2 * len(anomalies)  # the second delivery alerts again (at least once)
    dead = [orjson.loads(line) for line in dlq.read_text().splitlines()]
    assert sum(len(e["records"]) for e in dead) == 4  # two malformed readings, twice


async def test_a_malformed_reading_fails_only_itself(tmp_path: Path):
    pipeline = Pipeline(Settings(f"sqlite:///{tmp_path / 'iot.db'}", "alerts", 80.0, 0.1))
    batch = make_batch([reading("d", 0), b"not json", reading("d", 1, temperature=90)],
                       sends_to=["alerts"])  # fmt: skip
    failed = await pipeline(batch)
    assert [r.offset for r in failed] == [1]
    assert [orjson.loads(o.value)["alert"] for o in batch.outbox.items] == ["temperature_high"]
    assert pipeline.store.count() == 2
