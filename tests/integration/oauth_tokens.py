"""Token hooks for the OAUTHBEARER tests: unsigned JWTs that Kafka's built-in unsecured
validator accepts (`{"alg": "none"}`, a `sub` claim, an `exp`), short-lived on purpose."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

#: Each token's life: shorter than the test runs, so tokens expire mid-run.
LIFETIME_S = 3.0
#: When each token was issued, and each token: the test reads them.
issued: list[float] = []


def _part(claims: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


#: How long before its making a token says it was issued. Kafka's unsecured validator
#: refuses an `iat` later than its own clock in whole milliseconds (no skew allowed by
#: default): a token used within the millisecond it was made, `iat` exact to the
#: microsecond, was refused now and then, and aiokafka, which takes OAUTHBEARER's error
#: challenge for success, then sent a Metadata request the broker called "unexpected
#: during SASL authentication" (1 run in 3 of test_kafka_oauth_sigterm failed so).
ISSUED_BEFORE_S = 1.0


def short_lived() -> tuple[str, float]:
    now = time.time()
    issued.append(now)
    expires = now + LIFETIME_S
    claims = {"sub": "alice", "iat": now - ISSUED_BEFORE_S, "exp": expires}
    return f"{_part({'alg': 'none'})}.{_part(claims)}.", expires


def expired() -> tuple[str, float]:
    """A token already past its expiry: the broker refuses it."""
    now = time.time() - 60
    return f"{_part({'alg': 'none'})}.{_part({'sub': 'alice', 'iat': now, 'exp': now + 1})}.", (
        now + 1
    )


def raises() -> tuple[str, float]:
    """A hook whose token service is down."""
    raise RuntimeError("token service unavailable")


def garbage() -> dict:
    """A hook that returns the wrong type."""
    return {"token": "x"}


def hangs() -> tuple[str, float]:
    """A plain hook stuck on the network for ever (a thread that never returns)."""
    import threading

    threading.Event().wait()
    raise AssertionError("unreachable")


async def never() -> tuple[str, float]:
    """An async hook that never returns."""
    import asyncio

    await asyncio.Event().wait()
    raise AssertionError("unreachable")


#: Calls of the `works_once` hooks in this process.
_calls = {"sync": 0, "async": 0}


def works_once() -> tuple[str, float]:
    """A token at the first call (the start's preflight), then a token service that is down."""
    _calls["sync"] += 1
    if _calls["sync"] > 1:
        raise RuntimeError("token service unavailable after the first token")
    return short_lived()


async def works_once_async() -> tuple[str, float]:
    """As `works_once`, an `async` hook."""
    _calls["async"] += 1
    if _calls["async"] > 1:
        raise RuntimeError("token service unavailable after the first token")
    return short_lived()


#: `flaky`'s token service: down while `down` is set; the calls it refused.
outage = {"down": False, "refused": 0}


def flaky() -> tuple[str, float]:
    """`short_lived`, except while the test holds its token service down."""
    if outage["down"]:
        outage["refused"] += 1
        raise RuntimeError("token service unavailable (the test's outage)")
    return short_lived()


def watch_librdkafka(monkeypatch) -> list[tuple[float, bool]]:
    """Each call librdkafka makes of the source's `oauth_cb` in this process: when, and
    whether it got a token (the worker's aiokafka clients ask the hook too, so the
    hook's own calls do not show librdkafka's)."""
    from worker.sources.kafka.librdkafka_oauth import TokenCallback

    asked: list[tuple[float, bool]] = []
    answer = TokenCallback.__call__

    def counted(self: TokenCallback, oauthbearer_config: str | None) -> tuple[str, float]:
        try:
            token = answer(self, oauthbearer_config)
        except Exception:
            asked.append((time.time(), False))
            raise
        asked.append((time.time(), True))
        return token

    monkeypatch.setattr(TokenCallback, "__call__", counted)
    return asked


def oauth_configs(address: str, bootstrap: str, topic: str, group: str, client: str,
                  hook: str) -> tuple[Any, Any]:  # fmt: skip
    """The worker's config on the broker's OAUTHBEARER listener (`address`) with `hook`,
    and a plain source config of the same group on `bootstrap` (to produce, read lag)."""
    from worker.config import WorkerConfig
    from worker.sources.kafka.config import KafkaSourceConfig

    source = {"bootstrap_servers": [address], "topics": [topic], "group_id": group,
              "security_protocol": "SASL_PLAINTEXT", "client": client,
              "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_provider": hook}  # fmt: skip
    cfg = WorkerConfig.model_validate(
        {"source": source, "batching": {"maximum_batching_window_ms": 10},
         "metrics": {"enabled": False}}
    )  # fmt: skip
    plain = KafkaSourceConfig(bootstrap_servers=[bootstrap], topics=[topic], group_id=group)
    return cfg, plain
