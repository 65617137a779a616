"""TLS on the real broker: one-way TLS, mutual TLS and SCRAM over TLS carry every Kafka client
of the worker (the source, the `kafka://` on-failure destination, `worker lag`, `worker
redrive`), and each way a TLS connection goes wrong is its own one line within 10 s.

One broker for the module, with a listener per case (`kafka_broker.start(tls=...)`), its
certificates made for this run in tmp (`scripts/tls_certs.py`). The faults are real
settings against real listeners: a CA that signed nothing, no client certificate on the
mTLS listener, a server certificate for another name, TLS to the plaintext port and
plaintext to a TLS port.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from scripts import kafka_broker, tls_certs
from tests.integration.kafka_helpers import (
    HERE,
    ROOT,
    WorkerProcess,
    on_clients,
    unique,
    write_config,
)
from worker.config import WorkerConfig
from worker.runtime.worker import Worker
from worker.sources.kafka.lag import group_lag
from worker.sources.kafka.security import client_kwargs

pytestmark = pytest.mark.kafka
#: The issue's bound for each failure's line.
ANSWER_WITHIN_S = 10.0
SCRAM_SECRET = kafka_broker.SASL_USERS["alice"]
RECORDS = 120
#: Values the handler refuses: they go to the on-failure topic.
REFUSED = {b"7", b"77"}


@dataclass(frozen=True)
class TlsBroker:
    broker: kafka_broker.Broker
    certs: tls_certs.TlsFiles
    key_password_file: Path

    def address(self, listener: str) -> str:
        return self.broker.bootstrap if listener == "PLAINTEXT" else self.broker.address(listener)


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    root = tmp_path_factory.mktemp("tls-kafka")
    certs = tls_certs.make(root / "certs")
    password_file = root / "certs" / "client.key.password"
    password_file.write_text(tls_certs.CLIENT_KEY_PASSWORD + "\n")
    broker = kafka_broker.start(root / "broker", tls=certs)
    try:
        yield TlsBroker(broker, certs, password_file)
    finally:
        broker.stop()


def settings(tls: TlsBroker, case: str) -> dict[str, object]:
    """`[source]` security settings of each case; the mTLS key's pass phrase from a file."""
    ca = {"ssl_cafile": str(tls.certs.ca)}
    client = {
        "ssl_certfile": str(tls.certs.client_cert),
        "ssl_keyfile": str(tls.certs.client_key),
        "ssl_key_password_file": str(tls.key_password_file),
    }
    scram = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice"}
    listener, extra = {
        "SSL": ("SSL", {"security_protocol": "SSL", **ca}),
        "MTLS": ("MTLS", {"security_protocol": "SSL", **ca, **client}),
        "SASL_SSL": ("SASL_SSL", {"security_protocol": "SASL_SSL", **ca, **scram,
                                  "sasl_plain_password": SCRAM_SECRET}),
        "wrong CA": ("SSL", {"security_protocol": "SSL", "ssl_cafile": str(tls.certs.other_ca)}),
        "no client certificate": ("MTLS", {"security_protocol": "SSL", **ca}),
        "untrusted client certificate": ("MTLS", {"security_protocol": "SSL", **ca,
                                                  "ssl_certfile": str(tls.certs.stranger)}),
        "hostname mismatch": ("WRONGHOST", {"security_protocol": "SSL", **ca}),
        "TLS to a plaintext port": ("PLAINTEXT", {"security_protocol": "SSL", **ca}),
        "plaintext to a TLS port": ("SSL", {"security_protocol": "PLAINTEXT"}),
        "SASL_SSL wrong password": ("SASL_SSL", {"security_protocol": "SASL_SSL", **ca, **scram,
                                                 "sasl_plain_password": "not-it-6b1e"}),
    }[case]  # fmt: skip
    return {"bootstrap_servers": [tls.address(listener)], **extra}


async def prepare(connection: dict, topic: str, dlq: str) -> None:
    admin = AIOKafkaAdminClient(**connection)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1), NewTopic(dlq, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**connection, acks="all")
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(topic, b"%d" % i, partition=i % 2)
    finally:
        await producer.stop()


