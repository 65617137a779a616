"""Adversary: SIGTERM while a token fetch is in flight, on the broker's OAUTHBEARER
listener. librdkafka calls its `oauth_cb` on its background thread, which `close()`
joins; an async hook's call waits there for the event loop that is shutting down: the
worker must still end within its budget, with `shutdown_complete`, and lose nothing.
The faults are at the boundary: a token hook that stops answering, a real SIGTERM."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    LONG,
    WorkerProcess,
    a_second_run_finishes,
    committed_offsets,
    create_topic,
    end_offsets,
    eventually,
    handled_by,
    produce_keyed,
    read_handled,
    unique,
    write_config,
)
from tests.integration.test_kafka_tls import TlsBroker, tls_kafka

__all__ = ["tls_kafka"]
pytestmark = pytest.mark.kafka
PARTITIONS = 2
SHUTDOWN_S = 3


def stalled_calls(where: Path) -> int:
    return len(list(where.glob("hanging.*")))


@pytest.mark.parametrize("when", ["mid_run", "at_start"])
@pytest.mark.parametrize("hook", ["stalls", pytest.param("stalls_async", marks=LONG)])
def test_sigterm_while_a_token_fetch_hangs_exits_0_within_the_budget_and_loses_nothing(
    tls_kafka: TlsBroker, kafka_client: str, tmp_path: Path, hook: str, when: str
):
    bootstrap = tls_kafka.broker.bootstrap
    topic, group = unique("oauth-term"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    asyncio.run(produce_keyed(bootstrap, topic, 200))
    spec = f"tests.integration.oauth_stuck_tokens:{hook}"
    source = {"bootstrap_servers": [tls_kafka.address("OAUTH")], "security_protocol":
              "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
              "sasl_oauth_token_provider": spec}  # fmt: skip
    runtime = {"shutdown_timeout_s": SHUTDOWN_S, "log_format": "text"}
    config = write_config(tmp_path / "w.toml", "unused", topic, group, source=source,
                          runtime=runtime)  # fmt: skip
    env = {"OAUTH_DIR": str(tmp_path), "RECORD_SLEEP_S": "0.2"}
    if when == "at_start":
        env["OAUTH_HANG_AFTER"] = "1"  # the preflight's token comes; the next call hangs
    worker = WorkerProcess(config, tmp_path, extra_env=env)
    try:
        if when == "mid_run":
            eventually(lambda: sum(map(len, read_handled(tmp_path, worker.pid).values())) >= 50,
                       what="first batches handled")  # fmt: skip
            (tmp_path / "hang").touch()
        # A token call is in flight: mid-run on librdkafka its oauth_cb's (it asks again at
        # 80% of a 3 s token's life); else any (at the start: the first token, asked on
        # the loop before Consumer()).
        waiting = tmp_path / "librdkafka_waiting"
        if kafka_client == "librdkafka" and when == "mid_run":
            eventually(waiting.exists, timeout_s=30, what="librdkafka's oauth_cb waiting")
        else:
            eventually(lambda: stalled_calls(tmp_path) > 0, timeout_s=30, what="a hung call")
        started = time.monotonic()
        worker.terminate()
        code = worker.wait(timeout_s=SHUTDOWN_S + 20)
        took = time.monotonic() - started
        log = worker.log()
    finally:
        worker.stop()
    hung = stalled_calls(tmp_path)
    assert code == 0, f"{hung}\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    assert "event=shutdown_deadline_exceeded" not in log, f"{hung}\n{log[-3000:]}"
    assert "event=shutdown_complete" in log, log[-3000:]
    assert took <= SHUTDOWN_S + 1.5, f"took {took:.1f}s; {hung}"

    # A second worker on the plain listener, same group: every record handled at least once.
    plain = write_config(tmp_path / "p.toml", bootstrap, topic, group)
    a_second_run_finishes(plain, tmp_path, bootstrap, group, topic, worker, PARTITIONS)


@pytest.mark.parametrize("hook", ["exits", pytest.param("exits_async", marks=LONG)])
def test_a_hook_raising_systemexit_mid_run_is_a_failed_token_and_the_worker_goes_on(
    tls_kafka: TlsBroker, kafka_client: str, tmp_path: Path, hook: str
):
    """The hook's library calls sys.exit() while the test holds its token service down:
    the worker ended (exit 3, a traceback; on librdkafka raised again by consume()). Now
    each is a failed token: the service back, the worker handles what came meanwhile,
    stops on SIGTERM with exit 0, and every record is handled and committed."""
    bootstrap = tls_kafka.broker.bootstrap
    topic, group = unique("oauth-exit"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    asyncio.run(produce_keyed(bootstrap, topic, 100))
    spec = f"tests.integration.oauth_stuck_tokens:{hook}"
    source = {"bootstrap_servers": [tls_kafka.address("OAUTH")], "security_protocol":
              "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
              "sasl_oauth_token_provider": spec}  # fmt: skip
    config = write_config(tmp_path / "w.toml", "unused", topic, group, source=source)
    worker = WorkerProcess(config, tmp_path, extra_env={"OAUTH_DIR": str(tmp_path)})
    try:
        eventually(lambda: sum(map(len, read_handled(tmp_path, worker.pid).values())) >= 100,
                   what="first records handled")  # fmt: skip
        (tmp_path / "hang").touch()
        if kafka_client == "librdkafka":  # librdkafka's own oauth_cb was refused
            worker.wait_for_log("event=oauth_token_failed client=librdkafka", timeout_s=30)
        else:
            eventually(lambda: stalled_calls(tmp_path) > 0, timeout_s=30, what="a refused call")
        (tmp_path / "hang").unlink()
        asyncio.run(produce_keyed(bootstrap, topic, 50))
        ends = asyncio.run(end_offsets(bootstrap, topic, PARTITIONS))
        eventually(lambda: asyncio.run(committed_offsets(bootstrap, group, topic)) == ends,
                   timeout_s=90, what="committed to the end")  # fmt: skip
        worker.terminate()
        code = worker.wait(timeout_s=30)
        log = worker.log()
    finally:
        worker.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "event=shutdown_complete" in log
    assert handled_by(tmp_path, worker) == {p: set(range(end)) for p, end in ends.items()}
