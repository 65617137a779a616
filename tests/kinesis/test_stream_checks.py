"""`worker check-config --connect` on Kinesis and DynamoDB sources (moto's server): exit 0 when
the stream and the lease table answer, one `error:` line and exit 1 when they do not."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from scripts.emulators import Emulator
from tests.kinesis.dynamodb_tables import make_table

ROOT = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, source: str) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "w.toml"
    path.write_text(f'[source]\n{source}region = "us-east-1"\n')
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", "check-config", "--connect", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    return result, time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dynamodb_table_with_a_stream_passes_and_a_missing_one_is_one_line(
    dynamodb: Emulator, tmp_path: Path
):
    table = asyncio.run(make_table(dynamodb))
    ok, _ = check(tmp_path, f'kind = "dynamodb"\ntable_name = "{table}"\n'
                            f'endpoint_url = "{dynamodb.url}"\n')  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    missing, _ = check(tmp_path, f'kind = "dynamodb"\ntable_name = "nope"\n'
                                 f'endpoint_url = "{dynamodb.url}"\n')  # fmt: skip
    assert missing.returncode == 1 and missing.stdout == ""
    (line,) = missing.stderr.splitlines()
    assert line.startswith("error: dynamodb: table nope has no stream")


def test_a_missing_kinesis_stream_and_an_endpoint_nobody_answers_are_one_line_each(
    dynamodb: Emulator, tmp_path: Path
):
    # moto's server speaks Kinesis too: a stream that is not there.
    missing, _ = check(tmp_path, f'kind = "kinesis"\nstream_name = "nope"\n'
                                 f'endpoint_url = "{dynamodb.url}"\n')  # fmt: skip
    assert missing.returncode == 1, missing.stderr
    (line,) = missing.stderr.splitlines()
    assert line.startswith("error: kinesis: stream nope: ResourceNotFoundException")
    port = closed_port()
    down, took = check(tmp_path, f'kind = "dynamodb"\ntable_name = "devices"\n'
                                 f'endpoint_url = "http://127.0.0.1:{port}"\n')  # fmt: skip
    assert down.returncode == 1 and took < 15
    (line,) = down.stderr.splitlines()
    assert line.startswith("error: dynamodb: stream devices:") and f"127.0.0.1:{port}" in line
    short, _ = check(tmp_path, f'kind = "dynamodb"\ntable_name = "t"\n'
                               f'endpoint_url = "{dynamodb.url}"\n')  # fmt: skip
    (line,) = short.stderr.splitlines()  # not a table name DynamoDB allows: a config error
    assert short.returncode == 2 and "source.table_name = 't'" in line
