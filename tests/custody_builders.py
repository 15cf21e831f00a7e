"""What the key custody tests share: builders shaped like rapki's own (CA, leaf, CRL), a signer
that holds its key in memory (the reference for the external path), and the independent checks
(openssl with the CRL, pkilint) of a root, a leaf and a CRL signed through one key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.x509.keys import KeyType, PrivateKey, PublicKey, key_family, sign_message, subject_key_identifier
from tests.validators import (
    dilithium_verifies_issued,
    lint_cert,
    lint_chain,
    lint_crl,
    openssl_knows_mldsa,
    openssl_verify,
)

NOW = datetime.now(UTC).replace(microsecond=0)  # openssl checks validity against the real clock
ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rapki tests"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "Custody Test Root")])


class MemorySigner:
    """An ``ExternalSigner`` over a key in memory: what the external path is compared with."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.key_type = KeyType.of(key)

    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return sign_message(self.key, data, self.key_type.signature_hash())


def ca_builder(public_key: PublicKey, *, serial: int = 0x1234567890ABCDEF) -> x509.CertificateBuilder:
    """A self-signed root as ``pki.x509.hierarchy.build_root`` shapes it, with fixed serial and times."""
    return x509.CertificateBuilder(
        ROOT_NAME, ROOT_NAME, public_key, serial, NOW - timedelta(minutes=5), NOW + timedelta(days=365),
        [x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=1)),
         x509.Extension(x509.KeyUsage.oid, True, x509.KeyUsage(
             digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
             key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False)),
         x509.Extension(x509.SubjectKeyIdentifier.oid, False, subject_key_identifier(public_key))],
    )


def leaf_builder(issuer_public_key: PublicKey, subject_key: PublicKey, serial: int, *,
                 dns: tuple[str, ...] = ("workload.example.com",)) -> x509.CertificateBuilder:
    """A workload certificate as ``pki.x509.issuance.build_leaf`` shapes it."""
    ski = subject_key_identifier(issuer_public_key)
    return x509.CertificateBuilder(
        ROOT_NAME, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]), subject_key, serial,
        NOW - timedelta(minutes=5), NOW + timedelta(hours=12),
        [x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)),
         x509.Extension(x509.KeyUsage.oid, True, x509.KeyUsage(
             digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
             key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)),
         x509.Extension(x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])),
         x509.Extension(x509.AuthorityKeyIdentifier.oid, False,
                        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)),
         x509.Extension(x509.SubjectKeyIdentifier.oid, False, subject_key_identifier(subject_key)),
         x509.Extension(x509.SubjectAlternativeName.oid, False,
                        x509.SubjectAlternativeName([x509.DNSName(name) for name in dns]))],
    )


def crl_builder(issuer_public_key: PublicKey, revoked: list[int], *, number: int = 7,
                reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise) -> x509.CertificateRevocationListBuilder:
    """A CRL as ``pki.x509.crl.build_crl`` shapes it: AKI, CRLNumber, one entry per serial."""
    ski = subject_key_identifier(issuer_public_key)
    entries = [x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(minutes=1))
               .add_extension(x509.CRLReason(reason), critical=False).build() for serial in revoked]
    return x509.CertificateRevocationListBuilder(
        issuer_name=ROOT_NAME, last_update=NOW - timedelta(minutes=1), next_update=NOW + timedelta(days=2),
        revoked_certificates=entries,
        extensions=[x509.Extension(x509.AuthorityKeyIdentifier.oid, False,
                                   x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)),
                    x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number))],
    )


GOOD_SERIAL, REVOKED_SERIAL = 0x1001, 0x1002


def signed_set(public_key: PublicKey, sign_certificate: Callable[[x509.CertificateBuilder], x509.Certificate],
               sign_crl: Callable[[x509.CertificateRevocationListBuilder], x509.CertificateRevocationList],
               ) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate, x509.CertificateRevocationList]:
    """A root, a good and a revoked leaf and the root's CRL, all signed by the key of ``public_key``."""
    workload = ec.generate_private_key(ec.SECP256R1()).public_key()
    root = sign_certificate(ca_builder(public_key))
    good = sign_certificate(leaf_builder(public_key, workload, GOOD_SERIAL))
    revoked = sign_certificate(leaf_builder(public_key, workload, REVOKED_SERIAL, dns=("revoked.example.com",)))
    crl = sign_crl(crl_builder(public_key, [REVOKED_SERIAL, 0x1003]))
    return root, good, revoked, crl


@dataclass
class Judged:
    """What the independent tools said about one root, two leaves (one revoked) and the CRL."""

    good_leaf: str
    revoked_leaf: str
    lint: dict[str, str]


def judge(tmp_path: Path, root: x509.Certificate, good: x509.Certificate, revoked: x509.Certificate,
          crl: x509.CertificateRevocationList) -> Judged:
    """openssl verify -x509_strict -crl_check of both leaves, and pkilint of everything."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    paths = {}
    for name, obj in (("root", root), ("good", good), ("revoked", revoked), ("crl", crl)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(obj.public_bytes(pem))

    def verdict(leaf: Path) -> str:
        if key_family(root.public_key()) == "mldsa" and not openssl_knows_mldsa():
            return dilithium_verdict(root, x509.load_pem_x509_certificate(leaf.read_bytes()), crl)
        result = openssl_verify(leaf, root=paths["root"], crl=paths["crl"])
        return "OK" if result.returncode == 0 else (result.stdout + result.stderr).strip()

    lint = {"root": lint_cert(paths["root"]), "leaf": lint_cert(paths["good"]), "crl": lint_crl(paths["crl"]),
            "chain": lint_chain(paths["root"], paths["good"])}
    return Judged(verdict(paths["good"]), verdict(paths["revoked"]), lint)


def dilithium_verdict(root: x509.Certificate, leaf: x509.Certificate, crl: x509.CertificateRevocationList) -> str:
    """What ``openssl verify -crl_check`` says of ``leaf`` under an ML-DSA ``root``, with dilithium-py
    checking the signatures where the installed openssl cannot (3.0 has no ML-DSA)."""
    if not dilithium_verifies_issued(root.public_key(), leaf):
        return "certificate signature failure"
    if not dilithium_verifies_issued(root.public_key(), crl):
        return "CRL signature failure"
    if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
        return "certificate revoked"
    return "OK"


CLEAN_LINT = {"root": "", "leaf": "", "crl": "", "chain": ""}