async def read_all(connection: dict, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, **connection, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=500)
                values += [m.value for records in batch.values() for m in records]
    finally:
        await consumer.stop()
    return values


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True, text=True, cwd=HERE, env=env, timeout=60,
    )  # fmt: skip
    return done, time.monotonic() - started


@on_clients("case", ["SSL", "MTLS", "SASL_SSL"], librdkafka=["MTLS"])
def test_every_kafka_client_of_the_worker_works_over_tls(
    tls_kafka: TlsBroker, kafka_client: str, case: str, tmp_path: Path
):
    """The source handles and commits every record, the refused ones reach the kafka://
    destination, `worker lag` reads lag 0 and `worker redrive` moves them back: all on
    the TLS listener."""
    topic, dlq, group = unique("tls"), unique("tls-dlq"), unique("g")
    source = {**settings(tls_kafka, case), "topics": [topic], "group_id": group}
    cfg = WorkerConfig.model_validate(  # the source on `kafka_client`; the rest on aiokafka
        {
            "source": {**source, "client": kafka_client},
            "batching": {"maximum_batching_window_ms": 10},
            "errors": {"maximum_retry_attempts": 0, "on_failure": f"kafka://{dlq}",
                       "retry_backoff_ms": [5, 20]},
            "metrics": {"enabled": False},
        }
    )  # fmt: skip
    connection = client_kwargs(cfg.source)
    seen: list[bytes] = []

    async def handler(batch) -> None:
        seen.extend(r.value for r in batch.records)
        if REFUSED & {r.value for r in batch.records}:
            raise ValueError("refused")

    async def run() -> None:
        await prepare(connection, topic, dlq)
        worker = Worker(cfg, handler=handler)
        task = asyncio.create_task(worker.serve())
        try:
            async with asyncio.timeout(60):
                while sum(r.lag for r in await group_lag(cfg.source)):
                    assert not task.done(), "the worker ended"
                    await asyncio.sleep(0.1)
        finally:
            worker.request_exit()
            assert await task == 0

    asyncio.run(run())
    assert set(seen) == {b"%d" % i for i in range(RECORDS)}
    assert sorted(asyncio.run(read_all(connection, dlq, len(REFUSED)))) == sorted(REFUSED)

    config = write_config(tmp_path / "w.toml", "unused", topic, group, source=source)
    lag, _ = cli("lag", "--config", str(config))
    assert lag.returncode == 0, lag.stderr
    assert lag.stdout.splitlines()[-1].split() == ["total", "0"]
    moved, _ = cli("redrive", "--from", f"kafka://{dlq}", "--to", f"kafka://{topic}",
                   "--config", str(config))  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert f"moved {len(REFUSED)} records from kafka://{dlq}" in moved.stdout
    back = asyncio.run(read_all(connection, topic, RECORDS + len(REFUSED)))
    assert back.count(b"7") == 2 and back.count(b"77") == 2  # the original and the redriven
    for output in (lag.stdout + lag.stderr, moved.stdout + moved.stderr):
        assert SCRAM_SECRET not in output and tls_certs.CLIENT_KEY_PASSWORD not in output


#: case -> what its one line must say.
FAILURES = {
    "wrong CA": "certificate verification failed",
    "no client certificate": "requires a client certificate",
    "untrusted client certificate": "refused the client certificate",
    "hostname mismatch": "is not for '127.0.0.1'",
    "TLS to a plaintext port": "speaks plaintext Kafka, not TLS",
    "plaintext to a TLS port": "speaks TLS, but source.security_protocol = 'PLAINTEXT'",
    "SASL_SSL wrong password": "authentication failed for user 'alice'",
}
#: The setting each line names, where one is to blame.
NAMES = {
    "wrong CA": "source.ssl_cafile",
    "no client certificate": "source.ssl_certfile",
    "untrusted client certificate": "source.ssl_certfile",
    "hostname mismatch": "source.ssl_check_hostname",
    "TLS to a plaintext port": "source.security_protocol",
    "plaintext to a TLS port": "source.security_protocol",
    "SASL_SSL wrong password": "source.sasl_plain_password",
}
MEASURED: dict[str, float] = {}


