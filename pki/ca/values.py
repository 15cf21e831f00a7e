"""The CA's values: an issuing CA, a certificate just issued, an inventory record, a revocation's
outcome and the options of a new home. Plain data: no database, no SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509

from pki.custody.keys import CaKey
from pki.custody.refs import KeyRef, parse_key_ref
from pki.x509.issuance import LeafSigner
from pki.x509.keys import KeyType, PrivateKey, workload_key_pem
from pki.x509.pem import Pem
from pki.x509.serials import serial_hex


@dataclass
class Issuer:
    """An issuing CA: its certificate, its key reference (``pki.custody.refs``: a file path, a
    ``pkcs11:`` URI or a ``kms:`` key) and, once opened, its key."""

    id: int
    name: str
    certificate: x509.Certificate
    key_type: KeyType
    key_ref: str
    active: bool
    key: CaKey | None = None
    aki: x509.AuthorityKeyIdentifier = field(init=False)
    not_after: datetime = field(init=False)
    signer: LeafSigner | None = field(default=None, init=False, repr=False)  # once the key is loaded

    def __post_init__(self) -> None:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self.not_after = self.certificate.not_valid_after_utc

    @property
    def backend(self) -> str:
        """Where its key is kept: ``file``, ``pkcs11`` or ``kms``."""
        return parse_key_ref(self.key_ref).backend


class IssuedCertificate(NamedTuple):
    """A new certificate, its chain (the intermediates: ``X-Amz-X509-Chain``) and, when made here,
    its private key. (A NamedTuple: one is made per certificate, at a fifth of a frozen
    dataclass's cost.)"""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    profile: str
    subject: str  # as RFC 4514 text (known from issuance, not parsed back)
    der: bytes  # the certificate as recorded (known from issuance, not encoded again)
    private_key: PrivateKey | None = None

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.certificate.serial_number)

    @property
    def cert_pem(self) -> Pem:
        return Pem.of_certificate_der(self.der)

    @property
    def chain_pem(self) -> Pem:
        return Pem.of_certificates(self.chain)

    @property
    def key_pem(self) -> Pem | None:
        return Pem(workload_key_pem(self.private_key)) if self.private_key is not None else None

    def write_to(self, directory: Path) -> dict[str, Path]:
        """``cert.pem``, ``chain.pem`` and (when made here) ``key.pem`` (0600) in ``directory``,
        each written atomically. When one cannot be written (``OSError``: a full disk, a directory
        that cannot be made or written), those already written are removed again: no certificate
        is left on disk without its key."""
        directory = Path(directory)
        files = [("certificate", "cert.pem", self.cert_pem, False), ("chain", "chain.pem", self.chain_pem, False)]
        if (key := self.key_pem) is not None:
            files.append(("private_key", "key.pem", key, True))
        written: dict[str, Path] = {}
        try:
            for kind, name, pem, secret in files:
                written[kind] = pem.write_to_path(directory / name, secret=secret)
        except BaseException:
            for path in written.values():
                path.unlink(missing_ok=True)
            raise
        return written


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    issuer: str
    subject: str
    common_name: str
    sans: list[str]
    profile: str
    key_type: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
    superseded_by: str | None
    fingerprint: str
    der: bytes

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after <= now:
            return "expired"
        if self.superseded_by:
            return "superseded"
        return "active"

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "issuer": self.issuer,
            "subject": self.subject,
            "common_name": self.common_name,
            "sans": self.sans,
            "profile": self.profile,
            "key_type": self.key_type,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "status": self.status(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
            "superseded_by": self.superseded_by,
            "fingerprint_sha256": self.fingerprint,
        }


@dataclass(frozen=True)
class Revocation:
    record: CertificateRecord
    already_revoked: bool


@dataclass(frozen=True)
class InitOptions:
    key_type: KeyType = KeyType.EC_P256
    organization: str | None = "rapki"
    country: str | None = None
    root_cn: str | None = None  # None: "rapki Root CA <installation tag>"
    issuing_cn: str | None = None  # None: "rapki Issuing CA 1 <installation tag>"
    root_lifetime: timedelta = timedelta(days=3650)
    issuing_lifetime: timedelta = timedelta(days=1095)
    root_path_length: int = 1
    issuing_path_length: int = 0
    offline_root_key_out: Path | None = None
    passphrase_file: Path | None = None
    serial_bytes: int = 16
    database_url: str = ""
    # Where the CA keys are made (pki.custody.refs.key_ref_for): None for encrypted files in the
    # home; a Pkcs11Ref whose label prefixes the keys' labels; a KmsRef (no key id: a new key).
    root_key_placement: KeyRef | None = None
    issuing_key_placement: KeyRef | None = None
