"""The start's broker wait against hostile networks: one WARNING line per attempt that says why.

Faults at the boundary only: a port that accepts and closes at once (a proxy whose
backend is down), one that accepts and never answers, and a real broker behind a
proxy that delays every chunk (a broker a few round trips of 60 ms away, as over a
WAN with TLS). The worker runs as a child process, as users run it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import HERE, create_topic, unique, write_config

#: The delay the slow proxy adds to every chunk, each way.
LATENCY_S = 0.06


def _listener(on_accept) -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    kept: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                on_accept(conn, kept)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in kept:
            conn.close()


@pytest.fixture
def closes_at_once() -> Iterator[int]:
    yield from _listener(lambda conn, kept: conn.close())


@pytest.fixture
def never_answers() -> Iterator[int]:
    yield from _listener(lambda conn, kept: kept.append(conn))


@pytest.fixture
def slow_proxy(kafka: str) -> Iterator[int]:
    """Forwards to the session's broker, each chunk LATENCY_S late."""
    host, port = kafka.rsplit(":", 1)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                time.sleep(LATENCY_S)  # the fault: a slow network, not a wait for anything
                dst.sendall(chunk)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def accept(conn: socket.socket, kept: list[socket.socket]) -> None:
        upstream = socket.create_connection((host, int(port)))
        kept += [conn, upstream]
        threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()

    yield from _listener(accept)


def _config(tmp_path: Path, servers: str, timeout_s: float) -> Path:
    return write_config(tmp_path / "w.toml", servers, "t", unique("g"),
                        source={"connect_timeout_s": timeout_s},
                        handler={"target": "json:dumps"})  # fmt: skip


def _worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], capture_output=True,
                          text=True, cwd=HERE, timeout=60)  # fmt: skip


def _waited(done: subprocess.CompletedProcess) -> tuple[list[str], str]:
    """The broker_wait lines and the one error line of a worker that gave up."""
    assert done.returncode == 1, done.stderr + done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    (error,) = done.stderr.strip().splitlines()
    waits = [line for line in done.stdout.splitlines() if "event=broker_wait" in line]
    attempts = int(re.search(r"after (\d+) attempts", error).group(1))
    assert len(waits) == attempts - 1, done.stdout  # one line per failed attempt but the last
    return waits, error


def test_a_port_that_closes_at_once_is_one_warning_per_attempt_saying_so(closes_at_once, tmp_path):
    server = f"127.0.0.1:{closes_at_once}"
    done = _worker("run", "--config", str(_config(tmp_path, server, 1.5)))
    waits, error = _waited(done)
    assert waits and "level=ERROR" not in done.stdout, done.stdout  # the attempt is retried
    for line in [*waits, error]:
        assert f"{server}: KafkaConnectionError: Connection at {server} closed" in line, line


def test_a_port_that_never_answers_says_what_timed_out(never_answers, tmp_path):
    done = _worker("run", "--config",
                   str(_config(tmp_path, f"127.0.0.1:{never_answers}", 1)))  # fmt: skip
    _, error = _waited(done)
    assert "TimeoutError: no answer within 1 s" in error, error


@pytest.mark.kafka
def test_connect_timeout_0_is_one_whole_try_not_a_tenth_of_a_second(kafka, slow_proxy, tmp_path):
    """0 is documented as one try: a broker a few slow round trips away must pass it."""
    import asyncio

    topic = unique("telemetry")
    asyncio.run(create_topic(kafka, topic, 1))
    config = write_config(tmp_path / "w.toml", f"127.0.0.1:{slow_proxy}", topic, unique("g"),
                          source={"connect_timeout_s": 0},
                          handler={"target": "json:dumps"})  # fmt: skip
    done = _worker("check-config", "--connect", "--config", str(config))
    assert done.returncode == 0, done.stderr
