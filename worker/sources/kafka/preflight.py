"""What a Kafka worker needs before it starts: a broker that answers, topics that exist.

Left to itself aiokafka waits for a missing topic for ever, logging "Topic ... not
found in cluster metadata" ten times a second, and gives up on a broker that is not
up yet at the first refused connection. Neither helps a new user or a container
started beside its broker: so the source (and a `kafka://` on-failure destination)
ask first, with a client of their own.

- The broker: asked again with the one backoff (`worker.backoff`) until
  `source.connect_timeout_s` has passed, one WARNING line per failed attempt, which
  says what each server said (aiokafka's own ERROR line for each is kept out: the
  attempt is retried). Refused credentials end the wait at once: they will not get
  better. So does a TLS disagreement (`tls_reasons`: a certificate that fails
  verification, a client certificate required, TLS to a plaintext port or the reverse).
- The topics: a metadata request to every broker, repeated for `MISSING_CONFIRM_S`
  while a topic is unknown to all of them (a topic just created reaches them a moment
  later); one still missing is named, with the brokers asked, in one `StartError` line.

Callers cancel the wait (SIGTERM) like any coroutine: the client is closed either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    LeaderNotAvailableError,
    NoError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from worker.backoff import Backoff
from worker.sources.base import SourceStartError
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.oauth import TokenHookFailed
from worker.sources.kafka.security import auth_failure_message, client_kwargs, refused_auth
from worker.sources.kafka.tls_reasons import TlsRefused, reason_for

log = logging.getLogger("worker.source.kafka")

#: Between attempts to reach the broker: from a fifth of a second up to five.
CONNECT_BACKOFF = Backoff(200, 5000)
#: One attempt is cut short after this long (an address that drops packets never refuses).
ATTEMPT_TIMEOUT_S = 5.0


#: A topic is reported missing once every broker has said so for this long: one just
#: created reaches the brokers' metadata a moment after the request returned. Well
#: inside the 5 s a misspelt topic must be reported in.
MISSING_CONFIRM_S = 1.5
MISSING_ASK_EVERY_S = 0.25

#: aiokafka's line for each bootstrap server it could not reach (its exception names none).
UNABLE_CONNECT = 'Unable connect to "%s:%s": %s'


class BrokerUnreachable(Exception):
    """No bootstrap server answered within the connect timeout; the message says which."""


class AuthRefused(Exception):
    """The broker answered and refused the credentials."""


def described(exc: BaseException) -> str:
    """`Type: message`, the type once (aiokafka's messages often hold it already)."""
    name, text = type(exc).__name__, str(exc).strip()
    return text if name in text else f"{name}: {text}".rstrip(": ")


def servers_of(connection: Mapping[str, Any]) -> str:
    servers = connection.get("bootstrap_servers", ())
    return servers if isinstance(servers, str) else ",".join(map(str, servers))


class _Attempt(logging.Filter):
    """What the servers said to one bootstrap attempt, from aiokafka's lines: the wait's
    WARNING says it, and the lines themselves (ERRORs, for a try retried) are not shown."""

    def __init__(self) -> None:
        super().__init__()
        self._task = asyncio.current_task()
        self.said: list[str] = []
        #: (host, port, exception) of each server that failed, for `tls_reasons`.
        self.failed: list[tuple[str, int, BaseException]] = []
        self.auth_failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            ours = record.msg == UNABLE_CONNECT and asyncio.current_task() is self._task
        except RuntimeError:  # another thread: not this attempt's
            ours = False
        if not ours:
            return True
        host, port, error = record.args if isinstance(record.args, tuple) else ("?", "?", "")
        self.auth_failed = self.auth_failed or refused_auth(record.getMessage())
        text = described(error) if isinstance(error, BaseException) else str(error)
        self.said.append(f"{host}:{port}: {text}")
        if isinstance(error, BaseException):
            self.failed.append((str(host), int(port), error))
        return False


@contextlib.contextmanager
def _attempt() -> Iterator[_Attempt]:
    attempt, logger = _Attempt(), logging.getLogger("aiokafka")
    logger.addFilter(attempt)
    try:
        yield attempt
    finally:
        logger.removeFilter(attempt)


def _attempt_timeout_s(timeout_s: float, left: float) -> float:
    """One try's bound: what is left of the wait, but the one try of a 0 wait a full one."""
    return ATTEMPT_TIMEOUT_S if timeout_s == 0 else max(min(left, ATTEMPT_TIMEOUT_S), 0.1)


async def connected_client(
    connection: Mapping[str, Any],
    timeout_s: float,
    what: str,
) -> AIOKafkaClient:
    """A bootstrapped client (the caller closes it), tried until `timeout_s` has passed.

    `what` names who waits (`source`, `errors.on_failure kafka://dlq`) in each line.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        client = AIOKafkaClient(**connection, client_id="streamworker-preflight")
        left = timeout_s - (time.monotonic() - started)
        bound_s = _attempt_timeout_s(timeout_s, left)
        try:
            with _attempt() as seen:
                async with asyncio.timeout(bound_s):
                    await client.bootstrap()
            if not client.cluster.brokers() and connection.get("sasl_mechanism") == "OAUTHBEARER":
                # aiokafka takes the broker's refusal of a token (an error challenge,
                # `{"status":"invalid_token"}`) for success; the broker then names no broker.
                raise AuthRefused(servers_of(connection))
            return client
        except (KafkaError, OSError, TimeoutError) as exc:
            await client.close()
            if seen.auth_failed:
                raise AuthRefused(servers_of(connection)) from None
            for _, _, error in seen.failed:  # the user's token hook: waiting does not cure it
                if isinstance(error, TokenHookFailed):
                    raise TokenHookFailed(str(error)) from None
            tls = await reason_for(seen.failed, connection)
            if tls is not None:
                raise TlsRefused(tls) from None
            reason = described(exc)
            if isinstance(exc, TimeoutError):  # `asyncio.timeout`'s has no message
                reason = "; ".join([*seen.said, f"TimeoutError: no answer within {bound_s:.3g} s"])
            elif isinstance(exc, KafkaConnectionError):  # its text lists socket tuples
                reason = (
                    "; ".join(seen.said)
                    or "KafkaConnectionError: no bootstrap server accepted a connection"
                )
        except BaseException:
            await client.close()
            raise
        waited = time.monotonic() - started
        left = timeout_s - waited
        if left <= 0:
            raise BrokerUnreachable(
                f"cannot connect to {servers_of(connection)} after {attempt} attempts in "
                f"{waited:.1f} s: {reason}"
            )
        delay = min(CONNECT_BACKOFF.delay_s(attempt), left)
        log.warning(
            "event=broker_wait for=%r attempt=%d servers=%s error=%r retry_in_s=%.1f "
            "gives_up_in_s=%.0f", what, attempt, servers_of(connection), reason, delay, left,
        )  # fmt: skip
        await asyncio.sleep(delay)


async def missing_topics(client: AIOKafkaClient, topics: Sequence[str]) -> list[str]:
    """The topics no broker knows (or this client may not see), each with why.

    Asked by name, never creating: a broker with `auto.create.topics.enable` would
    otherwise make the misspelt topic. A topic still electing its leader exists. Every
    broker is asked and a topic any of them lists exists: a broker learns of a topic
    just created a moment after the controller (seen in a three-node cluster, where
    one broker's "not found" failed a worker started right after the topic was made).
    """
    request = MetadataRequest(list(topics), allow_auto_topic_creation=False)
    answers, reason = [], "the cluster's metadata named no broker"
    for broker in client.cluster.brokers():  # a node just stopped may still be listed
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                answers.append(await client.send(broker.nodeId, request))
        except (KafkaError, OSError, TimeoutError) as exc:
            reason = described(exc)
    if not answers:
        nodes = ",".join(f"{b.host}:{b.port}" for b in client.cluster.brokers())
        raise BrokerUnreachable(f"no broker of {nodes} answered a metadata request: {reason}")
    why: dict[str, str] = {}
    known: set[str] = set()
    for response in answers:
        for error_code, topic, *_ in response.topics:
            error = for_code(error_code)
            if error in (NoError, LeaderNotAvailableError):
                known.add(topic)
            elif error is UnknownTopicOrPartitionError:
                why.setdefault(topic, "not found")
            else:
                why[topic] = error.__name__
    return [f"{topic} ({why[topic]})" for topic in topics if topic in why and topic not in known]


async def topics_missing_at(
    connection: Mapping[str, Any], topics: Sequence[str], timeout_s: float, what: str
) -> list[str]:
    """Wait for the broker (up to `timeout_s`), then name the topics it does not have."""
    client = await connected_client(connection, timeout_s, what)
    try:
        confirm_by = time.monotonic() + MISSING_CONFIRM_S
        while True:
            missing = await missing_topics(client, topics)
            if not missing or time.monotonic() >= confirm_by:
                return missing
            await asyncio.sleep(MISSING_ASK_EVERY_S)
    finally:
        await client.close()


async def topics_problem(
    connection: Mapping[str, Any],
    topics: Sequence[str],
    timeout_s: float,
    what: str,
    topic_prefix: str = "",
    timeout_setting: str | None = "source.connect_timeout_s",
    line_prefix: str | None = None,
) -> str | None:
    """None if the broker answers (waited for up to `timeout_s`) and has every topic; else
    the one line, after `line_prefix: ` (default: `what`, who waits), that says why not:
    the credentials refused, TLS, the broker unreachable, or the topics missing (each
    named as `topic_prefix` + name).

    The one mapping of the source's start, the on-failure destination's and redrive's.
    """
    servers, prefix = servers_of(connection), line_prefix or what
    try:
        missing = await topics_missing_at(connection, topics, timeout_s, what)
    except AuthRefused:
        return f"{prefix}: {auth_failure_message(connection)}"
    except (TlsRefused, TokenHookFailed) as exc:
        return f"{prefix}: {exc}"
    except BrokerUnreachable as exc:
        waited = f" (waited up to {timeout_setting} = {timeout_s:g})" if timeout_setting else ""
        return f"{prefix}: {exc}{waited}"
    if not missing:
        return None
    named = ", ".join(topic_prefix + m for m in missing)
    return (
        f"{prefix}: {named} at {servers}: create {'it' if len(missing) == 1 else 'them'} first "
        "(the worker never creates topics), or correct the name"
    )


async def check_source(config: KafkaSourceConfig) -> None:
    """The source's broker answers and has every `source.topics`; else one SourceStartError."""
    problem = await topics_problem(
        client_kwargs(config), config.topics, config.connect_timeout_s, "source",
        "source.topics: ", line_prefix="kafka",
    )  # fmt: skip
    if problem is not None:
        raise SourceStartError(problem)
