"""The Roles Anywhere rules for end-entity certificates, checked in code.

``leaf_problems`` lists every reason the service (or a strict linter) would refuse a workload
certificate: the emulator runs it on every CreateSession, ``rapki doctor`` prints it. The CA runs
the same rules (``leaf_content_problems``) on every certificate it is about to sign, on the very
values it gives the builder. One implementation, three users.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from pki.x509.keys import key_family

# STS SourceIdentity: [\p{L}\p{Z}\p{N}_.:/=+\-@]+ . Python's \w covers letters, digits and "_";
# str.isalnum/isspace checks below handle the Unicode classes precisely.
_SOURCE_IDENTITY_PUNCT = set("_.:/=+-@")
_ASCII_SOURCE_IDENTITY = re.compile(r"[A-Za-z0-9 _.:/=+\-@]+")  # the common case, without per-character look-ups
MAX_CN_LENGTH = 64
STRONG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
# Pure ML-DSA (RFC 9881): no separate hash; every parameter set is at least as strong as SHA-256.
MLDSA_SIGNATURES = frozenset({SignatureAlgorithmOID.ML_DSA_44, SignatureAlgorithmOID.ML_DSA_65,
                              SignatureAlgorithmOID.ML_DSA_87})


def signature_problem(hash_alg: hashes.HashAlgorithm | None,
                      algorithm: x509.ObjectIdentifier | None = None) -> str | None:
    """Why a signature with ``hash_alg`` (``algorithm``, its signatureAlgorithm) would be refused:
    SHA-256 or stronger, or pure ML-DSA, which has no separate hash."""
    if algorithm in MLDSA_SIGNATURES or isinstance(hash_alg, STRONG_HASHES):
        return None
    return f"signature hash {hash_alg.name if hash_alg else 'none'}: SHA-256 or stronger (or ML-DSA) is required"


def source_identity_problem(cn: str) -> str | None:
    """Why ``cn`` cannot become an STS source identity, or None when it can."""
    if not cn:
        return "the subject CN is empty"
    if len(cn) > MAX_CN_LENGTH:
        return f"the subject CN is {len(cn)} characters: at most {MAX_CN_LENGTH} are allowed"
    if _ASCII_SOURCE_IDENTITY.fullmatch(cn):
        return None
    bad = sorted({ch for ch in cn if not _source_identity_char(ch)})
    if bad:
        shown = "".join(bad)
        return f"the subject CN contains characters STS rejects in a source identity: {shown!r}"
    return None


def _source_identity_char(ch: str) -> bool:
    import unicodedata

    category = unicodedata.category(ch)
    return category[0] in ("L", "N") or category[0] == "Z" or ch in _SOURCE_IDENTITY_PUNCT


def source_identity(cn: str) -> str:
    """What Roles Anywhere sets as sourceIdentity: ``CN=<cn>`` up to 61 characters, bare CN above."""
    return f"CN={cn}" if len(cn) <= 61 else cn


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def public_key_problem(key: object) -> str | None:
    family = key_family(key)  # not isinstance: see pki.x509.keys.key_family
    if family == "ec":
        curve = cast(ec.EllipticCurvePublicKey, key).curve.name
        return None if curve in ("secp256r1", "secp384r1") else f"EC curve {curve}: only P-256 and P-384 are accepted"
    if family == "rsa":
        size = cast(rsa.RSAPublicKey, key).key_size
        return None if size >= 2048 else f"RSA-{size} key: at least 2048 bits needed"
    if family == "mldsa":
        return None  # ML-DSA-44/65/87: Roles Anywhere accepts each parameter set
    return f"{type(key).__name__.lstrip('_')}: only RSA, EC P-256/P-384 and ML-DSA keys are accepted"


def leaf_problems(cert: x509.Certificate, *, now: datetime | None = None) -> list[str]:
    """Every reason Roles Anywhere would refuse ``cert`` as an end-entity certificate."""
    problems: list[str] = []
    if cert.version is not x509.Version.v3:
        problems.append("not an X.509 v3 certificate")
    subject = cert.subject
    if len(subject) == 0:
        problems.append("the subject is empty")
    problems.extend(leaf_content_problems(cert.serial_number, cert.signature_hash_algorithm, cert.public_key(),
                                          common_name(subject), cert.extensions,
                                          signature_algorithm=cert.signature_algorithm_oid))
    if now is not None:
        if now < cert.not_valid_before_utc:
            problems.append(f"not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
        if now > cert.not_valid_after_utc:
            problems.append(f"expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return problems


def leaf_content_problems(serial: int, hash_alg: hashes.HashAlgorithm | None, public_key: object, cn: str | None,
                          extensions: Iterable[x509.Extension[x509.ExtensionType]], *,
                          signature_algorithm: x509.ObjectIdentifier | None = None) -> list[str]:
    """The rules on what a leaf holds, for a certificate (``leaf_problems``) or for one about to be
    built: the CA checks the very values it hands the builder (``pki.x509.issuance.leaf_extensions``),
    so nothing is signed that would be refused, and nothing is parsed back out of the result."""
    problems: list[str] = []
    if serial <= 0:
        problems.append("serial number is not positive")
    elif (serial.bit_length() + 8) // 8 > 20:  # DER adds a leading 0 byte when the top bit is set
        problems.append("serial number is longer than 20 octets")
    if (problem := signature_problem(hash_alg, signature_algorithm)) is not None:
        problems.append(problem)
    if (problem := public_key_problem(public_key)) is not None:
        problems.append(problem)
    if cn is None:
        problems.append("the subject has no CN (it becomes the STS source identity)")
    elif (problem := source_identity_problem(cn)) is not None:
        problems.append(problem)
    problems.extend(extension_problems(extensions))
    return problems


def extension_problems(extensions: Iterable[x509.Extension[x509.ExtensionType]]) -> list[str]:
    """The end-entity extension rules: CA:FALSE, digitalSignature, clientAuth when EKU is present."""
    problems: list[str] = []
    found = {type(ext.value): ext.value for ext in extensions}  # one pass over the extensions
    bc = found.get(x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        problems.append("basicConstraints says CA:TRUE: a workload certificate must be CA:FALSE")
    ku = found.get(x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage):
        problems.append("keyUsage is missing: digitalSignature is required")
    elif not ku.digital_signature:
        problems.append("keyUsage lacks digitalSignature")
    eku = found.get(x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and ExtendedKeyUsageOID.CLIENT_AUTH not in eku \
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        problems.append("extendedKeyUsage is present without clientAuth")
    return problems


def is_valid_at(cert: x509.Certificate, when: datetime | None = None) -> bool:
    when = when or datetime.now(UTC)
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


CN_PATTERN_HINT = re.escape("".join(sorted(_SOURCE_IDENTITY_PUNCT)))
