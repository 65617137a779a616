"""Kinesis and DynamoDB emulators on loopback, started and stopped by PID.

kinesis-local (npm) for Kinesis in the tests, kinesalite (npm) for the benchmark
(fast to write to), and moto's server (PyPI) for DynamoDB, as
reference/kinesis-emulators.md decided. `make test` / `make bench` install them.
Both npm servers bind every interface; `loopback.js` pins them to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.kafka_broker import free_port, stop_pid

HERE = Path(__file__).resolve().parent
NPM_DIR = (
    Path(os.environ.get("STREAMWORKER_CACHE", Path.home() / ".cache" / "streamworker")) / "npm"
)
KINESIS_LOCAL = NPM_DIR / "node_modules" / "kinesis-local"
KINESALITE = NPM_DIR / "node_modules" / "kinesalite"


@dataclass
class Emulator:
    url: str
    pid: int

    def stop(self) -> None:
        stop_pid(self.pid)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port}")


def start_dynamodb() -> Emulator:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_port(port, proc, "moto_server")
    return Emulator(f"http://127.0.0.1:{port}", proc.pid)


def start_kinesis() -> Emulator:
    assert (KINESIS_LOCAL / "main.js").exists(), "kinesis-local is not installed: run `make test`"
    port, tls = free_port(), free_port()
    env = {
        **os.environ,
        "KINESIS_MOCK_PLAIN_PORT": str(port),
        "KINESIS_MOCK_TLS_PORT": str(tls),
        "KINESIS_MOCK_CERT_PATH": str(KINESIS_LOCAL / "server.json"),
        "LOG_LEVEL": "WARN",
    }
    proc = subprocess.Popen(
        ["node", "-r", str(HERE / "loopback.js"), str(KINESIS_LOCAL / "main.js")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_port(port, proc, "kinesis-local")
    return Emulator(f"http://127.0.0.1:{port}", proc.pid)


def start_kinesalite() -> Emulator:
    assert (KINESALITE / "cli.js").exists(), "kinesalite is not installed: run `make bench`"
    port = free_port()
    proc = subprocess.Popen(
        ["node", "-r", str(HERE / "loopback.js"), str(KINESALITE / "cli.js"), "--port", str(port),
         "--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0",
         "--shardLimit", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_port(port, proc, "kinesalite")
    return Emulator(f"http://127.0.0.1:{port}", proc.pid)
