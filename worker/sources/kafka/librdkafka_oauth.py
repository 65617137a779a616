"""SASL/OAUTHBEARER on librdkafka: the hook of `oauth.py` as confluent-kafka's `oauth_cb`.

Who calls it, and when (confluent-kafka 2.13 and later, read in its Consumer.c): a client
made with an `oauth_cb` has librdkafka serve its SASL callbacks on librdkafka's own
background thread, so the callback never runs on the poller thread nor on the event
loop. librdkafka asks for a token when the client is made (`Consumer()` waits for one,
in steps of a second, up to 10 s, then fails saying only "OAuth token not set"), and
again by itself once 80% of the token's life has passed (its timer looks every second),
so each call asks the hook for a new token: only `prime`'s is kept, for the first call.

`prime`, on the loop before `Consumer()`: the first token, so a hook that fails is the
start's one line at once and with its reason, not 10 s later without it.

How the hook runs: through `oauth.fetch_token`, as on aiokafka (its bound
`TOKEN_TIMEOUT_S`, its checks, its bounded message). A plain hook in an event loop of
the calling thread's own (the hook itself in a daemon thread: one stuck for ever costs
a thread, never librdkafka's background thread, which `close()` joins). An `async`
hook on the worker's loop (it may use clients made there), by
`run_coroutine_threadsafe`, waited for at most `TOKEN_TIMEOUT_S` and a margin. No
deadlock: the loop never waits synchronously for librdkafka (`Consumer()` is made on
the poller thread, which the loop awaits), and a call from the loop's own thread is
refused rather than waited for.

A call that fails is logged (one line: the provider and the hook's bounded message,
never a token) and raised: confluent-kafka then tells librdkafka
(`rd_kafka_oauthbearer_set_token_failure`), which keeps the token it has until that
expires and asks again later. Connections refused meanwhile are retried as in an
outage; nothing is committed that was not handled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
from typing import Any

from worker.sources.base import SourceStartError
from worker.sources.kafka import oauth
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.oauth import TokenHook, TokenHookFailed, fetch_token, load_hook

log = logging.getLogger("worker.source.kafka")

#: How much longer than `TOKEN_TIMEOUT_S` an async hook's call waits for the loop to
#: run it and answer (the hook's own bound is kept on the loop).
LOOP_MARGIN_S = 1.0


class TokenCallback:
    """confluent-kafka's `oauth_cb`: `(token, expires_at)` from the hook at each call."""

    def __init__(self, hook: TokenHook, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._hook = hook
        self.name = name
        self._loop = loop
        self._primed: tuple[str, float] | None = None
        #: The last call's failure (None once one succeeds): the start's line if
        #: `Consumer()` gives up waiting for a token.
        self.failure: TokenHookFailed | None = None
        self.calls = 0

    async def prime(self) -> None:
        """On the loop: the first token now; a failing hook is a `SourceStartError`."""
        try:
            self._primed = _unexpired(await fetch_token(self._hook, self.name), self.name)
        except TokenHookFailed as exc:
            raise SourceStartError(f"kafka: {exc}") from None

    def __call__(self, oauthbearer_config: str | None) -> tuple[str, float]:
        """On librdkafka's background thread: a token, or the failure raised (logged)."""
        self.calls += 1
        primed, self._primed = self._primed, None
        try:
            token = _unexpired(primed if primed is not None else self._fetch(), self.name)
        except TokenHookFailed as exc:
            self.failure = exc
            log.warning("event=oauth_token_failed client=librdkafka error=%r", str(exc))
            raise
        self.failure = None
        return token

    def _fetch(self) -> tuple[str, float]:
        named = f"source.sasl_oauth_token_provider = {self.name!r}"
        if _runs_on(self._loop):  # librdkafka calls from its own thread: never here
            raise TokenHookFailed(f"{named}: asked on the event loop's thread, which it blocks")
        if not inspect.iscoroutinefunction(self._hook):
            return asyncio.run(fetch_token(self._hook, self.name))
        if self._loop.is_closed():
            raise TokenHookFailed(f"{named}: no event loop to run the async hook on")
        asked = fetch_token(self._hook, self.name)
        try:
            future = asyncio.run_coroutine_threadsafe(asked, self._loop)
        except RuntimeError:  # the loop closed meanwhile
            asked.close()
            raise TokenHookFailed(f"{named}: no event loop to run the async hook on") from None
        waited_s = oauth.TOKEN_TIMEOUT_S + LOOP_MARGIN_S
        try:
            return future.result(waited_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TokenHookFailed(
                f"{named} did not return a token within {waited_s:g} s (the event loop did "
                "not run it)"
            ) from None
        except concurrent.futures.CancelledError:
            raise TokenHookFailed(f"{named}: the event loop stopped before it answered") from None

    def __repr__(self) -> str:  # never the token
        return f"TokenCallback({self.name!r})"


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    """This thread runs `loop`: waiting for it here would wait for ever."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _unexpired(token: tuple[str, float], name: str) -> tuple[str, float]:
    """librdkafka refuses a token past its expiry, and says only "OAuth callback raised
    exception": the line names it instead."""
    if token[1] <= time.time():
        raise TokenHookFailed(
            f"source.sasl_oauth_token_provider = {name!r} returned a token that has "
            f"expired already (expires_at = {token[1]:.0f})"
        )
    return token


def token_callback(
    config: KafkaSourceConfig, loop: asyncio.AbstractEventLoop
) -> TokenCallback | None:
    """The `oauth_cb` of an OAUTHBEARER source, else None."""
    if not (config.security_protocol.startswith("SASL") and config.sasl_mechanism == "OAUTHBEARER"):
        return None
    spec = config.sasl_oauth_token_provider
    assert spec is not None  # the config validator made sure
    return TokenCallback(load_hook(spec, config.sasl_aws_region), spec, loop)


async def with_tokens(conf: dict[str, Any], config: KafkaSourceConfig) -> dict[str, Any]:
    """`conf` with an OAUTHBEARER source's `oauth_cb`, its first token fetched now."""
    tokens = token_callback(config, asyncio.get_running_loop())
    if tokens is None:
        return conf
    await tokens.prime()
    return {**conf, "oauth_cb": tokens}


def start_failure(conf: dict[str, Any], exc: BaseException) -> SourceStartError:
    """`Consumer()` refused: a hook that failed inside it (it waited for a token) says
    why; any other refusal is a setting librdkafka refuses."""
    tokens = conf.get("oauth_cb")
    if isinstance(tokens, TokenCallback) and tokens.failure is not None:
        return SourceStartError(f"kafka: {tokens.failure}")
    return SourceStartError(f"kafka: librdkafka refused the config: {exc}")
