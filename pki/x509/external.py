"""Signing certificates and CRLs with a key that is not a ``cryptography`` private key object:
one held by an HSM or a cloud KMS, reached through an ``ExternalSigner``.

``cryptography``'s builders only sign with a key object they hold. So the builder signs once with a
throwaway key of the same family and with the hash the real key signs with: that fixes the
to-be-signed structure, signatureAlgorithm included (the algorithm identifier names the family and
the hash, never the curve or the modulus size). The external signer then signs those TBS bytes, and
``asn1crypto``'s DER parser puts TBS, algorithm and signature together: it cuts the builder's
output apart and replaces only its signature, so the TBS bytes are the builder's, never re-encoded. The result is
checked against the real public key before it is returned: a certificate or CRL that does not
verify is never handed out.

RSA is signed with PKCS#1 v1.5 (what the builders use by default and what rapki's CAs have always
used); ECDSA signatures are DER ``Ecdsa-Sig-Value`` (``ecdsa_der_signature`` converts the raw r||s
that PKCS#11 returns). ML-DSA is pure ML-DSA with an empty context over the whole TBS, its
signatureAlgorithm the parameter set's OID (2.16.840.1.101.3.4.3.17/18/19) with no parameters
(RFC 9881); its throwaway key is of the same parameter set, since the OID names it. Ed25519 is not
a rapki CA key type (Roles Anywhere refuses it).
"""

from __future__ import annotations

import functools
from typing import Protocol, cast

from asn1crypto import parser as asn1_parser
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from pki.errors import RapkiError
from pki.x509.keys import KeyType, PrivateKey, PublicKey, key_family, signature_verifies


class ExternalSigner(Protocol):
    """A CA key that signs on request and never leaves where it is kept."""

    @property
    def key_type(self) -> KeyType: ...

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """The X.509 signature over ``data`` (the whole TBS, not a digest), with the hash
        ``key_type.signature_hash()`` and, for RSA, PKCS#1 v1.5 padding; ECDSA as DER; pure ML-DSA
        with an empty context."""
        ...


SigningKey = PrivateKey | ExternalSigner
"""What rapki's builders sign with: a ``cryptography`` key object (signed by ``cryptography``
directly: a file key, already in memory) or an ``ExternalSigner`` (an HSM or KMS key)."""


def key_object(key: SigningKey) -> PrivateKey | None:
    """``key`` when it is a ``cryptography`` key object (signed with directly), else None."""
    return cast(PrivateKey, key) if key_family(key) else None


def signing_key_type(key: SigningKey) -> KeyType:
    """The key type of either kind of signing key."""
    direct = key_object(key)
    return KeyType.of(direct) if direct is not None else cast(ExternalSigner, key).key_type


