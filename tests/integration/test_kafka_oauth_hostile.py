"""Token hooks that fail in every way a user's code can, against the broker's real
OAUTHBEARER listener: each is one `error:` line within 10 s, naming the provider, and
the process exits (a plain hook stuck in its thread must not keep the worker alive)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    HERE,
    ROOT,
    create_topic,
    on_clients,
    unique,
    write_config,
)
from tests.integration.test_kafka_tls import ANSWER_WITHIN_S, TlsBroker, tls_kafka

__all__ = ["tls_kafka"]
pytestmark = pytest.mark.kafka


def run_for_at_most(config: Path, limit_s: float) -> tuple[int | None, str, str, float]:
    """Exit code (None: still running at `limit_s`, then killed), stderr, stdout, seconds."""
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE, env=env,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, err, out, time.monotonic() - started
    return proc.returncode, err, out, time.monotonic() - started


HOOKS = ["raises", "garbage", "hangs", "never"]


@on_clients("hook", HOOKS, librdkafka=[*HOOKS, "works_once", "works_once_async"])
def test_a_failing_token_hook_is_one_line_within_10_s_and_the_worker_exits(
    tls_kafka: TlsBroker, tmp_path: Path, kafka_client: str, hook: str
):
    """`works_once`: the preflight's token comes, the next (librdkafka's first, for its
    own consumer) does not: the line names the hook as well, at once (not after the 10 s
    that confluent-kafka's `Consumer()` waits for a token)."""
    spec = f"tests.integration.oauth_tokens:{hook}"
    source = {"bootstrap_servers": [tls_kafka.address("OAUTH")], "security_protocol":
              "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
              "sasl_oauth_token_provider": spec}  # fmt: skip
    topic = "any"
    if hook.startswith("works_once"):  # past the preflight, which needs the topic
        topic = unique("oauth")
        asyncio.run(create_topic(tls_kafka.broker.bootstrap, topic, 1))
    config = write_config(tmp_path / "w.toml", "unused", topic, unique("g"), source=source)
    code, err, out, took = run_for_at_most(config, 3 * ANSWER_WITHIN_S)
    assert code == 1, f"exit {code} after {took:.1f} s: {(err + out)[-2000:]}"
    assert "Traceback" not in err + out
    (line,) = err.strip().splitlines()
    assert line.startswith("error:") and spec in line, line
    assert took < ANSWER_WITHIN_S, f"{took:.1f} s: {line}"
