"""`source.ssl_*`: files that cannot be used are config errors naming the setting (exit 2,
one line each), an encrypted key opens with its pass phrase (from the setting or its file
twin) and never shows in `check-config`, verification and the hostname check are on by
default, and a failed connection's TLS reason is read from the error it ended with."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from scripts import tls_certs
from worker.cli import main
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.security import client_kwargs
from worker.sources.kafka.tls_reasons import reason


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tls_certs.TlsFiles:
    return tls_certs.make(tmp_path_factory.mktemp("certs"))


def mtls(certs: tls_certs.TlsFiles, **extra: object) -> KafkaSourceConfig:
    return KafkaSourceConfig.model_validate(
        {
            "topics": ["t"],
            "security_protocol": "SSL",
            "ssl_cafile": str(certs.ca),
            "ssl_certfile": str(certs.client_cert),
            "ssl_keyfile": str(certs.client_key),
            **extra,
        }
    )


def test_verification_and_the_hostname_check_are_on_unless_turned_off(certs):
    context = client_kwargs(mtls(certs, ssl_key_password=tls_certs.CLIENT_KEY_PASSWORD))[
        "ssl_context"
    ]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    off = mtls(certs, ssl_key_password=tls_certs.CLIENT_KEY_PASSWORD, ssl_check_hostname=False)
    assert not client_kwargs(off)["ssl_context"].check_hostname


def test_the_key_pass_phrase_comes_from_its_file_twin(certs, tmp_path):
    secret = tmp_path / "key-password"
    secret.write_text(tls_certs.CLIENT_KEY_PASSWORD + "\n")
    config = mtls(certs, ssl_key_password_file=str(secret))
    assert config.ssl_key_password.get_secret_value() == tls_certs.CLIENT_KEY_PASSWORD


def write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(f'[source]\ntopics = ["t"]\nsecurity_protocol = "SSL"\n{source}')
    return path


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ('ssl_cafile = "/no/such/ca.pem"\n', "source.ssl_cafile = '/no/such/ca.pem': cannot use"),
        ('ssl_cafile = "{here}"\n', "not a PEM file"),
        ('ssl_keyfile = "{key}"\n', "source.ssl_keyfile is set: it needs source.ssl_certfile"),
        ('ssl_certfile = "{cert}"\nssl_keyfile = "{key}"\nssl_key_password = "bad-pass-5a"\n',
         "the key does not open with source.ssl_key_password"),
        ('ssl_certfile = "{cert}"\nssl_keyfile = "{key}"\n',
         "the key does not open with source.ssl_key_password"),
        ('ssl_key_password_file = "/no/such/file"\n',
         "source.ssl_key_password_file = '/no/such/file': cannot read it"),
        ('sasl_plain_password_file = "/dev/null"\n',
         "source.sasl_plain_password_file = '/dev/null': the file is empty"),
    ],
)  # fmt: skip
def test_tls_files_that_cannot_be_used_are_one_config_error_line(
    certs, tmp_path, capsys, source, said
):
    text = source.format(here=__file__, key=certs.client_key, cert=certs.client_cert)
    path = write(tmp_path, text)
    assert main(["check-config", "--config", str(path), "--set", "handler.target=m:f"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("config error: ") and said in line, line
    assert "bad-pass-5a" not in line  # a pass phrase given is not echoed


def test_check_config_masks_every_secret(certs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    path = tmp_path / "w.toml"
    path.write_text(
        '[source]\ntopics = ["t"]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
        f'sasl_plain_username = "u"\nsasl_plain_password = "sasl-secret-91"\n'
        f'ssl_cafile = "{certs.ca}"\nssl_certfile = "{certs.client_cert}"\n'
        f'ssl_keyfile = "{certs.client_key}"\n'
        f'ssl_key_password = "{tls_certs.CLIENT_KEY_PASSWORD}"\n'
        '[handler]\ntarget = "handlers.iot_telemetry:handle"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert '"ssl_key_password": "**********"' in out.out
    assert '"sasl_plain_password": "**********"' in out.out
    for secret in ("sasl-secret-91", tls_certs.CLIENT_KEY_PASSWORD):
        assert secret not in out.out + out.err


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code, error.verify_message = code, message
    return error


def test_a_verification_failure_is_told_apart_from_a_name_mismatch():
    conn = {"security_protocol": "SSL"}
    unknown = asyncio.run(reason("h", 1, _verify_error(20, "unable to get issuer"), conn))
    assert unknown and "certificate verification failed" in unknown
    assert "source.ssl_cafile" in unknown
    for code in (62, 64):
        mismatch = asyncio.run(reason("h", 1, _verify_error(code, "mismatch"), conn))
        assert mismatch and "is not for 'h'" in mismatch and "ssl_check_hostname" in mismatch


def test_a_refused_connection_is_no_tls_reason():
    """A broker not up yet refuses: waited for, never probed as a TLS problem."""
    found = asyncio.run(reason("127.0.0.1", 1, ConnectionRefusedError(111, "refused"), {}))
    assert found is None
