"""The worker as operators see it: a real Prometheus scrape, the dashboard's queries, the status
page in headless Chromium, and `worker lag`, all against one worker on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scripts.kafka_broker import free_port, stop_pid
from tests.integration.kafka_helpers import (
    ROOT,
    WorkerProcess,
    create_topic,
    end_offsets,
    eventually,
    produce_keyed,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka
PARTITIONS = 4
RECORDS = 8000


@dataclass
class Observed:
    kafka: str
    topic: str
    group: str
    config: Path
    worker: WorkerProcess
    metrics_port: int
    prometheus: str
    produced_at: float
    ends: dict[int, int]


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    config = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"][0]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    for rules in config["rule_files"]:
        shutil.copy(ROOT / "config" / rules, tmp / rules)
    port = free_port()
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make test` (it installs it)"
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    eventually(ready, 30, "prometheus ready")
    return proc, url


@pytest.fixture(scope="module")
def observed(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observed")
    topic, group = unique("tel"), unique("g")
    asyncio.run(create_topic(kafka, topic, PARTITIONS))
    config = write_config(
        tmp / "w.toml", kafka, topic, group,
        errors={"maximum_retry_attempts": 0},  # and no destination: the poison is dropped
    )  # fmt: skip
    # A slow handler, so lag builds up and drains while Prometheus watches.
    worker = WorkerProcess(config, tmp, {"RECORD_SLEEP_S": "0.3", "RECORD_POISON": "0:5"})
    port = worker.metrics_port
    prometheus, url = start_prometheus(tmp, f"127.0.0.1:{port}")
    try:
        eventually(lambda: scalar(url, 'up{job="streamworker"}') == 1, 30, "first scrape")
        produced_at = time.time()
        asyncio.run(produce_keyed(kafka, topic, RECORDS))
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        yield Observed(kafka, topic, group, config, worker, port, url, produced_at, ends)
    finally:
        stop_pid(prometheus.pid)
        worker.stop()


def test_prometheus_sees_the_records_the_lag_and_its_return_to_zero(observed: Observed):
    url, topic = observed.prometheus, observed.topic
    eventually(
        lambda: (scalar(url, "max(worker_offset_lag_records)") or 0) > 0, 60, "lag to build up"
    )
    lags = query(url, "max_over_time(worker_offset_lag_records[5m])")
    assert {r["metric"]["partition"] for r in lags} == {f"{topic}-{p}" for p in range(4)}
    peaks = {r["metric"]["partition"]: float(r["value"][1]) for r in lags}
    for p, end in observed.ends.items():
        assert 0 < peaks[f"{topic}-{p}"] <= end, peaks  # seen waiting, never above what we sent
    eventually(
        lambda: scalar(url, "sum(worker_records_committed_total)") == RECORDS, 120, "all committed"
    )
    eventually(lambda: scalar(url, "max(worker_offset_lag_records)") == 0, 30, "lag back to 0")
    assert scalar(url, "sum(worker_records_polled_total)") == RECORDS
    assert scalar(url, "sum(worker_records_dropped_total)") == 1  # the poison record
    peak_rate = scalar(url, "max_over_time(sum(rate(worker_records_committed_total[5s]))[5m:1s])")
    assert peak_rate is not None and peak_rate > 0
    elapsed = time.time() - observed.produced_at
    ages = query(url, "worker_iterator_age_seconds")
    assert len(ages) == PARTITIONS
    assert all(0 <= float(r["value"][1]) <= elapsed for r in ages)


def test_every_dashboard_query_returns_data(observed: Observed):
    dashboard = json.loads((ROOT / "config/grafana/dashboards/streamworker.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    eventually(
        lambda: scalar(observed.prometheus, "sum(worker_records_committed_total)") == RECORDS,
        120, "all committed",
    )  # fmt: skip
    empty = [e for e in exprs if not query(observed.prometheus, e)]
    assert not empty, f"queries without data: {empty}"


def test_the_status_page_in_headless_chromium_shows_the_partitions_and_offsets(
    observed: Observed, tmp_path: Path
):
    eventually(lambda: all(p["committed"] for p in _status(observed)["partitions"]), 120, "commits")
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `make test` (it installs it)"
    url = f"http://127.0.0.1:{observed.metrics_port}/"
    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000",
    ]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    status = _status(observed)
    for p in status["partitions"]:
        assert f"<td>{p['partition']}</td>" in dom.stdout
        assert f"<td>{p['committed']}</td>" in dom.stdout and p["committed"] > 0
    shot = tmp_path / "status.png"
    subprocess.run([*flags, "--window-size=1100,520", f"--screenshot={shot}", url],
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("STREAMWORKER_UPDATE_DOCS"):  # refresh the README's screenshot
        shutil.copy(shot, ROOT / "docs" / "status-page.png")


def _status(observed: Observed) -> dict:
    url = f"http://127.0.0.1:{observed.metrics_port}/status.json"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_worker_lag_reads_the_group_from_the_broker_with_or_without_a_worker(
    observed: Observed,
):
    eventually(lambda: all(p["lag"] == 0 for p in _status(observed)["partitions"]), 120, "drained")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "lag", "--config", str(observed.config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [ln.split() for ln in result.stdout.splitlines() if ln.startswith(observed.topic)]
    assert [(int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows] == [
        (p, end, end, 0) for p, end in sorted(observed.ends.items())
    ]
    other = subprocess.run(
        [sys.executable, "-m", "worker", "lag", "--config", str(observed.config),
         "--set", "source.group_id=nobody-here"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert other.returncode == 0
    assert f"{sum(observed.ends.values())}" in other.stdout.splitlines()[-1]  # all lag
    waited = subprocess.run(
        [sys.executable, "-m", "worker", "lag", "--config", str(observed.config), "--wait", "1",
         "--set", "source.group_id=nobody-here"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert waited.returncode == 1
    lag = sum(observed.ends.values())
    assert waited.stderr.strip() == f"error: group nobody-here still lags {lag} after 1.0 s"
    caught_up = subprocess.run(
        [sys.executable, "-m", "worker", "lag", "--config", str(observed.config), "--wait", "30"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert caught_up.returncode == 0, caught_up.stderr
