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


SWALLOWING_IMPORT = """
import pathlib, time
pathlib.Path(__file__).with_name("importing").touch()
try:  # a bare except in a loading step (common in older libraries) catches the stop too
    time.sleep(60)
except:  # noqa: E722
    pass

def handle(records):
    return None
"""


def test_a_signal_a_handler_module_swallowed_still_ends_the_worker_with_one_line(
    tmp_path: Path,
):
    """The signal's exception is caught by the module's own `except:`: its import ends
    normally. Before the fix the worker then started as if no signal had come (here it
    waited for the unreachable broker; on a cluster it ran until the SIGKILL)."""
    (tmp_path / "slow_handler.py").write_text(SWALLOWING_IMPORT)
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
        while not (tmp_path / "importing").exists():
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the handler's import never began"
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        try:
            out, err = worker.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, err = worker.communicate()
            pytest.fail(f"the swallowed SIGTERM was forgotten: the worker ran on\n{out[-2000:]}")
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert "Traceback" not in out + err
    assert "event=broker_wait" not in out + err, "it started after the signal"
    assert err.strip().splitlines() == [
        "stopped: SIGTERM before the worker started; nothing was read"
    ]


def test_a_swallowed_signal_stops_the_loop_handlers_from_taking_over():
    """The last check is `Signals.install`: a signal swallowed after the handler's import
    (in `Worker(config)`, in the loop before the install) ends the run there, not later."""
    import asyncio
    import contextlib

    from worker.runtime.signals import Signals, StoppedBeforeStart, stop_while_loading

    restore = stop_while_loading()
    try:
        with contextlib.suppress(BaseException):  # as a loading step's bare `except:`
            signal.raise_signal(signal.SIGTERM)

        async def main() -> None:
            Signals(lambda: None).install()

        with pytest.raises(StoppedBeforeStart, match="SIGTERM"):
            asyncio.run(main())
    finally:
        restore()
        stop_while_loading()()  # forget the signal: later tests start afresh