@pytest.mark.parametrize("case", list(FAILURES))
def test_each_tls_failure_is_its_own_line_within_10_s(
    tls_kafka: TlsBroker, case: str, tmp_path: Path
):
    """`worker run`: one `error:` line saying why, exit 1, no traceback, no exit_code=0;
    `worker lag` and `worker redrive` say the same reason in their one line."""
    source = {**settings(tls_kafka, case), "connect_timeout_s": 30}
    config = write_config(tmp_path / "w.toml", "unused", "any-topic", unique("g"), source=source)
    with_dlq = write_config(tmp_path / "dlq.toml", "unused", "any-topic", unique("g"),
                            source=source, errors={"on_failure": "kafka://any-dlq"})  # fmt: skip
    # The source's check; once, the on-failure destination's (which comes first at a start).
    runs = [(config, "error: kafka: ")]
    if case == "wrong CA":
        runs.append((with_dlq, "error: errors.on_failure "))
    for path, prefix in runs:
        done, took = cli("run", "--config", str(path))
        MEASURED[case] = max(took, MEASURED.get(case, 0))
        assert done.returncode == 1, done.stderr + done.stdout[-2000:]
        assert "Traceback" not in done.stderr + done.stdout
        assert "exit_code=0" not in done.stdout
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(prefix) and FAILURES[case] in line, line
        assert NAMES[case] in line, line
        assert took < ANSWER_WITHIN_S, f"{case}: {took:.1f} s"
    for args in (["lag"], ["redrive", "--from", "kafka://a", "--to", "kafka://b"]):
        other, took = cli(*args, "--config", str(config))
        assert other.returncode == 1, other.stderr
        (line,) = other.stderr.strip().splitlines()
        assert FAILURES[case] in line and "Traceback" not in other.stderr, line
        assert took < ANSWER_WITHIN_S
    if case == "hostname mismatch":  # the same listener, the check turned off: it connects
        off = write_config(tmp_path / "off.toml", "unused", "any-topic", unique("g"),
                           source={**source, "ssl_check_hostname": False})  # fmt: skip
        checked, _ = cli("check-config", "--connect", "--config", str(off))
        assert "source.topics: any-topic (not found)" in checked.stderr, checked.stderr
    print(f"{case}: after {MEASURED[case]:.2f} s: {done.stderr.strip()}")


def test_no_secret_shows_in_the_log_or_any_cli_output_of_a_run(tls_kafka: TlsBroker, tmp_path):
    """SCRAM over TLS with an encrypted client key, both secrets from their `*_file`
    twins: the worker's whole DEBUG log (records handled, one dead-lettered) and every
    command's output (check-config, --connect, lag, dlq, redrive, status) hold neither."""
    topic, dlq, group = unique("secret"), unique("secret-dlq"), unique("g")
    (tmp_path / "sasl").write_text(SCRAM_SECRET + "\n")
    source = {
        **{k: v for k, v in settings(tls_kafka, "SASL_SSL").items() if k != "sasl_plain_password"},
        "sasl_plain_password_file": str(tmp_path / "sasl"),
        "ssl_certfile": str(tls_kafka.certs.client_cert),
        "ssl_keyfile": str(tls_kafka.certs.client_key),
        "ssl_key_password_file": str(tls_kafka.key_password_file),
        "topics": [topic],
        "group_id": group,
    }
    config = write_config(
        tmp_path / "w.toml", "unused", topic, group, source=source,
        errors={"on_failure": f"kafka://{dlq}", "maximum_retry_attempts": 0,
                "retry_backoff_ms": [5, 20]},
        runtime={"log_level": "DEBUG", "log_format": "json"},
    )  # fmt: skip
    connection = client_kwargs(WorkerConfig.model_validate({"source": source}).source)
    asyncio.run(prepare(connection, topic, dlq))
    outputs = [cli("check-config", "--config", str(config))[0],
               cli("check-config", "--connect", "--config", str(config))[0]]  # fmt: skip
    assert all(o.returncode == 0 for o in outputs), outputs[-1].stderr
    assert '"ssl_key_password": "**********"' in outputs[0].stdout
    worker = WorkerProcess(config, tmp_path, {"RECORD_POISON": "1:3"})  # the record b"7"
    try:
        port = worker.metrics_port
        done, _ = cli("lag", "--wait", "30", "--config", str(config))
        outputs.append(done)
        assert done.returncode == 0, done.stderr
        outputs.append(cli("status", "--url", f"http://127.0.0.1:{port}")[0])
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
    outputs.append(cli("dlq", "--from", f"kafka://{dlq}", "--config", str(config))[0])
    outputs.append(cli("redrive", "--from", f"kafka://{dlq}", "--to", f"kafka://{topic}",
                       "--config", str(config))[0])  # fmt: skip
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert "moved 1 records" in outputs[-1].stdout  # the poison record went through it all
    log = worker.log()
    assert '"event":"started"' in log and '"event":"shutdown_complete"' in log
    texts = [log, *(o.stdout + o.stderr for o in outputs)]
    for secret in (SCRAM_SECRET, tls_certs.CLIENT_KEY_PASSWORD):
        assert all(secret not in text for text in texts), secret


