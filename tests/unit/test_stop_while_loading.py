"""A SIGTERM or SIGINT while `worker run` is still loading ends it with one line, exit 0.

Aimed: the handler's module announces that its import has begun and then blocks (as one
loading a model for seconds does), and the signal is sent only then. Before the change
SIGTERM ended the process silently with -15 and SIGINT with a KeyboardInterrupt
traceback. No broker is needed: the handler is loaded before any client exists.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLOW_IMPORT = """
import pathlib, time
pathlib.Path(__file__).with_name("importing").touch()
time.sleep(60)

def handle(records):
    return None
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_handlers_import_ends_the_worker_with_one_line(
    tmp_path: Path, sig: signal.Signals
):
    (tmp_path / "slow_handler.py").write_text(SLOW_IMPORT)
    config = tmp_path / "w.toml"
    config.write_text(
        '[source]\nbootstrap_servers = ["127.0.0.1:1"]\ntopics = ["t"]\n'
        '[handler]\ntarget = "slow_handler:handle"\n'
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "importing").exists():  # the import has begun: aim there
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the handler's import never began"
            time.sleep(0.02)
        worker.send_signal(sig)
        out, err = worker.communicate(timeout=10)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [
        f"stopped: {sig.name} before the worker started; nothing was read"
    ]
