"""TLS material for ``rapki serve``: the server certificate and the client-certificate trust store.

The server certificate comes from the CA core (``CertificateAuthority.issue_server_certificate``:
serverAuth, DNS and IP SANs, recorded in the inventory). It lives in ``HOME/tls/`` and is made again
when missing, when a third of its 90 days is left, when the issuing CA changed, or when a name is
missing. Names are IP addresses and fully qualified host names only: single-label names such as
``localhost`` are not valid in a certificate rapki makes (linters refuse them), so local clients use
``https://127.0.0.1:PORT``.

Client certificates and rotation: a worker's TLS context verifies client certificates against the
root and the issuing CAs (``CERT_OPTIONAL``). ``ClientTrust`` keeps that trust store in step with
the database: at each TLS handshake (the context's ``sni_callback``, which runs for every
ClientHello, with or without SNI) it adds any issuing CA that appeared since, so a client of a CA
made by a rotation on another host is accepted within ``ISSUERS_REFRESH`` seconds, without a
restart. Certificates are only ever added (OpenSSL's store has no removal): a retired CA's
certificates still complete the handshake, and the application's check (``auth.known_certificate``:
issued by us, on record, unexpired, unrevoked) decides what they may do. A client certificate is
trusted only as far as the database allows; the handshake only proves possession of its key.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.ca.authority import CertificateAuthority
from pki.errors import InvalidInput
from pki.x509.issuance import dns_name_problem
from pki.x509.pem import Pem, load_certificates
from pki.x509.preflight import MLDSA_SIGNATURES

SERVER_LIFETIME = timedelta(days=90)
RENEW_WHEN_LEFT = SERVER_LIFETIME / 3


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path  # server certificate + intermediates
    keyfile: Path
    client_ca: Path  # root + issuing CAs: what a client certificate must chain to


def _usable(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return dns_name_problem(name) is None
    return True


def default_names(host: str) -> list[str]:
    """127.0.0.1, ::1, this machine's fully qualified name, and ``host`` when it is an address or a
    fully qualified name (not a wildcard bind address)."""
    names = ["127.0.0.1", "::1", socket.getfqdn()]
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        names.append(host)
    return [n for n in dict.fromkeys(names) if _usable(n)]


def _general_names(names: list[str]) -> set[x509.GeneralName]:
    out: set[x509.GeneralName] = set()
    for name in names:
        try:
            out.add(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.add(x509.DNSName(name))
    return out


def _current_ok(path: Path, issuer_cert: x509.Certificate, names: list[str]) -> bool:
    try:
        cert = load_certificates(path.read_bytes())[0]
    except Exception:
        return False
    if cert.issuer != issuer_cert.subject:
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_WHEN_LEFT:
        return False
    try:
        have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return False
    return _general_names(names) <= have


def server_material(ca: CertificateAuthority, names: list[str]) -> TlsFiles:
    """Make (or reuse) the server certificate and write the client trust store."""
    tls_dir = ca.home.path / "tls"
    certfile, keyfile, client_ca = tls_dir / "server.pem", tls_dir / "server.key.pem", tls_dir / "client-ca.pem"
    issuer = ca.issuer()
    if not (_current_ok(certfile, issuer.certificate, names) and keyfile.is_file()):
        issued = ca.issue_server_certificate(names, lifetime=SERVER_LIFETIME, actor="serve")
        assert issued.key_pem is not None
        issued.key_pem.write_to_path(keyfile, secret=True)
        Pem.of_certificates([issued.certificate, *issued.chain]).write_to_path(certfile)
    bundle = [ca.root_certificate] + [i.certificate for i in ca.issuers()]
    Pem.of_certificates(bundle).write_to_path(client_ca)
    return TlsFiles(certfile, keyfile, client_ca)


class ClientTrust:
    """The trust store of one worker's TLS context, kept in step with the CA's issuers."""

    def __init__(self) -> None:
        self.ca: CertificateAuthority | None = None
        self.context: ssl.SSLContext | None = None
        self._trusted: set[int] = set()  # issuer ids already in the context's store

    def attach(self, context: ssl.SSLContext) -> None:
        self.context = context
        context.sni_callback = self._on_client_hello

    def _on_client_hello(self, _ssl_object: object, _server_name: str | None, _context: ssl.SSLContext) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Add the issuing CAs this context does not trust yet. Never raises: a handshake must not
        fail because the database is briefly away (the store keeps what it had)."""
        if self.ca is None or self.context is None:
            return
        try:
            for issuer in self.ca.issuers():
                if issuer.id not in self._trusted:
                    pem = issuer.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
                    self.context.load_verify_locations(cadata=pem)
                    self._trusted.add(issuer.id)
        except Exception as exc:
            logging.getLogger("rapki.api").warning("could not refresh the client trust store: %s", exc)


CLIENT_TRUST = ClientTrust()  # one per worker process: its TLS context and its CA


def check_pair(certfile: Path, keyfile: Path) -> None:
    """InvalidInput unless ``certfile`` and ``keyfile`` load as one TLS server identity (PEM, the
    key unencrypted and matching the certificate), checked before any worker starts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")  # never prompt for one
    except (ssl.SSLError, OSError) as exc:
        _refuse_ml_dsa_signed(certfile)
        raise InvalidInput(f"the TLS certificate and key cannot be used together ({certfile}, {keyfile}): "
                           f"{exc}; give a PEM certificate and its unencrypted PEM key") from None


def _refuse_ml_dsa_signed(certfile: Path) -> None:
    """An ML-DSA CA's server certificate fails to load under an OpenSSL without ML-DSA (before 3.5)
    with ``CA_MD_TOO_WEAK``, which points nowhere useful: say what it is and what to do instead."""
    try:
        cert = load_certificates(certfile.read_bytes())[0]
    except Exception:
        return
    if cert.signature_algorithm_oid in MLDSA_SIGNATURES:
        raise InvalidInput(f"the TLS certificate {certfile} is signed with ML-DSA, which this Python's TLS library "
                           f"({ssl.OPENSSL_VERSION}) cannot use (OpenSSL 3.5 or later can): give --tls-cert and "
                           f"--tls-key issued by an EC or RSA CA")


def describe(path: Path) -> str:
    cert = load_certificates(path.read_bytes())[0]
    return f"{cert.subject.rfc4514_string()} until {cert.not_valid_after_utc:%Y-%m-%d}"


__all__ = ["CLIENT_TRUST", "ClientTrust", "TlsFiles", "check_pair", "default_names", "describe", "server_material"]
