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


def test_a_token_service_down_mid_run_loses_nothing_and_the_worker_still_stops(
    tls_kafka: TlsBroker, kafka_client: str, monkeypatch: pytest.MonkeyPatch
):
    """The hook fails mid-run (the test holds its token service down) for longer than a
    token lives, so the clients' tokens expire and the broker ends their connections;
    then it answers again. Every record sent is handled (at least once: a member that
    lost the group meanwhile may read again from its last commit), the group commits to
    the end, and the worker stops when asked. The fault is at the boundary: the hook."""
    from aiokafka import AIOKafkaProducer

    from tests.integration import oauth_tokens
    from worker.runtime.worker import Worker
    from worker.sources.kafka.lag import group_lag

    topic, group = unique("oauth-down"), unique("g")
    cfg, plain = oauth_tokens.oauth_configs(
        tls_kafka.address("OAUTH"), tls_kafka.broker.bootstrap, topic, group, kafka_client,
        "tests.integration.oauth_tokens:flaky",
    )  # fmt: skip
    asked = oauth_tokens.watch_librdkafka(monkeypatch)
    seen: set[bytes] = set()

    async def handler(batch) -> None:
        seen.update(r.value for r in batch.records)

    def the_outage_was_felt() -> bool:
        """The source's own client was refused a token (librdkafka's oauth_cb; aiokafka's
        consumer asks the hook at a new connection), and longer than a token lives."""
        if kafka_client == "librdkafka" and not any(not ok for _, ok in asked):
            return False
        return oauth_tokens.outage["refused"] > 0

    async def run() -> None:
        await create_topic(tls_kafka.broker.bootstrap, topic, 2)
        producer = AIOKafkaProducer(bootstrap_servers=plain.bootstrap_servers, acks="all")
        await producer.start()
        worker = Worker(cfg, handler=handler)
        task = asyncio.create_task(worker.serve())
        sent = 0

        async def send(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                await producer.send(topic, b"%d" % sent, partition=sent % 2)
                sent += 1

        try:
            async with asyncio.timeout(90):
                await send(100)
                while len(seen) < sent:  # running, before the outage
                    assert not task.done(), "the worker ended"
                    await asyncio.sleep(0.1)
                oauth_tokens.outage.update(down=True, refused=0)
                down_since = time.monotonic()
                while not the_outage_was_felt() or (
                    time.monotonic() - down_since < 2 * oauth_tokens.LIFETIME_S
                ):
                    assert not task.done(), "the worker ended"
                    await send(10)
                    await asyncio.sleep(0.2)
                oauth_tokens.outage["down"] = False
                await send(100)
                await producer.flush()
                while sum(r.lag for r in await group_lag(plain)) or len(seen) < sent:
                    assert not task.done(), "the worker ended"
                    await asyncio.sleep(0.2)
        finally:
            oauth_tokens.outage["down"] = False
            await producer.stop()
            worker.request_exit()
            async with asyncio.timeout(60):  # stops, not hung on a client without a token
                assert await task == 0
        assert seen == {b"%d" % i for i in range(sent)}  # nothing lost

    asyncio.run(run())
