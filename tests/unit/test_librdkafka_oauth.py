"""OAUTHBEARER on librdkafka without a broker: the config takes it, the properties carry
no password, the `oauth_cb` answers `(token, expires_at)` from the hook at each call
(sync on the calling thread's own loop, async on the worker's loop), every way a hook
fails is one bounded line naming the provider, and confluent-kafka's real `Consumer()`
takes the callback's answer as its token."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer

from worker.cli import main
from worker.sources.base import SourceStartError
from worker.sources.kafka import oauth
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.librdkafka_conf import consumer_conf
from worker.sources.kafka.librdkafka_oauth import (
    TokenCallback,
    start_failure,
    token_callback,
    with_tokens,
)
from worker.sources.kafka.oauth import TokenHookFailed

HOOK = "tests.integration.oauth_tokens:short_lived"


def oauth_config(**extra: object) -> KafkaSourceConfig:
    return KafkaSourceConfig(
        topics=["t"], client="librdkafka", security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=HOOK, **extra,
    )  # fmt: skip


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The worker's event loop, running in a thread of its own: the callback is called
    from another thread (librdkafka's background thread) as in the worker."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.call_soon_threadsafe(running.stop)
        thread.join(5)
        running.close()


def test_the_config_takes_oauthbearer_with_librdkafka_and_sets_no_password(tmp_path, capsys):
    conf = consumer_conf(oauth_config())
    assert conf["sasl.mechanism"] == "OAUTHBEARER"
    assert conf["security.protocol"] == "sasl_plaintext"
    assert not {"sasl.username", "sasl.password", "oauth_cb"} & conf.keys()
    path = tmp_path / "w.toml"
    path.write_text(
        '[source]\nclient = "librdkafka"\ntopics = ["t"]\nsecurity_protocol = "SASL_SSL"\n'
        f'sasl_mechanism = "OAUTHBEARER"\nsasl_oauth_token_provider = "{HOOK}"\n'
    )
    target = "handler.target=tests.integration.recording_handler:handle"
    assert main(["check-config", "--config", str(path), "--set", target]) == 0
    assert "not supported" not in capsys.readouterr().err


def test_only_an_oauthbearer_source_gets_a_callback(loop):
    assert token_callback(KafkaSourceConfig(topics=["t"], client="librdkafka"), loop) is None
    tokens = token_callback(oauth_config(), loop)
    assert isinstance(tokens, TokenCallback) and tokens.name == HOOK
    assert "eyJ" not in repr(tokens)  # never a token


def test_each_call_asks_the_hook_for_a_new_token_the_primed_one_first(loop):
    made: list[str] = []

    def hook() -> tuple[str, int]:
        made.append(f"token-{len(made) + 1}")
        return made[-1], int(time.time()) + 60  # an int expiry is a number too

    tokens = TokenCallback(hook, "m:hook", loop)
    asyncio.run_coroutine_threadsafe(tokens.prime(), loop).result(5)
    answers = [tokens("principalClaimName=sub"), tokens(None), tokens(None)]
    assert [a[0] for a in answers] == ["token-1", "token-2", "token-3"]
    for token, expires_at in answers:  # what confluent-kafka parses ("sd"): str, float
        assert isinstance(token, str) and isinstance(expires_at, float)
        assert expires_at > time.time()
    assert tokens.calls == 3 and tokens.failure is None


def test_an_async_hook_runs_on_the_workers_loop(loop):
    ran_on: list[asyncio.AbstractEventLoop] = []

    async def hook() -> tuple[str, float]:
        ran_on.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return "async-token", time.time() + 60

    tokens = TokenCallback(hook, "m:async", loop)
    answers: list[tuple[str, float]] = []
    caller = threading.Thread(target=lambda: answers.append(tokens(None)))  # librdkafka's
    caller.start()
    caller.join(10)
    assert answers and answers[0][0] == "async-token"
    assert ran_on == [loop]


def test_a_call_on_the_loops_own_thread_is_refused_not_waited_for():
    async def hook() -> tuple[str, float]:
        return "t", time.time() + 60

    async def go() -> None:
        for hook_of_either_kind in (hook, lambda: ("t", time.time() + 60)):
            tokens = TokenCallback(hook_of_either_kind, "m:hook", asyncio.get_running_loop())
            with pytest.raises(TokenHookFailed, match="asked on the event loop's thread"):
                tokens(None)

    asyncio.run(go())


def raising() -> tuple[str, float]:
    raise RuntimeError("token service down; secret=" + "s" * 5000)


def garbage() -> dict:
    return {"token": "x"}


def expired() -> tuple[str, float]:
    return "old-token", time.time() - 1


@pytest.mark.parametrize(
    ("hook", "said"),
    [
        (raising, "'m:hook' raised RuntimeError: token service down"),
        (garbage, "'m:hook' returned a dict: it must return (token"),
        (expired, "'m:hook' returned a token that has expired already"),
    ],
)
def test_a_failing_hook_is_raised_to_librdkafka_logged_once_and_kept(loop, caplog, hook, said):
    tokens = TokenCallback(hook, "m:hook", loop)
    with (
        caplog.at_level(logging.WARNING, "worker.source.kafka"),
        pytest.raises(TokenHookFailed) as raised,
    ):
        tokens(None)
    line = str(raised.value)
    assert line.startswith("source.sasl_oauth_token_provider = 'm:hook'") and said in line
    assert len(line) < 300
    (record,) = caplog.records
    assert "event=oauth_token_failed" in record.getMessage() and said in record.getMessage()
    assert "old-token" not in record.getMessage()  # never a token
    assert tokens.failure is raised.value
    # at the start: one line naming the provider, fast (prime), or after Consumer() waited
    with pytest.raises(SourceStartError, match=r"^kafka: source.sasl_oauth_token_provider"):
        asyncio.run_coroutine_threadsafe(tokens.prime(), loop).result(5)
    failed = start_failure({"oauth_cb": tokens}, RuntimeError("OAuth token not set"))
    assert str(failed) == f"kafka: {line}"


def test_a_refusal_without_a_hook_failure_is_librdkafkas_config_line(loop):
    tokens = TokenCallback(lambda: ("t", time.time() + 60), "m:ok", loop)
    failed = start_failure({"oauth_cb": tokens}, RuntimeError("No such property"))
    assert str(failed) == "kafka: librdkafka refused the config: No such property"


def test_hung_hooks_are_bounded_sync_and_async(loop, monkeypatch):
    monkeypatch.setattr(oauth, "TOKEN_TIMEOUT_S", 0.2)
    stuck = threading.Event()

    async def never() -> tuple[str, float]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    started = time.monotonic()
    with pytest.raises(TokenHookFailed, match=r"'m:stuck' did not return a token within 0\.2 s"):
        TokenCallback(stuck.wait, "m:stuck", loop)(None)
    with pytest.raises(TokenHookFailed, match=r"'m:never' did not return a token within 0\.2 s"):
        TokenCallback(never, "m:never", loop)(None)
    assert time.monotonic() - started < 3
    stuck.set()


@pytest.mark.filterwarnings("ignore:coroutine 'fetch_token' was never awaited")
def test_an_async_hook_whose_loop_does_not_answer_is_bounded(monkeypatch):
    """The loop itself stuck (never running the hook): the wait ends anyway. (The
    coroutine handed to it is never run: collected here, its warning expected.)"""
    monkeypatch.setattr(oauth, "TOKEN_TIMEOUT_S", 0.1)
    monkeypatch.setattr("worker.sources.kafka.librdkafka_oauth.LOOP_MARGIN_S", 0.1)
    idle = asyncio.new_event_loop()  # never run

    async def hook() -> tuple[str, float]:
        return "t", time.time() + 60

    try:
        with pytest.raises(TokenHookFailed, match="the event loop did not run it"):
            TokenCallback(hook, "m:async", idle)(None)
    finally:
        idle.close()
    with pytest.raises(TokenHookFailed, match="no event loop"):
        TokenCallback(hook, "m:async", idle)(None)  # closed
    gc.collect()


def test_confluent_kafkas_consumer_takes_the_callbacks_token():
    """The real client, no broker (nothing listens at the address): `Consumer()` returns
    only once the callback set a token (else, after 10 s, "OAuth token not set")."""
    config = oauth_config(bootstrap_servers=["127.0.0.1:9"], group_id="g")

    async def go() -> tuple[TokenCallback, float]:
        conf = await with_tokens(consumer_conf(config), config)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        consumer = await loop.run_in_executor(None, Consumer, conf)
        took = time.monotonic() - started
        await loop.run_in_executor(None, consumer.close)
        return conf["oauth_cb"], took

    tokens, took = asyncio.run(go())
    assert tokens.calls >= 1 and tokens.failure is None
    assert took < 5  # its wait is in 1 s steps: well under its 10 s give-up


def exits() -> tuple[str, float]:
    raise SystemExit(3)  # a library of the hook's calling sys.exit()


async def exits_async() -> tuple[str, float]:
    raise SystemExit(3)


@pytest.mark.parametrize("hook", [exits, exits_async])
def test_a_hook_raising_systemexit_is_a_failed_token_not_the_end_of_the_worker(loop, hook):
    """Adversary: SystemExit is no Exception. From a plain hook it went out of the
    callback into confluent-kafka's C frame, which raised it again in the poller's next
    consume(): the worker ended (exit 3, a traceback); from an async hook it went out of
    the worker's own event loop. Either way it is one failed token, like any other."""
    tokens = TokenCallback(hook, "m:exits", loop)
    with pytest.raises(TokenHookFailed, match=r"'m:exits' raised SystemExit: 3"):
        tokens(None)
    assert loop.is_running()  # the worker's loop goes on
    assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "alive"), loop).result(5) == "alive"
