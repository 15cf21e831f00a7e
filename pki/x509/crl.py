"""Certificate revocation lists: reasons, building, and the Roles Anywhere size budget.

Entries are handed to the builder in one pass: appending them one ``add_revoked_certificate`` call
at a time copies the list each time in the ``cryptography`` library (quadratic).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.errors import CrlTooLarge, InvalidInput
from pki.x509.external import SigningKey, crl_signed_by

ROLES_ANYWHERE_CRL_LIMIT = 300_000  # bytes of PEM in ImportCrl/UpdateCrl crlData

_REASONS = {r.value.replace("_", "").lower(): r for r in x509.ReasonFlags}
# Revocation in rapki is final. certificateHold (a suspension meant to be lifted with removeFromCRL)
# is refused, as the CA/Browser Forum's baseline requirements forbid it: Roles Anywhere caches CRLs
# and a hold that is later lifted would leave services disagreeing about a certificate.
_NOT_ACCEPTED = (x509.ReasonFlags.remove_from_crl, x509.ReasonFlags.certificate_hold)
_REVOCABLE = [r for r in x509.ReasonFlags if r not in _NOT_ACCEPTED]
REASON_NAMES = [r.value for r in _REVOCABLE]


def parse_reason(text: str | None) -> x509.ReasonFlags:
    """An RFC 5280 reason from ``keyCompromise``, ``key-compromise`` or ``key_compromise``."""
    if not text:
        return x509.ReasonFlags.unspecified
    key = text.replace("-", "").replace("_", "").replace(" ", "").lower()
    reason = _REASONS.get(key)
    if reason in _NOT_ACCEPTED:
        raise InvalidInput(f"revocation reason {text!r} is not accepted: revocation is final in rapki "
                           f"(no hold to lift later); use one of {', '.join(REASON_NAMES)}")
    if reason is None:
        raise InvalidInput(f"unknown revocation reason {text!r}: use one of {', '.join(REASON_NAMES)}")
    return reason


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags


@dataclass(frozen=True)
class BuiltCrl:
    crl: x509.CertificateRevocationList
    number: int
    entries: int

    @property
    def der(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.PEM)

    @property
    def this_update(self) -> datetime:
        return self.crl.last_update_utc

    @property
    def next_update(self) -> datetime:
        assert self.crl.next_update_utc is not None
        return self.crl.next_update_utc


def _revoked(entry: RevokedEntry) -> x509.RevokedCertificate:
    builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
    # RFC 5280 5.3.1: the reasonCode "unspecified" SHOULD be absent; omitting it also saves bytes.
    if entry.reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()


# RFC 5280 5.2.5: the CRL of an issuing CA (pathLen 0) lists only end-entity certificates. It
# names no distribution point: a CRL whose IDP names one covers only certificates carrying that
# same point (6.3.3 b.2.i), so certificates issued before [crl].distribution_url was set (and
# openssl checking them) would find no CRL; without the name it stays complete for the issuer.
USER_CERTS_ONLY = x509.IssuingDistributionPoint(
    full_name=None, relative_name=None, only_contains_user_certs=True, only_contains_ca_certs=False,
    only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False,
)


def build_crl(entries: Iterable[RevokedEntry], *, issuer_cert: x509.Certificate, issuer_key: SigningKey,
              number: int, this_update: datetime, next_update: datetime,
              distribution_point: bool = False) -> BuiltCrl:
    """``distribution_point``: the CRL is also served from the issuer's distribution point
    ([crl].distribution_url), and carries the (critical) Issuing Distribution Point extension."""
    revoked = [_revoked(e) for e in entries]
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    extensions = [
        x509.Extension(
            x509.AuthorityKeyIdentifier.oid, False,
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
        ),
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
    ]
    if distribution_point:
        extensions.append(x509.Extension(USER_CERTS_ONLY.oid, True, USER_CERTS_ONLY))
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer_cert.subject,
        last_update=this_update,
        next_update=next_update,
        revoked_certificates=revoked,
        extensions=extensions,
    )
    crl = crl_signed_by(builder, issuer_key)
    return BuiltCrl(crl=crl, number=number, entries=len(revoked))


def check_size(built: BuiltCrl, *, limit: int | None = None) -> int:
    """The PEM size; CrlTooLarge (with the count and the remedies) when over ``limit``
    (default: the Roles Anywhere limit)."""
    limit = ROLES_ANYWHERE_CRL_LIMIT if limit is None else limit
    size = len(built.pem)
    if size > limit:
        raise CrlTooLarge(
            f"the CRL would be {size:,} bytes of PEM with {built.entries:,} entries, over the "
            f"{limit:,}-byte Roles Anywhere limit; nothing was dropped or published. Remedies: "
            "issue shorter-lived certificates (expired entries leave the CRL), lower [ca].serial_bytes "
            "for new certificates, revoke without a reason code (saves ~14 bytes an entry), or rotate "
            "to a new issuing CA ('rapki ca sign-intermediate') so each CA's CRL stays small"
        )
    return size
