"""The TLS context of every Kafka client of the worker, from `source.ssl_*`.

Built once per client set, and once at config time so that a file that is missing,
not PEM, or a key its pass phrase does not open is a config error naming the setting.
"""

from __future__ import annotations

import ssl
from typing import Protocol

from pydantic import SecretStr


class TlsSettings(Protocol):
    """The `source.ssl_*` settings (`KafkaSourceConfig` has them; it imports this module)."""

    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_key_password: SecretStr | None
    ssl_check_hostname: bool


#: Set on a context a client certificate was loaded into: an SSLContext cannot be asked,
#: and a Java broker's alert ("bad certificate") is the same with none and a distrusted one.
CLIENT_CERT_MARK = "streamworker_client_cert"


class TlsFilesError(ValueError):
    """A `source.ssl_*` file cannot be used; the message names the setting."""


def ssl_context(config: TlsSettings) -> ssl.SSLContext:
    """Verification on (CA from `ssl_cafile`, else the system's), hostname checked unless
    `ssl_check_hostname = false`, the client certificate loaded if one is set."""
    try:
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
        if config.ssl_cafile:
            context.load_verify_locations(cafile=config.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFilesError(_problem("ssl_cafile", config.ssl_cafile, exc)) from None
    context.check_hostname = config.ssl_check_hostname
    if config.ssl_keyfile and not config.ssl_certfile:
        raise TlsFilesError("source.ssl_keyfile is set: it needs source.ssl_certfile too")
    if config.ssl_certfile:
        secret = config.ssl_key_password
        # Always a pass phrase: without one OpenSSL would ask for it on the terminal.
        password = secret.get_secret_value() if secret is not None else ""
        try:
            context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, lambda: password)
        except (OSError, ssl.SSLError) as exc:
            raise TlsFilesError(_cert_problem(config, exc)) from None
    setattr(context, CLIENT_CERT_MARK, bool(config.ssl_certfile))
    return context


def _problem(key: str, path: str | None, exc: BaseException) -> str:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else None
    if isinstance(exc, ssl.SSLError):
        why = f"not a PEM file ({exc.reason or exc})"
    return f"source.{key} = {path!r}: cannot use it: {why or exc}"


def _cert_problem(config: TlsSettings, exc: BaseException) -> str:
    key_path = config.ssl_keyfile or config.ssl_certfile
    for key in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(config, key)
        try:
            if path:
                with open(path, "rb") as fh:
                    text = fh.read()
                    if key_path == path and b"ENCRYPTED" in text:
                        return (
                            f"source.{key} = {path!r}: the key does not open with "
                            "source.ssl_key_password (wrong or missing pass phrase)"
                        )
        except OSError as missing:
            return _problem(key, path, missing)
    return (
        f"source.ssl_certfile = {config.ssl_certfile!r}, source.ssl_keyfile = "
        f"{config.ssl_keyfile!r}: not a PEM certificate and its key ({exc})"
    )
