"""Certificates for a TLS test run: a CA, server certificates for 127.0.0.1, a client one.

Made fresh for each run (nothing secret is kept in the repository), as PEM files that
both Kafka (PEM keystores, since 2.7) and Python's `ssl` read:

- `ca.pem`: the CA that signed everything below; `other-ca.pem`: a CA that signed
  nothing the broker shows (a client trusting only it fails verification).
- `server.pem`: the server's key then its certificate (CN and IP SAN 127.0.0.1), the
  file a PEM keystore wants; `wrong-host.pem` the same for a name that is not 127.0.0.1.
- `client.crt` / `client.key`: a client certificate signed by the CA, its key
  encrypted with `CLIENT_KEY_PASSWORD` (the worker's `ssl_key_password`).
- `stranger.pem`: a client key and certificate signed by the other CA, which the
  broker does not trust.

Uses the `cryptography` package (a dev dependency): no openssl command line needed.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

#: The client key's pass phrase: a test checks that it never shows in a log.
CLIENT_KEY_PASSWORD = "client-key-pass-3f9c"
#: A name the server certificate of the wrong-host listener is for instead of 127.0.0.1.
WRONG_HOST = "not-this-host.invalid"


@dataclass(frozen=True)
class TlsFiles:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.dir / "other-ca.pem"

    @property
    def server(self) -> Path:
        return self.dir / "server.pem"

    @property
    def wrong_host(self) -> Path:
        return self.dir / "wrong-host.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    @property
    def stranger(self) -> Path:
        return self.dir / "stranger.pem"


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, san=None):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if not ca:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make(directory: Path) -> TlsFiles:
    """Write a fresh CA, server and client certificates into `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as s

    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory)

    def pem(cert) -> bytes:  # type: ignore[no-untyped-def]
        return cert.public_bytes(s.Encoding.PEM)

    def key_pem(key, password: str | None = None) -> bytes:  # type: ignore[no-untyped-def]
        crypt = s.BestAvailableEncryption(password.encode()) if password else s.NoEncryption()
        return key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, crypt)

    ca_key, other_key = _key(), _key()
    ca = _cert("streamworker test CA", ca_key, "streamworker test CA", ca_key, ca=True)
    other = _cert("some other CA", other_key, "some other CA", other_key, ca=True)
    files.ca.write_bytes(pem(ca))
    files.other_ca.write_bytes(pem(other))
    ip = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for path, name, san in [
        (files.server, "127.0.0.1", ip),
        (files.wrong_host, WRONG_HOST, [x509.DNSName(WRONG_HOST)]),
    ]:
        key = _key()
        cert = _cert(name, key, "streamworker test CA", ca_key, ca=False, san=san)
        path.write_bytes(key_pem(key) + pem(cert))
    client_key = _key()
    client = _cert("streamworker-client", client_key, "streamworker test CA", ca_key, ca=False)
    files.client_cert.write_bytes(pem(client))
    files.client_key.write_bytes(key_pem(client_key, CLIENT_KEY_PASSWORD))
    stranger_key = _key()
    stranger = _cert("a stranger", stranger_key, "some other CA", other_key, ca=False)
    files.stranger.write_bytes(key_pem(stranger_key) + pem(stranger))
    return files
