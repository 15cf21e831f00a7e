"""Building CA certificates: the self-signed root and the issuing CAs it signs.

The signing key is a ``SigningKey``: a key object (file keys) or a key kept in an HSM or KMS
(``pki.x509.external``); a new issuing CA is named by its public key alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki.x509.external import SigningKey, certificate_signed_by
from pki.x509.keys import PublicKey, subject_key_identifier
from pki.x509.serials import random_serial

BACKDATE = timedelta(minutes=5)


def installation_tag(root_public_key: object) -> str:
    """Six hex digits of the root's key identifier: the default CA names carry it ("rapki Root CA
    3f9a2c", "rapki Issuing CA 1 3f9a2c"), so the CAs of two installations never share a name and
    doctor or signer output tells them apart."""
    return subject_key_identifier(cast(PublicKey, root_public_key)).digest.hex()[:6]


def ca_name(common_name: str, organization: str | None = None, country: str | None = None) -> x509.Name:
    attrs = []
    if country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _ca_builder(subject: x509.Name, issuer: x509.Name, public_key: PublicKey, lifetime: timedelta,
                path_length: int, now: datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(random_serial(16))
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(subject_key_identifier(public_key), critical=False)
    )


def build_root(key: SigningKey, subject: x509.Name, *, lifetime: timedelta = timedelta(days=3650),
               path_length: int = 1, now: datetime | None = None) -> x509.Certificate:
    now = now or datetime.now(UTC)
    builder = _ca_builder(subject, subject, key.public_key(), lifetime, path_length, now)
    return certificate_signed_by(builder, key)


def build_intermediate(public_key: PublicKey, subject: x509.Name, *, issuer_cert: x509.Certificate,
                       issuer_key: SigningKey, lifetime: timedelta = timedelta(days=1095),
                       path_length: int = 0, now: datetime | None = None) -> x509.Certificate:
    """An issuing CA signed by ``issuer_key``; never outlives its issuer."""
    now = now or datetime.now(UTC)
    lifetime = min(lifetime, issuer_cert.not_valid_after_utc - now)
    builder = _ca_builder(subject, issuer_cert.subject, public_key, lifetime, path_length, now)
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    return certificate_signed_by(builder, issuer_key)
