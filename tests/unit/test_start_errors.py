"""Start-up failures are one `error:` line and exit 1: never a traceback, never exit 0 logged.

The first version printed a 36-line traceback for a metrics port in use, and for an
on-failure destination it could not reach it logged `shutdown_complete exit_code=0`
and then a 30-line traceback. Each case runs `worker run` as a child process; the
broker is "unreachable" because nothing listens on its port (no broker is mocked).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _run(tmp_path: Path, metrics_port: int, errors: str = "") -> subprocess.CompletedProcess:
    config = tmp_path / "w.toml"
    config.write_text(
        f'[source]\nbootstrap_servers = ["127.0.0.1:{_free_port()}"]\ntopics = ["t"]\n'
        f'group_id = "g"\nconnect_timeout_s = 1\n[handler]\ntarget = "json:dumps"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n{errors}'
    )
    return subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "exit_code=0" not in done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_a_metrics_port_in_use_is_one_line_naming_it(tmp_path: Path, busy_port: int):
    line = _one_error_line(_run(tmp_path, busy_port))
    assert f"metrics.listen 127.0.0.1:{busy_port}" in line


def test_an_unreachable_dead_letter_broker_is_one_line_naming_it(tmp_path: Path):
    done = _run(tmp_path, 0, '[errors]\non_failure = "kafka://dlq"\n')
    line = _one_error_line(done)
    assert "errors.on_failure kafka://dlq: cannot connect to 127.0.0.1:" in line
    assert "connect_timeout_s = 1" in line
    assert "event=broker_wait for='errors.on_failure kafka://dlq' attempt=1 " in done.stdout


def test_an_unreachable_source_broker_is_one_line_naming_it(tmp_path: Path):
    done = _run(tmp_path, 0)
    line = _one_error_line(done)
    assert "kafka: cannot connect to 127.0.0.1:" in line and "connect_timeout_s = 1" in line
    attempts = done.stdout.count("event=broker_wait for='source' attempt=")
    assert attempts >= 2, done.stdout  # retried with backoff, one line per attempt


def test_output_cut_short_by_its_reader_is_not_a_traceback():
    """`worker event | head -1` (or `worker status | head`): the reader closes the pipe."""
    done = subprocess.run(
        # A value far over a pipe's buffer, so the write is still going when head leaves.
        f"{sys.executable} -m worker event kafka --value {'x' * 100_000} | head -c 1",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout == "{"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
