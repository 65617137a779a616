"""CLI commands other than `run` fail with one `error:` line too, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_invoke_with_an_event_file_that_is_not_there_is_one_line_exit_2(tmp_path: Path):
    config = tmp_path / "w.toml"
    config.write_text('[source]\ntopics = ["t"]\n[handler]\ntarget = "json:dumps"\n')
    done = subprocess.run(
        [sys.executable, "-m", "worker", "invoke", "--config", str(config),
         "--event", str(tmp_path / "missing.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: --event ") and "missing.json" in line


def test_event_with_config_refuses_a_kind_or_topic_of_its_own(tmp_path: Path):
    config = tmp_path / "w.toml"
    config.write_text('[source]\ntopics = ["t"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "worker", "event", "kinesis", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: worker event --config")
