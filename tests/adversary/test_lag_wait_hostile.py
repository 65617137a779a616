"""`worker lag --wait SECONDS` given durations no clock passes, against the real broker.

`--wait nan` made the deadline NaN: no time is past it, so a group that lagged was
asked every second for ever. Such a duration, and a negative one, is a command-line
error (exit 2) before the broker is asked.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.integration.kafka_helpers import HERE, create_topic, produce_keyed, unique, write_config

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("wait", ["nan", "-5"])
def test_a_wait_no_clock_passes_is_refused_not_waited_for_ever(kafka, tmp_path, wait):
    topic = unique("telemetry")
    asyncio.run(create_topic(kafka, topic, 1))
    asyncio.run(produce_keyed(kafka, topic, 3))  # the group has committed none: it lags
    config = write_config(tmp_path / "w.toml", kafka, topic, unique("g"))
    done = subprocess.run(
        [sys.executable, "-m", "worker", "lag", "--config", str(config), f"--wait={wait}"],
        capture_output=True, text=True, cwd=HERE, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "argument --wait" in done.stderr and done.stdout == ""
