"""SASL/OAUTHBEARER tokens: a user's hook (`module:callable`), or the built-in `aws_msk_iam`.

`source.sasl_oauth_token_provider = "module:callable"` names a function (plain or
`async`) that takes no argument and returns `(token, expires_at)`: the token string and
its expiry in epoch seconds. The worker asks it for a first token, keeps it, and asks
again once `REFRESH_AT` of the token's life has passed: aiokafka asks for a token at
each new connection, and a broker that enforces a session's lifetime
(`connections.max.reauth.ms`) ends a connection when its token expires, so the next
connection must bring a token that is still valid. A plain function runs in a thread:
a signer may call out to the network for credentials.

A hook that raises, returns something else or does not return within
`TOKEN_TIMEOUT_S` is a `TokenHookFailed`: a connection error to aiokafka (a new
connection mid-run is retried, as for a broker that is away), and at the start one
line naming the provider, at once (the preflight does not wait it out). A plain hook
runs in a daemon thread of its own: one stuck for ever must not keep the process
from exiting (the default executor's threads are joined at exit).

`aws_msk_iam` is Amazon MSK's IAM authentication: the token is the signature that
`aws-msk-iam-sasl-signer-python` makes (install `streamworker[msk]`), for the region
in `source.sasl_aws_region` or the standard AWS chain (AWS_REGION, the profile), with
the standard AWS credentials. Neither the credentials nor a token is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError

MSK_IAM = "aws_msk_iam"
#: The share of a token's life after which the next connection gets a new one.
REFRESH_AT = 0.8
#: How long one call of the hook may take: inside the preflight's 5 s for one attempt,
#: so a stuck hook is named as such, not as a broker that does not answer.
TOKEN_TIMEOUT_S = 4.0
#: Of a hook's own exception message, what the line keeps (it may quote a secret).
_HOOK_MESSAGE_CHARS = 200

TokenHook = Callable[[], Any]


class TokenProviderError(ValueError):
    """The provider setting names nothing usable; the message says what and why."""


class TokenHookFailed(KafkaConnectionError):
    """The hook raised, returned garbage or hung; the message names the provider.

    A `KafkaConnectionError` so that aiokafka treats it as a failed connection."""

    def __str__(self) -> str:  # KafkaError's prefixes its class name
        return str(self.args[0]) if self.args else ""


def load_hook(spec: str, region: str | None = None) -> TokenHook:
    """The callable `spec` names ("module:callable", or `aws_msk_iam`)."""
    if spec == MSK_IAM:
        return msk_iam_hook(region)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TokenProviderError(
            f"source.sasl_oauth_token_provider = {spec!r}: must be 'module:callable' or {MSK_IAM!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: whatever its import raises
        raise TokenProviderError(
            f"source.sasl_oauth_token_provider = {spec!r}: cannot import {module_name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    hook = getattr(module, attr, None)
    if not callable(hook):
        raise TokenProviderError(
            f"source.sasl_oauth_token_provider = {spec!r}: {module_name} has no callable {attr!r}"
        )
    return hook


def msk_iam_hook(region: str | None) -> TokenHook:
    """Amazon MSK IAM: a signed token for `region` (else the AWS chain's), expiry in s."""
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError:
        raise TokenProviderError(
            f"source.sasl_oauth_token_provider = {MSK_IAM!r} needs the "
            "aws-msk-iam-sasl-signer-python package: pip install 'streamworker[msk]'"
        ) from None
    chosen = region or _chain_region()
    if not chosen:
        raise TokenProviderError(
            f"source.sasl_oauth_token_provider = {MSK_IAM!r}: no AWS region: set "
            "source.sasl_aws_region, AWS_REGION or a profile's region"
        )

    def hook() -> tuple[str, float]:
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(chosen)
        return token, expiry_ms / 1000

    return hook


def _chain_region() -> str | None:
    """AWS_REGION (the SDKs' and the signer's), else botocore's chain: AWS_DEFAULT_REGION,
    then the profile's region."""
    import botocore.session

    return os.environ.get("AWS_REGION") or botocore.session.Session().get_config_variable("region")


class RefreshingTokenProvider(AbstractTokenProvider):
    """aiokafka's token provider around a hook: one token kept until `REFRESH_AT` of
    its life, then a new one. No lock: two connections at once may both ask the hook,
    which costs a token, not correctness (a lock would bind to one event loop)."""

    def __init__(self, hook: TokenHook, name: str, clock: Callable[[], float] = time.time):
        self._hook = hook
        self.name = name
        self._clock = clock
        self._token: str | None = None
        self._refresh_after = 0.0
        self.fetched = 0

    async def token(self) -> str:
        if self._token is None or self._clock() >= self._refresh_after:
            await self._fetch()
        assert self._token is not None
        return self._token

    async def _fetch(self) -> None:
        token, expires_at = await fetch_token(self._hook, self.name)
        now = self._clock()
        self._token = token
        self._refresh_after = now + max(expires_at - now, 0.0) * REFRESH_AT
        self.fetched += 1

    def __repr__(self) -> str:  # never the token
        return f"RefreshingTokenProvider({self.name!r})"


async def fetch_token(hook: TokenHook, name: str) -> tuple[str, float]:
    """One call of the hook: `(token, expires_at)`, or a `TokenHookFailed` naming the
    provider (it raised, returned something else, or took over `TOKEN_TIMEOUT_S`).
    Both clients' one way to ask: aiokafka's provider, librdkafka's `oauth_cb`."""
    named = f"source.sasl_oauth_token_provider = {name!r}"
    try:
        async with asyncio.timeout(TOKEN_TIMEOUT_S):
            result = await _call(hook)
    except TimeoutError:
        raise TokenHookFailed(
            f"{named} did not return a token within {TOKEN_TIMEOUT_S:g} s"
        ) from None
    except (Exception, SystemExit) as exc:  # the user's hook: whatever it raises
        # SystemExit too (a library of the hook's calling sys.exit()): raised on, it left
        # the worker's event loop (an async hook), or librdkafka's oauth_cb, whose C frame
        # raised it again in the poller's next consume(): the worker ended, a traceback.
        said = str(exc)[:_HOOK_MESSAGE_CHARS]
        raise TokenHookFailed(f"{named} raised {type(exc).__name__}: {said}") from None
    try:
        return _checked(result, name)
    except TypeError as exc:
        raise TokenHookFailed(str(exc)) from None


async def _call(hook: TokenHook) -> Any:
    if inspect.iscoroutinefunction(hook):
        result = await hook()
    else:
        result = await _in_daemon_thread(hook)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _in_daemon_thread(hook: TokenHook) -> Any:
    """`hook()` in a thread of its own that does not hold the process at exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            result, error = hook(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed while the hook ran
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="oauth token hook", daemon=True).start()
    return await done


def _checked(result: Any, name: str) -> tuple[str, float]:
    ok = (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], str)
        and isinstance(result[1], int | float)
        and not isinstance(result[1], bool)
        and math.isfinite(result[1])
    )
    if not ok:
        raise TypeError(
            f"source.sasl_oauth_token_provider = {name!r} returned a {type(result).__name__}: "
            "it must return (token: str, expires_at: epoch seconds, a finite number)"
        )
    return result[0], float(result[1])