def test_oauthbearer_tokens_that_expire_mid_run_are_refreshed_and_nothing_is_lost(
    tls_kafka: TlsBroker, kafka_client: str, monkeypatch: pytest.MonkeyPatch
):
    """Tokens of 3 s against the broker's OAUTHBEARER listener, which ends a connection
    when its token expires (`connections.max.reauth.ms`): the worker brings new tokens
    to new connections (aiokafka), or librdkafka asks its `oauth_cb` again at 80% of a
    token's life and re-authenticates, and either way every record is handled once and
    committed to the end."""
    from tests.integration import oauth_tokens

    topic, group = unique("oauth"), unique("g")
    hook = "tests.integration.oauth_tokens:short_lived"
    cfg, plain = oauth_tokens.oauth_configs(
        tls_kafka.address("OAUTH"), tls_kafka.broker.bootstrap, topic, group, kafka_client, hook
    )
    seen: list[bytes] = []

    async def handler(batch) -> None:
        seen.extend(r.value for r in batch.records)

    asked = oauth_tokens.watch_librdkafka(monkeypatch)  # librdkafka's own oauth_cb calls

    def refreshed_after_expiry() -> bool:
        if kafka_client == "librdkafka":
            return bool(asked) and asked[-1][0] > asked[0][0] + oauth_tokens.LIFETIME_S
        issued = oauth_tokens.issued
        return bool(issued) and issued[-1] > issued[0] + oauth_tokens.LIFETIME_S

    async def run() -> None:
        connection = client_kwargs(plain)  # the test's own clients: no tokens of the hook's
        admin = AIOKafkaAdminClient(**connection)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 2, 1)])
        await admin.close()
        producer = AIOKafkaProducer(**connection, acks="all")
        await producer.start()
        oauth_tokens.issued.clear()
        worker = Worker(cfg, handler=handler)
        task = asyncio.create_task(worker.serve())
        sent = 0
        try:
            async with asyncio.timeout(60):
                # Records keep coming until the worker brought a token to a connection after
                # its first tokens expired (and the broker ended their connections).
                while sent < 300 or not refreshed_after_expiry():
                    assert not task.done(), "the worker ended"
                    for _ in range(10):
                        await producer.send(topic, b"%d" % sent, partition=sent % 2)
                        sent += 1
                    await asyncio.sleep(0.1)
                await producer.flush()
                while sum(r.lag for r in await group_lag(plain)) or len(seen) < sent:
                    assert not task.done(), "the worker ended"
                    await asyncio.sleep(0.1)
        finally:
            await producer.stop()
            worker.request_exit()
            assert await task == 0
        assert sorted(seen, key=int) == [b"%d" % i for i in range(sent)]  # each once
        assert all(ok for _, ok in asked), asked  # every token librdkafka asked for came

    asyncio.run(run())


def test_an_expired_oauthbearer_token_is_one_line_naming_the_provider(
    tls_kafka: TlsBroker, kafka_client: str, tmp_path: Path
):
    source = {"bootstrap_servers": [tls_kafka.address("OAUTH")], "security_protocol":
              "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
              "sasl_oauth_token_provider": "tests.integration.oauth_tokens:expired"}  # fmt: skip
    config = write_config(tmp_path / "w.toml", "unused", "any", unique("g"), source=source)
    done, took = cli("run", "--config", str(config))
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert "refused the OAUTHBEARER token" in line and "oauth_tokens:expired" in line, line
    assert took < ANSWER_WITHIN_S
