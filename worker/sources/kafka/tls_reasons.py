"""Why a TLS (or not-TLS) connection to a broker failed, in words an operator can act on.

aiokafka turns every failed bootstrap into one `KafkaConnectionError: Unable to
bootstrap`; the real reason is only the exception of its "Unable connect" log line,
and sometimes not even there: a broker that wants a client certificate ends the
connection after the handshake (TLS 1.3 sends its alert then), which aiokafka reads
as "Connection closed", as it does a plaintext client talking to a TLS port. So:

- a certificate that failed verification is read from the `SSLCertVerificationError`
  (a name or address mismatch is told apart from an unknown CA by its verify code);
- a connection closed or reset on a TLS or plaintext port is asked once more, by a
  small probe of our own: a TLS handshake and one request, to hear the broker's
  alert (certificate required, unknown CA), or a handshake without verification on
  a port the config reads as plaintext, or a plaintext ApiVersions request on a port
  the config reads as TLS.

Each reason found is final (`TlsRefused`): it does not get better by waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.errors import KafkaConnectionError

from worker.sources.kafka.tls_context import CLIENT_CERT_MARK

#: OpenSSL's verify codes for a certificate not for the name (62) or address (64) asked.
HOSTNAME_MISMATCH_CODES = (62, 64)
#: How long one probe may take: the whole diagnosis stays well inside the 10 s budget.
PROBE_TIMEOUT_S = 2.0
#: ApiVersions v0, correlation id 7: a request every Kafka broker answers in plaintext.
_CLIENT_ID = b"streamworker-probe"
_API_VERSIONS = struct.pack(">hhih", 18, 0, 7, len(_CLIENT_ID)) + _CLIENT_ID
API_VERSIONS_REQUEST = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


#: The alerts of a broker that wants a client certificate, or distrusts the one it got.
CLIENT_CERTIFICATE_ALERTS = (
    "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN",
    "HANDSHAKE_FAILURE",
)  # fmt: skip


class TlsRefused(Exception):
    """The broker and this client cannot agree on TLS; the message says why and what to set."""


def _uses_tls(connection: Mapping[str, Any]) -> bool:
    return str(connection.get("security_protocol", "PLAINTEXT")).endswith("SSL")


async def reason_for(
    failed: Sequence[tuple[str, int, BaseException]], connection: Mapping[str, Any]
) -> str | None:
    """The first TLS reason among the servers of one failed bootstrap attempt."""
    for host, port, error in failed:
        found = await reason(host, port, error, connection)
        if found is not None:
            return found
    return None


async def reason(
    host: str, port: int, error: BaseException, connection: Mapping[str, Any]
) -> str | None:
    """The reason one failed connection to `host:port` had, or None for one not of TLS."""
    at = f"{host}:{port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        said = error.verify_message or str(error)
        if error.verify_code in HOSTNAME_MISMATCH_CODES:
            return (
                f"TLS: the certificate of {at} is not for {host!r} ({said}): connect by a "
                "name the certificate holds, or (a test setup only) set "
                "source.ssl_check_hostname = false"
            )
        return (
            f"TLS: certificate verification failed for {at} ({said}): source.ssl_cafile "
            "must hold the CA that signed the broker's certificate"
        )
    closed = isinstance(error, ConnectionError | ssl.SSLError | KafkaConnectionError)
    if not closed:
        return None  # refused, unreachable, timed out: a broker not up yet, waited for
    if _uses_tls(connection):
        context = connection.get("ssl_context")
        alert = await _alert_after_handshake(host, port, context) if context else None
        if alert is not None:
            return alert
        if await _speaks_plaintext_kafka(host, port):
            protocol = connection.get("security_protocol")
            return (
                f"{at} speaks plaintext Kafka, not TLS: source.security_protocol = "
                f"{protocol!r} needs the broker's TLS listener (or PLAINTEXT here)"
            )
        return None
    if await _speaks_tls(host, port):
        protocol = connection.get("security_protocol", "PLAINTEXT")
        tls = "SASL_SSL" if protocol == "SASL_PLAINTEXT" else "SSL"
        return (
            f"{at} speaks TLS, but source.security_protocol = {protocol!r}: set it to "
            f"{tls!r} (with source.ssl_cafile)"
        )
    return None


async def _alert_after_handshake(host: str, port: int, context: ssl.SSLContext) -> str | None:
    """A handshake and one request with the client's own TLS settings: a broker that wants
    a client certificate (or distrusts ours) says so in an alert, at once or at the read."""
    at = f"{host}:{port}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                writer.write(API_VERSIONS_REQUEST)
                await writer.drain()
                await reader.readexactly(4)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except ssl.SSLError as exc:
        said = (exc.reason or str(exc)).upper()
        if not any(word in said for word in CLIENT_CERTIFICATE_ALERTS):
            return None
        if not getattr(context, CLIENT_CERT_MARK, False):  # Java says "bad certificate"
            return (
                f"TLS: {at} requires a client certificate ({exc.reason}): set "
                "source.ssl_certfile and source.ssl_keyfile (signed by a CA the broker trusts)"
            )
        return (
            f"TLS: {at} refused the client certificate ({exc.reason}): "
            "source.ssl_certfile must be signed by a CA the broker trusts"
        )
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    return None


async def _speaks_tls(host: str, port: int) -> bool:
    """The port completes a TLS handshake (nothing verified: only the protocol is asked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    return True


async def _speaks_plaintext_kafka(host: str, port: int) -> bool:
    """The port answers a plaintext ApiVersions request with our correlation id."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(API_VERSIONS_REQUEST)
                await writer.drain()
                head = await reader.readexactly(8)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    return struct.unpack(">i", head[4:])[0] == 7