def certificate_signed_by(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    """``builder``'s certificate signed by ``key``: by ``cryptography`` for a key object, else
    through ``sign_certificate``."""
    direct = key_object(key)
    if direct is not None:
        return builder.sign(direct, KeyType.of(direct).signature_hash())
    return sign_certificate(builder, cast(ExternalSigner, key))


def crl_signed_by(builder: x509.CertificateRevocationListBuilder,
                  key: SigningKey) -> x509.CertificateRevocationList:
    """``builder``'s CRL signed by ``key`` (as ``certificate_signed_by``)."""
    direct = key_object(key)
    if direct is not None:
        return builder.sign(direct, KeyType.of(direct).signature_hash())
    return sign_crl(builder, cast(ExternalSigner, key))


class ExternalSignatureInvalid(RapkiError):
    """The key backend returned a signature that does not verify with the key's public key (a key
    that is not the one configured, or a faulty device): nothing was issued."""

    code = "external_signature_invalid"


def signature_algorithm(key_type: KeyType) -> x509.ObjectIdentifier:
    """The signatureAlgorithm every certificate and CRL a CA of ``key_type`` signs carries."""
    return _SIGNATURE_ALGORITHMS[key_type]


_SIGNATURE_ALGORITHMS = {
    KeyType.EC_P256: SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    KeyType.EC_P384: SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    KeyType.RSA_2048: SignatureAlgorithmOID.RSA_WITH_SHA256,
    KeyType.RSA_3072: SignatureAlgorithmOID.RSA_WITH_SHA256,
    KeyType.RSA_4096: SignatureAlgorithmOID.RSA_WITH_SHA256,
    KeyType.ML_DSA_44: SignatureAlgorithmOID.ML_DSA_44,
    KeyType.ML_DSA_65: SignatureAlgorithmOID.ML_DSA_65,
    KeyType.ML_DSA_87: SignatureAlgorithmOID.ML_DSA_87,
}


@functools.cache
def _throwaway_key(key_type: KeyType) -> PrivateKey:
    """A key only ever used to make a builder produce its TBS; its signature is discarded.

    For EC and RSA one per family and process: the TBS does not depend on the signing key's curve
    or size, so the cheapest member of the family serves (P-256; RSA-1024, a fifth of an RSA-2048
    signature). ML-DSA's signatureAlgorithm names the parameter set, so the throwaway is of it.
    """
    if key_type.is_mldsa:
        return key_type.generate()
    if key_type.is_ec:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - signs nothing kept


def ecdsa_der_signature(raw: bytes) -> bytes:
    """An ECDSA signature as PKCS#11 returns it (r||s, each the curve's size) in the DER
    ``Ecdsa-Sig-Value`` form X.509 carries."""
    if not raw or len(raw) % 2:
        raise ValueError(f"a raw ECDSA signature is r||s of equal lengths, not {len(raw)} bytes")
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def verify_signature(public_key: PublicKey, key_type: KeyType, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` over ``data`` verifies as a CA of ``key_type`` signs."""
    return signature_verifies(public_key, signature, data, key_type.signature_hash())


def _checked_signer_key(signer: ExternalSigner) -> PublicKey:
    public_key = signer.public_key()
    actual = KeyType.of(public_key)
    if actual is not signer.key_type:
        raise ExternalSignatureInvalid(f"the key says it is {signer.key_type} but its public key is {actual}")
    return public_key


def _external_signature(signer: ExternalSigner, public_key: PublicKey, tbs: bytes, what: str) -> bytes:
    signature = signer.sign(tbs)
    if not verify_signature(public_key, signer.key_type, signature, tbs):
        raise ExternalSignatureInvalid(
            f"the {what} signature from the {signer.key_type} key does not verify with its public key: "
            "the backend holds another key than the configured one, or failed; nothing was issued"
        )
    return signature


def _check_algorithm(found: x509.ObjectIdentifier, key_type: KeyType) -> None:
    expected = signature_algorithm(key_type)
    if found != expected:  # pragma: no cover - would mean the builder changed its defaults
        raise ExternalSignatureInvalid(f"the builder chose {found.dotted_string}, not {expected.dotted_string}")


def _split(signed_der: bytes) -> tuple[bytes, bytes]:
    """The TBS and the signatureAlgorithm of a signed certificate or CRL (a SEQUENCE of TBS,
    signatureAlgorithm and signature), as the bytes they are in it: asn1crypto's parser finds
    their boundaries; nothing is decoded or encoded again."""
    contents = asn1_parser.parse(signed_der, strict=True)[4]
    _class, _method, _tag, header, body, _trailer = asn1_parser.parse(contents, strict=False)
    tbs = header + body
    _class, _method, _tag, header, body, _trailer = asn1_parser.parse(contents[len(tbs):], strict=False)
    return tbs, header + body


def _assemble(tbs_der: bytes, algorithm_der: bytes, signature: bytes) -> bytes:
    """TBS, signatureAlgorithm and the signature as a BIT STRING, in the outer SEQUENCE."""
    bit_string = asn1_parser.emit(0, 0, 3, b"\x00" + signature)  # universal, primitive, BIT STRING; no unused bits
    return asn1_parser.emit(0, 1, 16, tbs_der + algorithm_der + bit_string)  # universal, constructed, SEQUENCE


def _signed_parts(builder: x509.CertificateBuilder | x509.CertificateRevocationListBuilder, signer: ExternalSigner,
                  what: str) -> tuple[bytes, bytes, bytes]:
    """The TBS and algorithm bytes ``builder`` makes (signed once with a throwaway key of the
    signer's algorithm, to fix them) and the signer's verified signature over that TBS."""
    public_key = _checked_signer_key(signer)
    template = builder.sign(_throwaway_key(signer.key_type), signer.key_type.signature_hash())
    _check_algorithm(template.signature_algorithm_oid, signer.key_type)
    tbs_der, algorithm_der = _split(template.public_bytes(serialization.Encoding.DER))
    return tbs_der, algorithm_der, _external_signature(signer, public_key, tbs_der, what)


def sign_certificate(builder: x509.CertificateBuilder, signer: ExternalSigner) -> x509.Certificate:
    """The certificate ``builder`` describes, signed by ``signer``; verified before it is returned."""
    tbs_der, algorithm_der, signature = _signed_parts(builder, signer, "certificate")
    certificate = x509.load_der_x509_certificate(_assemble(tbs_der, algorithm_der, signature))
    if certificate.signature != signature:  # pragma: no cover - would mean the splice is wrong
        raise ExternalSignatureInvalid("the assembled certificate does not carry the signature")
    return certificate


def sign_crl(builder: x509.CertificateRevocationListBuilder,
             signer: ExternalSigner) -> x509.CertificateRevocationList:
    """The CRL ``builder`` describes, signed by ``signer``; verified before it is returned."""
    tbs_der, algorithm_der, signature = _signed_parts(builder, signer, "CRL")
    crl = x509.load_der_x509_crl(_assemble(tbs_der, algorithm_der, signature))
    if crl.tbs_certlist_bytes != tbs_der or crl.signature != signature:
        raise ExternalSignatureInvalid("the assembled CRL does not carry the signed TBS")  # pragma: no cover
    return crl
