"""The README's "Your own stream" walk, run as written, in one bash session.

It is the new user's first hour in one script: a broker on a known port, topics,
readings with poison records among them, a handler of one's own, a finite retry
policy with a Kafka on-failure destination, `worker dlq` and `worker redrive`. If a
command in it changes (an option renamed, an output reworded), this fails rather
than the README going stale. It needs ports 9092 and 9108 free, as the
walk does.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BROKER_DIR = Path("/tmp/my-kafka")


def walkthrough() -> str:
    """The shell blocks between the walkthrough markers, in order."""
    text = README.read_text()
    section = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->")[0]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


def _taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def script() -> Iterator[str]:
    text = walkthrough()
    taken = [port for port in (9092, 9108) if _taken(port)]
    assert not taken, f"the walk uses 127.0.0.1 ports {taken} as written; they are in use"
    yield text
    subprocess.run(
        [sys.executable, "scripts/kafka_broker.py", "stop", str(BROKER_DIR)], cwd=ROOT, check=False
    )
    subprocess.run(["rm", "-rf", str(ROOT / "my-stream"), str(BROKER_DIR)], check=False)


def test_the_walkthrough_runs_as_written_and_dead_letters_exactly_the_poison_records(script):
    invalid = int(re.search(r"--invalid (\d+)", script).group(1))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    listed = re.findall(r"^\d{4}-\d\d-\d\dT\S+Z +readings-\d+@\d+ ", done.stdout, re.M)
    assert len(listed) == invalid, done.stdout[-3000:]
    assert re.search(rf"^moved {invalid} records from kafka://readings-dlq", done.stdout, re.M)
