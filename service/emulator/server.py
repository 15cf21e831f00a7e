"""Serving the emulator: gunicorn over TLS, and the self-signed certificate when none is given.

gunicorn runs one ``gthread`` worker (see the package docstring for why one process); the Flask
application is built inside the worker (no preload) so the state file is read by the process
that serves it. The self-signed certificate is kept next to the state file and reused across
restarts, so ``AWS_CA_BUNDLE`` set once keeps working.
"""

from __future__ import annotations

import fcntl
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gunicorn.app.base import BaseApplication

from pki.files import atomic_write
from pki.x509.keys import private_key_pem, subject_key_identifier

TLS_CERT_NAME = "emulator-tls.pem"
TLS_KEY_NAME = "emulator-tls.key"
TLS_VALIDITY = timedelta(days=825)
DEFAULT_THREADS = 8


def tls_paths(state_path: Path) -> tuple[Path, Path]:
    """Where the self-signed certificate and key live: beside the state file."""
    folder = state_path.parent
    return folder / TLS_CERT_NAME, folder / TLS_KEY_NAME


def _san_entries(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        address = ipaddress.ip_address(host)
        if x509.IPAddress(address) not in names:
            names.append(x509.IPAddress(address))
    except ValueError:
        if host and x509.DNSName(host) not in names:
            names.append(x509.DNSName(host))
    return names


def _usable(cert_path: Path, key_path: Path, host: str) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    fresh = cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=1)
    return fresh and all(name in san for name in _san_entries(host))


def ensure_self_signed(state_path: Path, host: str) -> tuple[Path, Path]:
    """Create (or reuse) the emulator's self-signed TLS certificate; return (cert, key) paths.

    The certificate is its own CA (CA:TRUE, keyCertSign) as well as the server certificate, so
    the PEM file works directly as ``AWS_CA_BUNDLE`` / ``verify=`` for botocore and OpenSSL.
    """
    cert_path, key_path = tls_paths(state_path)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    # ``--print-ca`` may run while the server starts: one lock so both end up with the same pair.
    with (cert_path.parent / ".emulator-tls.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _usable(cert_path, key_path, host):
            _generate(cert_path, key_path, host)
    return cert_path, key_path


def _generate(cert_path: Path, key_path: Path, host: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rapki"),
        x509.NameAttribute(NameOID.COMMON_NAME, "rapki emulator (self-signed)"),
    ])  # fmt: skip
    now = datetime.now(UTC)
    ski = subject_key_identifier(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + TLS_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(host)), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    atomic_write(key_path, private_key_pem(key), private=True)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


class EmulatorServer(BaseApplication):
    """gunicorn embedded: our options, our application factory, no gunicorn command line."""

    def __init__(self, app_factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self._factory = app_factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self._factory()


def gunicorn_options(
    *, host: str, port: int, certfile: Path, keyfile: Path, threads: int = DEFAULT_THREADS
) -> dict[str, Any]:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "bind": [bind],
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        "keepalive": 75,  # longer than SDK idle pools, so keep-alive connections are reused
        # gunicorn's 8 KB default answers 431 to ML-DSA requests: an ML-DSA-87 signature is 9.3 KB of
        # hex in Authorization, and X-Amz-X509-Chain with five ML-DSA-87 certificates ~50 KB of base64.
        "limit_request_field_size": 65536,
        "timeout": 120,
        "graceful_timeout": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "rapki-emulator",
    }
