"""Failures an operator must be able to see, on the real broker: a poison record under the
default settings (warned of, shown retrying on the status page, in `worker status` and the
metrics), where a handler raised (logs, DLQ headers), `worker dlq`, and `redrive --since`."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.integration.kafka_helpers import (
    ROOT,
    WorkerProcess,
    create_topic,
    eventually,
    keyed_topic,
    scrape,
    unique,
    write_config,
)
from tests.integration.test_kafka_failures import (
    PoisonHandler,
    config,
    produce_numbered,
    read_all,
    running,
    wait_fully_committed,
)

pytestmark = pytest.mark.kafka
POISON_OFFSET = 5


def status_of(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as response:
        return json.loads(response.read())


def worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_a_poison_record_with_the_defaults_is_warned_of_and_seen_retrying(
    kafka: str, tmp_path: Path
):
    topic, _ = keyed_topic(kafka, 200, 2, by_key_number=True)
    group = unique("g")
    cfg = write_config(tmp_path / "w.toml", kafka, topic, group)  # default retries, no DLQ
    worker = WorkerProcess(cfg, tmp_path, {"RECORD_POISON": f"0:{POISON_OFFSET}"})
    try:
        worker.wait_for_log(
            r"event=config_warning detail='retries are unlimited and there is no on-failure "
            r"destination: one bad record stops its partition'"
        )
        port = worker.metrics_port

        def retrying() -> dict | None:
            parts = {p["partition"]: p for p in status_of(port)["partitions"]}
            r = parts.get(f"{topic}-0", {}).get("retrying")
            return r if r and r["attempts"] >= 3 else None

        eventually(lambda: retrying() is not None, 60, "the poison retried")
        status = status_of(port)
        parts = {p["partition"]: p for p in status["partitions"]}
        shown = parts[f"{topic}-0"]["retrying"]
        assert status["ready"] is True
        assert (shown["position"], shown["records"]) == (POISON_OFFSET, 1)
        assert shown["error"] == "ValueError: poison record"
        assert parts[f"{topic}-1"]["retrying"] is None
        metrics = scrape(port)
        labels = (("partition", f"{topic}-0"), ("source", "kafka"))
        assert metrics[("worker_partition_retrying", labels)] == 1
        assert metrics[("worker_partition_retry_attempts", labels)] >= 3
        other = (("partition", f"{topic}-1"), ("source", "kafka"))
        assert metrics[("worker_partition_retrying", other)] == 0

        cli = worker_cli("status", "--url", f"http://127.0.0.1:{port}")
        assert cli.returncode == 0, cli.stderr
        assert f"{topic}-0 retrying position {POISON_OFFSET} (1 records): " in cli.stdout
        assert "ValueError: poison record" in cli.stdout

        dom = _rendered_page(port, tmp_path)
        assert f"retrying position {POISON_OFFSET}: " in dom
        assert "ValueError: poison record" in dom

        failed = worker.wait_for_log(r"event=invocation_failed [^\n]*")
        assert re.search(r" at=recording_handler\.py:\d+", failed.group(0)), failed.group(0)
        worker.wait_for_log(r"event=invocation_traceback [^\n]*Traceback")
    finally:
        worker.terminate()
        worker.wait()


def _rendered_page(port: int, tmp_path: Path) -> str:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `make test` (it installs it)"
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=4000", "--dump-dom", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


async def dead_letter_run(kafka: str, topic: str, dlq: str, group: str, poison: set[int]) -> None:
    errors = {"maximum_retry_attempts": 0, "on_failure": f"kafka://{dlq}"}
    cfg = config(kafka, topic, group, errors=errors, batching={"maximum_batching_window_ms": 50})
    async with running(cfg, PoisonHandler(poison=poison)):
        await wait_fully_committed(kafka, group, topic, 2)


async def test_dlq_lists_exactly_the_dead_lettered_records_and_redrive_since_picks_up(
    kafka: str,
):
    topic, dlq, back, group = unique("tel"), unique("dlq"), unique("back"), unique("g")
    for name, partitions in ((topic, 2), (dlq, 2), (back, 1)):
        await create_topic(kafka, name, partitions)
    first = {101, 202, 303}
    await produce_numbered(kafka, topic, 600, 2)
    await dead_letter_run(kafka, topic, dlq, group, first)

    dead = await read_all(kafka, dlq)
    assert len(dead) == len(first)
    for r in dead:
        headers = dict(r.headers)
        tb = headers["worker.error.traceback"].decode()
        assert tb.startswith("Traceback (most recent call last)") and "poison reading" in tb
        at = headers["worker.error.at"].decode()
        assert re.fullmatch(r"tests/integration/test_kafka_failures\.py:\d+", at), at

    listed = await asyncio.to_thread(worker_cli, "dlq", "--from", f"kafka://{dlq}",
                                     "--bootstrap", kafka, "--json")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((r["source_position"], r["key"]) for r in rows) == sorted(
        (f"{topic}-{n % 2}@{n // 2}", f"k{n}") for n in first
    )
    for r in rows:
        assert (r["condition"], r["attempts"], r["error_type"]) == (
            "RetryAttemptsExhausted", 1, "ValueError",
        )  # fmt: skip
        assert r["error_message"].startswith("poison reading") and r["failed_at_ms"] > 0
    table = await asyncio.to_thread(worker_cli, "dlq", "--from", f"kafka://{dlq}",
                                    "--bootstrap", kafka, "--limit", "2")  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1] == "2 records"

    moved = await asyncio.to_thread(worker_cli, "redrive", "--from", f"kafka://{dlq}",
                                    "--to", f"kafka://{back}", "--bootstrap", kafka)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert f"moved {len(first)} records" in moved.stdout
    since = re.search(r"--since (\S+)", moved.stdout)
    assert since, moved.stdout

    second = {707, 808}
    await produce_numbered(kafka, topic, 1000, 2)  # the same numbers again, later offsets
    await dead_letter_run(kafka, topic, dlq, group, second)
    again = await asyncio.to_thread(worker_cli, "redrive", "--from", f"kafka://{dlq}",
                                    "--to", f"kafka://{back}", "--bootstrap", kafka,
                                    "--since", since.group(1))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"moved {len(second)} records" in again.stdout
    redriven = [orjson.loads(r.value)["i"] for r in await read_all(kafka, back)]
    assert sorted(redriven) == sorted(first | second)  # each exactly once

    future = await asyncio.to_thread(worker_cli, "redrive", "--from", f"kafka://{dlq}",
                                     "--to", f"kafka://{back}", "--bootstrap", kafka,
                                     "--since", "2999-01-01T00:00:00Z")  # fmt: skip
    assert future.returncode == 2
    assert future.stderr.strip().splitlines() == [future.stderr.strip()]
    assert "in the future" in future.stderr
