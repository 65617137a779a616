"""A worker started before its broker waits for it, and a SIGTERM ends that wait at once.

In compose or Kubernetes the worker's container can start before Kafka's: it must
not crash-loop, and an orchestrator stopping it meanwhile must not wait out the
connect timeout. The broker is "not up" because nothing listens on its port.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

KAFKA_ONLY_KEYS = {"bootstrap_servers", "topics", "connect_timeout_s"}
KINESIS_ONLY_KEYS = {"stream_name", "lease_table", "region"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(
        f'[source]\n{source}\n[handler]\ntarget = "json:dumps"\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n[runtime]\nlog_format = "text"\n'
    )
    return path


def test_sigterm_while_waiting_for_the_broker_exits_0_within_a_second(tmp_path: Path):
    config = _config(
        tmp_path,
        f'bootstrap_servers = ["127.0.0.1:{_free_port()}"]\ntopics = ["t"]\n'
        "connect_timeout_s = 120",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the first attempt failed: the worker is in the wait
            seen.append(line)
            if "event=broker_wait" in line:
                break
        assert any("event=broker_wait" in line for line in seen), seen
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert took < 1.0, f"exited {took:.2f} s after SIGTERM"
    assert "Traceback" not in out + err and "error:" not in err
    assert "event=stop_requested signal=SIGTERM" in out


def test_check_config_prints_only_the_chosen_source_kinds_keys(tmp_path: Path):
    kinds = [
        ('topics = ["t"]', KAFKA_ONLY_KEYS, KINESIS_ONLY_KEYS),
        ('kind = "kinesis"\nstream_name = "s"', KINESIS_ONLY_KEYS, KAFKA_ONLY_KEYS),
    ]
    for source, own, other in kinds:
        done = subprocess.run(
            [sys.executable, "-m", "worker", "check-config",
             "--config", str(_config(tmp_path, source))],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        keys = set(json.loads(done.stdout)["source"])
        assert keys >= own and not other & keys


def test_a_sample_event_with_config_names_the_configured_topic_and_servers(tmp_path: Path):
    config = _config(tmp_path, 'bootstrap_servers = ["kafka-1:9092"]\ntopics = ["iot-raw"]')
    done = subprocess.run(
        [sys.executable, "-m", "worker", "event", "--config", str(config), "--key", "d1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    assert event["bootstrapServers"] == "kafka-1:9092"
    (record,) = event["records"]["iot-raw-0"]
    assert record["topic"] == "iot-raw"


def test_a_sample_kinesis_event_with_config_names_the_configured_stream(tmp_path: Path):
    config = _config(tmp_path, 'kind = "kinesis"\nstream_name = "telemetry-eu"')
    done = subprocess.run(
        [sys.executable, "-m", "worker", "event", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)["Records"]
    assert record["eventSource"] == "aws:kinesis"
    assert record["eventSourceARN"].endswith(":stream/telemetry-eu")


def test_check_config_connect_to_no_broker_is_one_line_exit_1(tmp_path: Path):
    config = _config(
        tmp_path,
        f'bootstrap_servers = ["127.0.0.1:{_free_port()}"]\ntopics = ["t"]\nconnect_timeout_s = 0',
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker", "check-config", "--connect", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: kafka: cannot connect to 127.0.0.1:")
