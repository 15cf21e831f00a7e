"""TLS material for ``rapki serve``: the server certificate and the client-certificate trust store.

Workload certificates are clientAuth-only with a CN and DNS/URI SANs, which a TLS server cannot
use (clients check serverAuth and match IP addresses against IP SANs). So the API's own
certificate is made here, by the active issuing CA, with serverAuth, and DNS and IP SANs for the
names the server answers on. It lives in ``HOME/tls/`` and is made again when missing, when a
third of its 90 days is left, when the issuing CA changed, or when a name is missing.
It is recorded in the audit log (it is not a workload certificate, so not in the inventory).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.authority import CertificateAuthority
from pki.hierarchy import BACKDATE
from pki.keys import KeyType, private_key_pem
from pki.pem import Pem, load_certificates
from pki.serials import random_serial

SERVER_LIFETIME = timedelta(days=90)
RENEW_WHEN_LEFT = SERVER_LIFETIME / 3


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path  # server certificate + intermediates
    keyfile: Path
    client_ca: Path  # root + issuing CAs: what a client certificate must chain to


def default_names(host: str) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    if host not in ("0.0.0.0", "::", "") and host not in names:  # noqa: S104 - comparing, not binding
        names.append(host)
    return names


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
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
    return set(_general_names(names)) <= have


def server_material(ca: CertificateAuthority, names: list[str]) -> TlsFiles:
    """Make (or reuse) the server certificate and write the client trust store."""
    tls_dir = ca.home.path / "tls"
    certfile, keyfile, client_ca = tls_dir / "server.pem", tls_dir / "server.key.pem", tls_dir / "client-ca.pem"
    issuer = ca.issuer()
    if not (_current_ok(certfile, issuer.certificate, names) and keyfile.is_file()):
        key = KeyType.EC_P256.generate()
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(issuer.certificate.subject)
            .public_key(key.public_key())
            .serial_number(random_serial(ca.config.serial_bytes))
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + SERVER_LIFETIME, issuer.not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(issuer.aki, critical=False)
            .sign(ca.issuer_key(issuer), issuer.key_type.signature_hash())
        )
        Pem(private_key_pem(key)).write_to_path(keyfile, secret=True)
        Pem.of_certificates([cert, issuer.certificate]).write_to_path(certfile)
        ca.audit("serve", "tls.server_certificate", format(cert.serial_number, "x"),
                 {"names": names, "not_after": cert.not_valid_after_utc.isoformat(), "issuer": issuer.name})
    bundle = [ca.root_certificate] + [i.certificate for i in ca.issuers()]
    Pem.of_certificates(bundle).write_to_path(client_ca)
    return TlsFiles(certfile, keyfile, client_ca)


def describe(path: Path) -> str:
    cert = load_certificates(path.read_bytes())[0]
    return f"{cert.subject.rfc4514_string()} until {cert.not_valid_after_utc:%Y-%m-%d}"


__all__ = ["TlsFiles", "default_names", "describe", "server_material"]
