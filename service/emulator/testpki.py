"""A throwaway PKI for exercising the emulator, built directly with cryptography (not the CA core).

Roots, intermediates, leaves Roles Anywhere accepts (or, when told, refuses) and CRLs, so that
tests and benchmarks need no rapki home. Imports only cryptography. Key types: ``ec-p256``,
``ec-p384``, ``rsa-N`` and ``ml-dsa-44/65/87`` (whose certificates and CRLs are pure ML-DSA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class SimpleCa:
    """A CA certificate with its key (root when ``cert.issuer == cert.subject``)."""

    cert: x509.Certificate
    key: Any


def _new_key(key_type: str) -> Any:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type in _MLDSA:
        return _MLDSA[key_type].generate()
    raise ValueError(key_type)


_MLDSA: dict[str, Any] = {
    "ml-dsa-44": mldsa.MLDSA44PrivateKey, "ml-dsa-65": mldsa.MLDSA65PrivateKey, "ml-dsa-87": mldsa.MLDSA87PrivateKey,
}


def _hash_for(signing_key: Any) -> hashes.SHA256 | None:
    """SHA-256 for RSA and EC signers; none for ML-DSA, which signs the message itself."""
    return None if isinstance(signing_key, tuple(_MLDSA.values())) else hashes.SHA256()


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rapki tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])  # fmt: skip


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def make_ca(
    cn: str = "Test Root CA",
    *,
    parent: SimpleCa | None = None,
    key_type: str = "ec-p256",
    path_len: int | None = None,
    ca: bool = True,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    subject: x509.Name | None = None,
) -> SimpleCa:
    """A root (no parent) or an intermediate CA, with RFC 5280 extensions; ``subject`` replaces the
    name made from ``cn`` (to copy another CA's name: a different CA with the same name)."""
    key = _new_key(key_type)
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    name = subject or _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.cert.subject if parent else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
    )
    signer = parent.key if parent else key
    issuer_key = parent.key.public_key() if parent else key.public_key()
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    return SimpleCa(builder.sign(signer, _hash_for(signer)), key)


def make_leaf(
    issuer: SimpleCa,
    cn: str = "workload-1",
    *,
    key_type: str = "ec-p256",
    serial: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    digital_signature: bool = True,
    uris: tuple[str, ...] = (),
) -> tuple[x509.Certificate, Any]:
    """An end-entity certificate Roles Anywhere accepts (unless told otherwise) and its key; ``uris`` as SANs."""
    key = _new_key(key_type)
    now = datetime.now(UTC)
    usage = _key_usage(ca=False)
    if not digital_signature:
        usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    builder = x509.CertificateBuilder()
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(map(x509.UniformResourceIdentifier, uris))),
                                        critical=False)  # fmt: skip
    cert = (
        builder
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(hours=1))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        .sign(issuer.key, _hash_for(issuer.key))
    )
    return cert, key


def make_crl(issuer: SimpleCa, serials: Sequence[int] = (), *, signer_key: Any = None) -> bytes:
    """A PEM CRL by ``issuer`` listing ``serials`` (signed by ``signer_key`` to forge one)."""
    now = datetime.now(UTC)
    revoked = [
        x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now - timedelta(minutes=1)).build()
        for s in serials
    ]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=7))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(signer_key or issuer.key, _hash_for(signer_key or issuer.key))
    return crl.public_bytes(serialization.Encoding.PEM)


def pem_of(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


__all__ = ["SimpleCa", "make_ca", "make_crl", "make_leaf", "pem_of"]
